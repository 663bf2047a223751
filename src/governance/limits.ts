/** A per-minute budget: tokens, requests, or both. */
export interface LimitSpec {
  tokensPerMinute?: number;
  requestsPerMinute?: number;
}

/** One budget a request counts against: a caller's, a group's… */
export interface LimitScope {
  key: string;
  spec: LimitSpec;
}

export interface Reservation {
  scopes: readonly LimitScope[];
  tokens: number;
}

/** What the client is told about the tightest token budget it counts against. */
export interface BudgetView {
  limitTokens?: number;
  remainingTokens?: number;
  resetTokensMs?: number;
  limitRequests?: number;
  remainingRequests?: number;
  resetRequestsMs?: number;
}

export type Admission =
  | { ok: true; reservation: Reservation; view: BudgetView }
  | { ok: false; retryAfterMs: number; view: BudgetView };

/**
 * Token and request limits, enforced before a backend is called: reserve the estimate at
 * admission, settle with the real usage when the response ends, release on failure.
 */
export interface RateLimiter {
  reserve(scopes: readonly LimitScope[], tokens: number): Admission | Promise<Admission>;
  settle(reservation: Reservation, actualTokens: number): void;
  release(reservation: Reservation): void;
}

/**
 * A bucket that refills continuously at `capacity` per minute. `level` may go below zero when
 * a response used more than was reserved: the caller pays it back before the next admission.
 */
class Bucket {
  private level: number;
  private at: number;

  constructor(
    readonly capacity: number,
    now: number,
  ) {
    this.level = capacity;
    this.at = now;
  }

  private refill(now: number): void {
    if (now > this.at) {
      this.level = Math.min(this.capacity, this.level + ((now - this.at) * this.capacity) / 60_000);
      this.at = now;
    }
  }

  available(now: number): number {
    this.refill(now);
    return this.level;
  }

  take(n: number, now: number): void {
    this.refill(now);
    this.level -= n;
  }

  give(n: number, now: number): void {
    this.refill(now);
    this.level = Math.min(this.capacity, this.level + n);
  }

  /** ms until `n` is available (0 when it is). */
  waitFor(n: number, now: number): number {
    const short = n - this.available(now);
    return short <= 0 ? 0 : Math.ceil((short * 60_000) / this.capacity);
  }

  /** ms until the bucket is full again. */
  resetMs(now: number): number {
    return Math.ceil(((this.capacity - this.available(now)) * 60_000) / this.capacity);
  }
}

/**
 * Per-minute limits in one process (Node, Azure Functions). Admission is one synchronous
 * step, so concurrent requests cannot both take the last of a budget: the overshoot is at
 * most what one response uses beyond its reservation.
 */
export class InProcessRateLimiter implements RateLimiter {
  private readonly tokens = new Map<string, Bucket>();
  private readonly requests = new Map<string, Bucket>();

  constructor(private readonly now: () => number = Date.now) {}

  reserve(scopes: readonly LimitScope[], tokens: number): Admission {
    const now = this.now();
    const buckets = scopes.map((s) => ({
      t: this.bucket(this.tokens, s.key, s.spec.tokensPerMinute, now),
      r: this.bucket(this.requests, s.key, s.spec.requestsPerMinute, now),
    }));
    let wait = 0;
    for (const { t, r } of buckets) wait = Math.max(wait, t?.waitFor(tokens, now) ?? 0, r?.waitFor(1, now) ?? 0);
    const admitted = wait === 0;
    if (admitted) {
      for (const { t, r } of buckets) {
        t?.take(tokens, now);
        r?.take(1, now);
      }
    }
    // The tightest budget is what the client is shown: after this request when admitted, as it stands when not.
    const view: BudgetView = {};
    for (const { t, r } of buckets) {
      if (t) {
        const remaining = Math.max(0, Math.floor(t.available(now)));
        if (view.remainingTokens === undefined || remaining < view.remainingTokens) {
          Object.assign(view, { limitTokens: t.capacity, remainingTokens: remaining, resetTokensMs: t.resetMs(now) });
        }
      }
      if (r) {
        const remaining = Math.max(0, Math.floor(r.available(now)));
        if (view.remainingRequests === undefined || remaining < view.remainingRequests) {
          Object.assign(view, { limitRequests: r.capacity, remainingRequests: remaining, resetRequestsMs: r.resetMs(now) });
        }
      }
    }
    return admitted ? { ok: true, reservation: { scopes, tokens }, view } : { ok: false, retryAfterMs: wait, view };
  }

  settle(reservation: Reservation, actualTokens: number): void {
    const now = this.now();
    const refund = reservation.tokens - actualTokens;
    for (const s of reservation.scopes) {
      const t = this.tokens.get(s.key);
      if (!t) continue;
      if (refund >= 0) t.give(refund, now);
      else t.take(-refund, now);
    }
  }

  release(reservation: Reservation): void {
    const now = this.now();
    for (const s of reservation.scopes) {
      this.tokens.get(s.key)?.give(reservation.tokens, now);
      this.requests.get(s.key)?.give(1, now);
    }
  }

  private bucket(map: Map<string, Bucket>, key: string, capacity: number | undefined, now: number): Bucket | undefined {
    if (!capacity) return undefined;
    let b = map.get(key);
    if (!b || b.capacity !== capacity) {
      b = new Bucket(capacity, now);
      map.set(key, b);
    }
    return b;
  }
}

/** The OpenAI-style headers for a budget view. */
export function budgetHeaders(view: BudgetView): Record<string, string> {
  const h: Record<string, string> = {};
  if (view.limitTokens !== undefined) {
    h["x-ratelimit-limit-tokens"] = String(view.limitTokens);
    h["x-ratelimit-remaining-tokens"] = String(view.remainingTokens);
    h["x-ratelimit-reset-tokens"] = `${view.resetTokensMs}ms`;
  }
  if (view.limitRequests !== undefined) {
    h["x-ratelimit-limit-requests"] = String(view.limitRequests);
    h["x-ratelimit-remaining-requests"] = String(view.remainingRequests);
    h["x-ratelimit-reset-requests"] = `${view.resetRequestsMs}ms`;
  }
  return h;
}
