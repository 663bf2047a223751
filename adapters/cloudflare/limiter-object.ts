import { DurableObject } from "cloudflare:workers";
import { InProcessRateLimiter, type Admission, type LimitScope, type Reservation } from "../../src/governance/limits.ts";

/**
 * What a Worker calls on the limiter object (every call a Promise across the RPC boundary).
 * Reservations travel as the plain data they are ({scopes, tokens}). A `ticket` names one
 * reserve call, unique per call: a reserve retried after a lost answer gets the admission it
 * already had instead of a second one, and a settle or release retried after a lost answer
 * is not applied twice. Calls without a ticket are applied as they come.
 */
export interface LimiterRpc {
  reserve(scopes: readonly LimitScope[], tokens: number, ticket?: string): Promise<Admission>;
  settle(reservation: Reservation, actualTokens: number, ticket?: string): Promise<void>;
  release(reservation: Reservation, ticket?: string): Promise<void>;
}

/**
 * A ticket's admission is forgotten after this long: its request is presumed gone (an isolate
 * killed mid-request never settles). The budget it reserved has long refilled by then; a
 * settle that still arrives is ignored. Longer than the longest job run (CONTRACT §7: a job may
 * run for at least 30 minutes, and it settles its reservation when it ends): 60 minutes, twice
 * that, so a long job's settlement (its actual tokens) still counts. Open admissions are a few
 * bytes each, so keeping them longer costs little.
 */
const MAX_OPEN_MS = 60 * 60_000;

/**
 * The token and request budgets of a gateway on Workers: a Durable Object holding the same
 * InProcessRateLimiter the Node gateway runs, so that every isolate admits against one set of
 * buckets. Each call runs to its end without awaiting anything, so admission is one atomic
 * step here as it is in one Node process. Workers reach it over JS RPC through
 * DurableObjectRateLimiter.
 *
 * The buckets live in memory only. The runtime evicts an object after 70-140 s without calls,
 * by which time a per-minute bucket has refilled unless a response overdrew it by more than
 * that; so an eviction forgives at most such a debt, and the settlements of reservations
 * still open (a stream longer than the idle time) are ignored.
 */
export class LimiterObject extends DurableObject {
  private readonly limiter = new InProcessRateLimiter();
  /** Admissions whose reservation is not settled or released yet, by ticket (oldest first). */
  private readonly open = new Map<string, { admission: Admission; at: number }>();

  reserve(scopes: readonly LimitScope[], tokens: number, ticket?: string): Admission {
    const now = Date.now();
    this.forgetStale(now);
    if (ticket !== undefined) {
      const earlier = this.open.get(ticket);
      if (earlier) return earlier.admission;
    }
    const admission = this.limiter.reserve(scopes, tokens);
    if (admission.ok && ticket !== undefined) this.open.set(ticket, { admission, at: now });
    return admission;
  }

  settle(reservation: Reservation, actualTokens: number, ticket?: string): void {
    if (this.close(ticket)) this.limiter.settle(reservation, actualTokens);
  }

  release(reservation: Reservation, ticket?: string): void {
    if (this.close(ticket)) this.limiter.release(reservation);
  }

  /** Whether a settlement applies: always without a ticket; with one, only the first time, for an admission this instance gave. */
  private close(ticket: string | undefined): boolean {
    return ticket === undefined || this.open.delete(ticket);
  }

  private forgetStale(now: number): void {
    for (const [ticket, { at }] of this.open) {
      if (now - at < MAX_OPEN_MS) break;
      this.open.delete(ticket);
    }
  }
}
