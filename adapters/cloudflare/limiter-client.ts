import { waitUntil } from "cloudflare:workers";
import type { Admission, LimitScope, RateLimiter, Reservation } from "../../src/governance/limits.ts";
import type { LimiterRpc } from "./limiter-object.ts";

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

const MAX_CALLS = 3;

/** Transient RPC failures worth one more try (a reset object, a lost connection), not overload. */
function retryable(err: unknown): boolean {
  const e = err as { retryable?: unknown; overloaded?: unknown } | null;
  return e?.retryable === true && e.overloaded !== true;
}

/**
 * The RateLimiter port on Workers: every call goes to the LimiterObject, which holds the
 * buckets all isolates share. Admission waits for the object; settling and releasing do not
 * hold up the response: they are sent in the background, kept (and the invocation kept alive)
 * until delivered, and logged when they fail.
 */
export class DurableObjectRateLimiter implements RateLimiter {
  /** The ticket each admission was given, so its settlement is applied once even when retried. */
  private readonly tickets = new WeakMap<Reservation, string>();
  private readonly background = new Set<Promise<void>>();

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
    for (let n = 1; ; n++) {
      try {
        const admission = await this.stub().reserve(scopes, tokens, ticket);
        if (admission.ok) this.tickets.set(admission.reservation, ticket);
        return admission;
      } catch (err) {
        if ((err as { overloaded?: unknown } | null)?.overloaded === true) return { ok: false, retryAfterMs: this.overloadRetryMs, view: {} };
        // The same ticket again: if the first call was admitted, the object answers with that admission.
        if (n >= MAX_CALLS || !retryable(err)) throw err;
      }
    }
  }

  settle(reservation: Reservation, actualTokens: number): void {
    const ticket = this.tickets.get(reservation);
    this.send("settle", () => this.stub().settle(reservation, actualTokens, ticket));
  }

  release(reservation: Reservation): void {
    const ticket = this.tickets.get(reservation);
    this.send("release", () => this.stub().release(reservation, ticket));
  }

  /** Resolves when every settle and release sent so far has been delivered (or has failed and been logged). */
  async flush(): Promise<void> {
    while (this.background.size) await Promise.all(this.background);
  }

  /** A call nobody waits for; kept (and the invocation kept alive) until delivered, its failure logged. */
  private send(what: string, call: () => Promise<void>): void {
    const p = (async () => {
      for (let n = 1; ; n++) {
        try {
          return await call();
        } catch (err) {
          if (n >= MAX_CALLS || !retryable(err)) {
            console.error(`sluice: limiter ${what} failed`, err);
            return;
          }
        }
      }
    })();
    this.background.add(p);
    void p.finally(() => this.background.delete(p));
    try {
      waitUntil(p);
    } catch {
      // Outside a request (no invocation to extend): the promise is still kept above.
    }
  }
}
