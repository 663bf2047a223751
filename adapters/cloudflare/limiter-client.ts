import type { Admission, LimitScope, RateLimiter, Reservation } from "../../src/governance/limits.ts";
import type { LimiterRpc } from "./limiter-object.ts";
import { BackgroundCalls, overloaded, withRetries } from "./rpc-calls.ts";

/** The part of a Durable Object namespace binding the client uses. */
export interface LimiterNamespace {
  idFromName(name: string): unknown;
  get(id: never): LimiterRpc;
}

/**
 * The name of the limiter object: one for all the budgets of a gateway. A request may count
 * against several scopes at once, and only one object can reserve from all of them in one
 * atomic step; budgets are per caller, not per backend pool, so a config naming other
 * backends keeps them.
 */
export const LIMITS_OBJECT = "limits";


/**
 * The RateLimiter port on Workers: every call goes to the LimiterObject, which holds the
 * buckets all isolates share. Admission waits for the object; settling and releasing do not
 * hold up the response: they are sent in the background, kept (and the invocation kept alive)
 * until delivered, and logged when they fail.
 */
export class DurableObjectRateLimiter implements RateLimiter {
  /** The ticket each admission was given, so its settlement is applied once even when retried. */
  private readonly tickets = new WeakMap<Reservation, string>();
  private readonly background = new BackgroundCalls("limiter");

  /**
   * @param stub returns a stub of the limiter object. A Durable Object stub belongs to the
   *   request that made it (using it from another request throws), so a gateway shared by an
   *   isolate's requests passes a function that makes one per call.
   * @param overloadRetryMs Retry-After of the refusal given when the object reports itself
   *   overloaded: admission cannot be decided, and more traffic would not help it.
   */
  constructor(
    private readonly stub: () => LimiterRpc,
    private readonly overloadRetryMs = 1_000,
  ) {}

  async reserve(scopes: readonly LimitScope[], tokens: number): Promise<Admission> {
    const ticket = crypto.randomUUID();
    try {
      // The same ticket on every try: if a call was admitted, the object answers with that admission.
      const admission = await withRetries(() => this.stub().reserve(scopes, tokens, ticket));
      if (admission.ok) this.tickets.set(admission.reservation, ticket);
      return admission;
    } catch (err) {
      if (overloaded(err)) return { ok: false, retryAfterMs: this.overloadRetryMs, view: {} };
      throw err;
    }
  }

  settle(reservation: Reservation, actualTokens: number): void {
    const ticket = this.tickets.get(reservation);
    this.background.send("settle", () => this.stub().settle(reservation, actualTokens, ticket));
  }

  release(reservation: Reservation): void {
    const ticket = this.tickets.get(reservation);
    this.background.send("release", () => this.stub().release(reservation, ticket));
  }

  /** Resolves when every settle and release sent so far has been delivered (or has failed and been logged). */
  flush(): Promise<void> {
    return this.background.flush();
  }
}
