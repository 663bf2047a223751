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
  /** What was taken from each token budget (a whole number, at most the smallest capacity). */
  tokens: number;
}

/**
 * What the client is told about the budgets it counts against: after the request when it was
 * admitted (the tightest budget), the budget that refused it when it was not. Every number is
 * a finite whole number ≥ 0.
 */
export interface BudgetView {
  limitTokens?: number;
  remainingTokens?: number;
  resetTokensMs?: number;
  limitRequests?: number;
  remainingRequests?: number;
  resetRequestsMs?: number;
}

/** Which per-minute limit refused a request. */
export type LimitKind = "tokens" | "requests";

export type Admission =
  | { ok: true; reservation: Reservation; view: BudgetView }
  | {
      ok: false;
      /**
       * Whole ms (≥ 1) after which the same request is admitted if nothing else takes the
       * budget first: never more than the time until the refusing budget is full again, so it
       * always comes. 0 when `never`.
       */
      retryAfterMs: number;
      view: BudgetView;
      /**
       * The limit that refused it (the one with the longest wait when both did). Absent when no
       * limit decided: the limiter could not (an overloaded Durable Object).
       */
      limit?: LimitKind;
      /**
       * No wait helps: the reservation exceeds the whole capacity of a token budget (`view`
       * shows that budget). The caller must ask for less (the admit step caps the completion
       * budget so that this does not happen).
       */
      never?: true;
    };

/**
 * Token and request limits, enforced before a backend is called: reserve the estimate at
 * admission, settle with the real usage when the response ends, release on failure.
 *
 * `reserve` takes the tokens from every token budget of its scopes and one request from every
 * request budget, or nothing: a refusal takes nothing and says which limit refused and how long
 * until the same reservation fits — a finite, whole wait that always ends, because a reservation
 * above the whole capacity of a token budget is refused as `never` instead. Token amounts are
 * counted whole (fractions up; NaN and negatives as 0; Infinity never fits).
 */
export interface RateLimiter {
  reserve(scopes: readonly LimitScope[], tokens: number): Admission | Promise<Admission>;
  settle(reservation: Reservation, actualTokens: number): void;
  release(reservation: Reservation): void;
}

/**
 * A response may overdraw its budget (it used more than was reserved, e.g. a completion budget
 * capped at admission); the debt is paid back before the next admission, but at most this many
 * minutes of budget: beyond it is forgiven, so a wild usage report cannot lock a caller out for
 * ever (or send a Retry-After of 10^300 ms).
 */
export const MAX_DEBT_MINUTES = 60;

/** The longest Retry-After a limiter gives: a bucket at its deepest debt refilling one full reservation. */
export const MAX_RETRY_AFTER_MS = (MAX_DEBT_MINUTES + 1) * 60_000;

/** Rounding slack: a bucket this close to the amount asked holds it (floating-point refill). */
const EPSILON = 1e-6;

/** A count as a finite whole number ≥ 0: NaN and negatives 0, fractions up, infinity to `max`. */
function wholeAmount(n: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!(n > 0)) return 0;
  return n >= max ? max : Math.ceil(n);
}

/**
 * A bucket that refills continuously at `capacity` per minute. `level` may go below zero when
 * a response used more than was reserved (down to MAX_DEBT_MINUTES of debt): the caller pays it
 * back before the next admission.
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

  /** Full again: no different from a bucket made now. */
  full(now: number): boolean {
    return this.available(now) >= this.capacity;
  }

  take(n: number, now: number): void {
    this.refill(now);
    this.level = Math.max(-MAX_DEBT_MINUTES * this.capacity, this.level - n);
  }

  give(n: number, now: number): void {
    this.refill(now);
    this.level = Math.min(this.capacity, this.level + n);
  }

  /** Whole ms until `n` (≤ capacity) is available; 0 when it is. */
  waitFor(n: number, now: number): number {
    const short = n - this.available(now);
    // Less a hair, so that floating-point noise over a whole ms does not add one (EPSILON covers the hair).
    return short <= EPSILON ? 0 : Math.max(1, Math.ceil((short * 60_000) / this.capacity - 1e-9));
  }

  /** Whole ms until the bucket is full again. */
  resetMs(now: number): number {
    return this.waitFor(this.capacity, now);
  }

  /** Whole units available now (what `x-ratelimit-remaining-*` says). */
  remaining(now: number): number {
    return Math.max(0, Math.floor(this.available(now) + EPSILON));
  }
}

export interface InProcessLimiterOptions {
  /**
   * Buckets held (per kind: tokens, requests) before those that are full again are dropped —
   * they carry no information (default 10,000). The next sweep waits until the map doubles.
   */
  sweepAt?: number;
  /**
   * Most buckets held per kind (default 100,000). On an open gateway any client can mint
   * callers; past this, after the full ones, the least recently used buckets are dropped (down
   * to 90%), forgiving what those callers used in the last minute.
   */
  maxBuckets?: number;
}

/** One kind of bucket (tokens or requests) by scope key, least recently used first. */
class BucketMap {
  private readonly map = new Map<string, Bucket>();
  private readonly sweepFloor: number;
  private readonly max: number;
  private sweepAt: number;

  constructor(options: InProcessLimiterOptions) {
    this.max = Math.max(1, Math.floor(options.maxBuckets ?? 100_000));
    this.sweepFloor = Math.min(this.max, Math.max(1, Math.floor(options.sweepAt ?? 10_000)));
    this.sweepAt = this.sweepFloor;
  }

  get size(): number {
    return this.map.size;
  }

  get(key: string): Bucket | undefined {
    return this.map.get(key);
  }

  /** The bucket of `key` at this capacity, made (full) when there is none or the capacity changed; marked used. */
  use(key: string, capacity: number, now: number): Bucket {
    let b = this.map.get(key);
    if (b !== undefined) this.map.delete(key);
    if (b === undefined || b.capacity !== capacity) b = new Bucket(capacity, now);
    this.map.set(key, b);
    return b;
  }

  /**
   * Makes room for the new buckets of `scopes` before a reservation takes any (so none it holds is
   * dropped under it): past the sweep mark, drops the full ones; past the cap, the least
   * recently used down to 90% of it.
   */
  room(scopes: readonly LimitScope[], now: number): void {
    let incoming = 0;
    for (const s of scopes) if (!this.map.has(s.key)) incoming++;
    if (incoming === 0 || this.map.size + incoming <= this.sweepAt) return;
    for (const [key, b] of this.map) if (b.full(now)) this.map.delete(key);
    if (this.map.size + incoming > this.max) {
      const keep = Math.max(0, Math.floor(this.max * 0.9) - incoming);
      for (const key of this.map.keys()) {
        if (this.map.size <= keep) break;
        this.map.delete(key);
      }
    }
    // Amortised: the next sweep when the map has doubled (it never waits past the cap).
    this.sweepAt = Math.min(this.max, Math.max(this.sweepFloor, 2 * this.map.size));
  }
}

interface ScopeBuckets {
  t: Bucket | undefined;
  r: Bucket | undefined;
}

const capacityOf = (n: number | undefined): number | undefined => (n !== undefined && n > 0 && Number.isFinite(n) ? n : undefined);

/** The smallest token capacity of `scopes` (what one reservation can ever hold), if any has one. */
export function tokenCapacity(scopes: readonly LimitScope[]): number | undefined {
  let cap: number | undefined;
  for (const s of scopes) {
    const c = capacityOf(s.spec.tokensPerMinute);
    if (c !== undefined && (cap === undefined || c < cap)) cap = c;
  }
  return cap;
}

/**
 * Per-minute limits in one process (Node, Azure Functions; the LimiterObject on Workers).
 * Admission is one synchronous step, so concurrent requests cannot both take the last of a
 * budget: the overshoot is at most what one response uses beyond its reservation. The buckets
 * per caller are bounded (InProcessLimiterOptions).
 */
export class InProcessRateLimiter implements RateLimiter {
  private readonly tokens: BucketMap;
  private readonly requests: BucketMap;

  constructor(
    private readonly now: () => number = Date.now,
    options: InProcessLimiterOptions = {},
  ) {
    this.tokens = new BucketMap(options);
    this.requests = new BucketMap(options);
  }

  /** Buckets held: token buckets plus request buckets. */
  get bucketCount(): number {
    return this.tokens.size + this.requests.size;
  }

  reserve(scopes: readonly LimitScope[], tokens: number): Admission {
    const now = this.now();
    const amount = wholeAmount(tokens);
    const cap = tokenCapacity(scopes);
    if (cap !== undefined && amount > cap) {
      // No wait would let it in: say so instead of a Retry-After that cannot succeed. Nothing is kept for it.
      return { ok: false, retryAfterMs: 0, limit: "tokens", never: true, view: { limitTokens: Math.floor(cap) } };
    }
    this.tokens.room(scopes, now);
    this.requests.room(scopes, now);
    const buckets: ScopeBuckets[] = scopes.map((s) => {
      const tc = capacityOf(s.spec.tokensPerMinute);
      const rc = capacityOf(s.spec.requestsPerMinute);
      return { t: tc === undefined ? undefined : this.tokens.use(s.key, tc, now), r: rc === undefined ? undefined : this.requests.use(s.key, rc, now) };
    });
    // The binding bucket of each kind: the longest wait.
    let tokenWait = 0;
    let requestWait = 0;
    let tokenBy: Bucket | undefined;
    let requestBy: Bucket | undefined;
    for (const { t, r } of buckets) {
      const tw = t?.waitFor(amount, now) ?? 0;
      if (tw > tokenWait) [tokenWait, tokenBy] = [tw, t];
      // A request needs one whole request of room; a capacity below 1 holds at most itself.
      const rw = r ? r.waitFor(Math.min(1, r.capacity), now) : 0;
      if (rw > requestWait) [requestWait, requestBy] = [rw, r];
    }
    const admitted = tokenWait === 0 && requestWait === 0;
    if (admitted) {
      for (const { t, r } of buckets) {
        t?.take(amount, now);
        r?.take(Math.min(1, r.capacity), now);
      }
    }
    const view = this.view(buckets, now, tokenBy, requestBy);
    if (admitted) return { ok: true, reservation: { scopes, tokens: amount }, view };
    const wait = Math.max(tokenWait, requestWait);
    return { ok: false, retryAfterMs: Math.min(wait, MAX_RETRY_AFTER_MS), view, limit: requestWait >= tokenWait ? "requests" : "tokens" };
  }

  settle(reservation: Reservation, actualTokens: number): void {
    const now = this.now();
    // An unusable usage figure charges what was reserved.
    const actual = actualTokens >= 0 && Number.isFinite(actualTokens) ? actualTokens : reservation.tokens;
    const refund = reservation.tokens - actual;
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
      this.tokens.get(s.key)?.give(wholeAmount(reservation.tokens), now);
      const r = this.requests.get(s.key);
      r?.give(Math.min(1, r.capacity), now);
    }
  }

  /**
   * Per kind, the bucket that refused (when one did), else the tightest one (fewest left): its
   * limit, what is left now, and when it is full again.
   */
  private view(buckets: readonly ScopeBuckets[], now: number, tokenBy: Bucket | undefined, requestBy: Bucket | undefined): BudgetView {
    const pick = (kind: "t" | "r", refusing: Bucket | undefined): Bucket | undefined => {
      if (refusing) return refusing;
      let best: Bucket | undefined;
      for (const b of buckets) {
        const x = b[kind];
        if (x && (best === undefined || x.remaining(now) < best.remaining(now))) best = x;
      }
      return best;
    };
    const view: BudgetView = {};
    const t = pick("t", tokenBy);
    if (t) Object.assign(view, { limitTokens: wholeAmount(t.capacity), remainingTokens: t.remaining(now), resetTokensMs: t.resetMs(now) });
    const r = pick("r", requestBy);
    if (r) Object.assign(view, { limitRequests: wholeAmount(r.capacity), remainingRequests: r.remaining(now), resetRequestsMs: r.resetMs(now) });
    return view;
  }
}

/**
 * A header number: a finite whole number ≥ 0 in plain digits (never NaN, Infinity or
 * exponent notation); undefined when `n` is none of that.
 */
export function headerNumber(n: number | undefined): string | undefined {
  if (n === undefined || !Number.isFinite(n) || n < 0) return undefined;
  const w = Math.round(n);
  return Number.isSafeInteger(w) ? String(w) : BigInt(w).toString();
}

/** The OpenAI-style headers for a budget view; a kind whose numbers are not all usable is left out. */
export function budgetHeaders(view: BudgetView): Record<string, string> {
  const h: Record<string, string> = {};
  const tl = headerNumber(view.limitTokens);
  const tr = headerNumber(view.remainingTokens);
  const tz = headerNumber(view.resetTokensMs);
  if (tl !== undefined && tr !== undefined && tz !== undefined) {
    h["x-ratelimit-limit-tokens"] = tl;
    h["x-ratelimit-remaining-tokens"] = tr;
    h["x-ratelimit-reset-tokens"] = `${tz}ms`;
  }
  const rl = headerNumber(view.limitRequests);
  const rr = headerNumber(view.remainingRequests);
  const rz = headerNumber(view.resetRequestsMs);
  if (rl !== undefined && rr !== undefined && rz !== undefined) {
    h["x-ratelimit-limit-requests"] = rl;
    h["x-ratelimit-remaining-requests"] = rr;
    h["x-ratelimit-reset-requests"] = `${rz}ms`;
  }
  return h;
}
