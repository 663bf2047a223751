import { MAX_TIMER_MS } from "../timers.ts";

export type BreakerState = "closed" | "open" | "half-open";

/** What opens a closed circuit. */
export type BreakerPolicy = "consecutive" | "failure-rate";

/**
 * The breaker's options: exactly the parsed `resilience.breaker` config block (a unit test keeps
 * the two types equal). This module stays free of zod; the schema owns the defaults and bounds.
 */
export interface BreakerOptions {
  /** `consecutive`: `failureThreshold` failures in a row open it. `failure-rate`: see below. */
  policy: BreakerPolicy;
  failureThreshold: number;
  /** The first open interval; also the interval after a close. */
  openMs: number;
  /** Cap of the grown open interval (a value below `openMs` means no growth). */
  maxOpenMs: number;
  /** Each failed half-open probe multiplies the open interval by this (≥ 1). */
  backoffMultiplier: number;
  /** `failure-rate`: the failure share (0..1] over the last `windowMs` that opens it. */
  failureRate: number;
  windowMs: number;
  /** `failure-rate`: verdicts the window must hold before the share counts. */
  minimumCalls: number;
}

/** Why the state changed; stable tokens, fit for a metric label. */
export type BreakerChangeReason =
  | "consecutive-failures" // closed → open
  | "failure-rate" // closed → open
  | "open-elapsed" // open → half-open (observed by a call at or after reopensAt())
  | "probe-failed" // half-open → open, for a grown interval
  | "probe-succeeded" // half-open → closed
  | "shared-open" // → open: another replica's breaker opened (shared state)
  | "shared-close"; // → closed: another replica's probe succeeded

export interface BreakerChange {
  from: BreakerState;
  to: BreakerState;
  /** The `now` of the call that made (or observed) the change. */
  at: number;
  reason: BreakerChangeReason;
}

/** The longest interval a breaker uses: what a timer can wait for (src/timers.ts). */
export const MAX_BREAKER_MS = MAX_TIMER_MS;

/** Buckets in the failure-rate window: the window slides in steps of windowMs / BUCKETS. */
const BUCKETS = 10;

/**
 * A per-backend circuit breaker, as a pure state machine: no timers, no clock, every `now`
 * (epoch ms) is passed in.
 *
 * - closed: everything passes. The policy decides when failures open it: `consecutive`
 *   (`failureThreshold` failures in a row; a success resets the count) or `failure-rate`
 *   (a failure share ≥ `failureRate` over the last `windowMs`, once `minimumCalls` verdicts
 *   fall in it; checked when a failure is recorded).
 * - open: nothing passes until `reopensAt()`; the first call at or after it observes half-open.
 *   Verdicts arriving while open (attempts sent before it opened) are ignored: they neither
 *   extend the interval nor close the circuit.
 * - half-open: one probe passes (`tryPass`). Any verdict in half-open counts as the probe's:
 *   success closes the circuit, resets the counts and the interval to `openMs`; failure opens it
 *   again for `openMs × backoffMultiplier^(failed probes in a row)`, capped at `maxOpenMs`.
 *   `onAbandon()` frees the probe for the next caller.
 *
 * Every interval is clamped to `MAX_BREAKER_MS`, so `reopensAt() - now` is always a valid
 * setTimeout delay and the date math stays finite.
 */
export class CircuitBreaker {
  private options: BreakerOptions;
  private current: BreakerState = "closed";
  private consecutiveFailures = 0;
  /** Failed probes in a row since the circuit last closed: the exponent of the growth. */
  private failedProbes = 0;
  private openedAt = 0;
  /** Held open until then by another replica's breaker (shared state): that replica probes first. */
  private heldUntil = 0;
  private probing = false;
  private window: SlidingWindow;

  constructor(
    options: BreakerOptions,
    private readonly onChange?: (change: BreakerChange) => void,
  ) {
    this.options = resolve(options);
    this.window = new SlidingWindow(this.options.windowMs);
  }

  /**
   * New options for this same breaker (a config reload): its state, counts and open interval's
   * start are kept. An open circuit's reopensAt() follows the new intervals at once. The
   * failure-rate window is kept unless its bucket width changes (then it starts empty).
   */
  configure(options: BreakerOptions): void {
    const next = resolve(options);
    if (bucketMsFor(next.windowMs) !== this.window.bucketMs) this.window = new SlidingWindow(next.windowMs);
    this.options = next;
  }

  state(now: number): BreakerState {
    if (this.current === "open" && now >= this.reopensAt()) this.transition("half-open", now, "open-elapsed");
    return this.current;
  }

  /** Whether a request may be sent now (without claiming the half-open probe). */
  canPass(now: number): boolean {
    const s = this.state(now);
    return s === "closed" || (s === "half-open" && !this.probing);
  }

  /** Claims the right to send; in half-open only the first caller gets it. */
  tryPass(now: number): boolean {
    if (!this.canPass(now)) return false;
    if (this.current === "half-open") this.probing = true;
    return true;
  }

  /** When the circuit lets a probe through (epoch ms), for Retry-After on a refusal. Meaningful while open. */
  reopensAt(): number {
    return Math.max(this.openedAt + this.openInterval(), this.heldUntil);
  }

  /**
   * Another replica's breaker for this backend opened: this one stays open until `until` too,
   * so the probe is that replica's (it tells the result); past `until` this one probes itself.
   */
  holdOpen(until: number, now: number): void {
    if (until <= now) return;
    this.heldUntil = Math.max(this.heldUntil, until);
    if (this.current !== "open") {
      this.openedAt = now;
      this.probing = false;
      this.transition("open", now, "shared-open");
    }
  }

  /** Another replica's probe succeeded: this one closes too (its own counts start over). */
  closeShared(now: number): void {
    this.heldUntil = 0;
    if (this.current === "closed") return;
    this.probing = false;
    this.failedProbes = 0;
    this.consecutiveFailures = 0;
    this.window.reset();
    this.transition("closed", now, "shared-close");
  }

  onSuccess(now: number): void {
    const s = this.state(now);
    if (s === "half-open") {
      this.close(now);
    } else if (s === "closed") {
      this.consecutiveFailures = 0;
      this.window.record(now, false);
    }
  }

  onFailure(now: number): void {
    const s = this.state(now);
    if (s === "half-open") {
      // Stop counting once the cap is reached: the exponent stays bounded.
      if (this.openInterval() < this.options.maxOpenMs) this.failedProbes++;
      this.open(now, "probe-failed");
    } else if (s === "closed") {
      this.consecutiveFailures++;
      this.window.record(now, true);
      const reason = this.tripReason(now);
      if (reason) this.open(now, reason);
    }
  }

  /** An attempt that ended without a verdict on health (e.g. client went away): frees the probe. */
  onAbandon(): void {
    this.probing = false;
  }

  /** The current open interval: openMs grown by each failed probe, capped. */
  private openInterval(): number {
    const { openMs, maxOpenMs, backoffMultiplier } = this.options;
    return Math.min(maxOpenMs, Math.round(openMs * backoffMultiplier ** this.failedProbes));
  }

  private tripReason(now: number): BreakerChangeReason | undefined {
    const o = this.options;
    if (o.policy === "consecutive") return this.consecutiveFailures >= o.failureThreshold ? "consecutive-failures" : undefined;
    const { calls, failures } = this.window.totals(now);
    return calls >= o.minimumCalls && failures / calls >= o.failureRate ? "failure-rate" : undefined;
  }

  private open(now: number, reason: BreakerChangeReason): void {
    this.openedAt = now;
    this.probing = false;
    this.transition("open", now, reason);
  }

  private close(now: number): void {
    this.heldUntil = 0;
    this.probing = false;
    this.failedProbes = 0;
    this.consecutiveFailures = 0;
    this.window.reset();
    this.transition("closed", now, "probe-succeeded");
  }

  /** The last step of every change, so a listener sees a consistent breaker. */
  private transition(to: BreakerState, at: number, reason: BreakerChangeReason): void {
    const from = this.current;
    this.current = to;
    this.onChange?.({ from, to, at, reason });
  }
}

/**
 * Verdicts over the last `windowMs`, in a ring of BUCKETS time buckets: O(1) per call (at most
 * BUCKETS buckets cleared when time jumps ahead), fixed memory. The window covers the current
 * bucket and the BUCKETS − 1 before it.
 */
class SlidingWindow {
  readonly bucketMs: number;
  private readonly calls: number[] = new Array<number>(BUCKETS).fill(0);
  private readonly failures: number[] = new Array<number>(BUCKETS).fill(0);
  /** Index (floor(now / bucketMs)) of the newest bucket; -Infinity while empty. */
  private head = Number.NEGATIVE_INFINITY;
  private totalCalls = 0;
  private totalFailures = 0;

  constructor(windowMs: number) {
    this.bucketMs = bucketMsFor(windowMs);
  }

  record(now: number, failed: boolean): void {
    if (!Number.isFinite(now)) return;
    const slot = this.advance(now);
    this.calls[slot]! += 1;
    this.totalCalls++;
    if (failed) {
      this.failures[slot]! += 1;
      this.totalFailures++;
    }
  }

  totals(now: number): { calls: number; failures: number } {
    if (Number.isFinite(now)) this.advance(now);
    return { calls: this.totalCalls, failures: this.totalFailures };
  }

  reset(): void {
    this.calls.fill(0);
    this.failures.fill(0);
    this.head = Number.NEGATIVE_INFINITY;
    this.totalCalls = 0;
    this.totalFailures = 0;
  }

  /** Moves the window to `now` (never back: a clock stepping back counts in the newest bucket); returns its slot. */
  private advance(now: number): number {
    const index = Math.floor(now / this.bucketMs);
    if (index > this.head) {
      if (index - this.head >= BUCKETS) {
        this.reset();
      } else {
        for (let i = this.head + 1; i <= index; i++) this.clear(slotOf(i));
      }
      this.head = index;
    }
    return slotOf(this.head);
  }

  private clear(slot: number): void {
    this.totalCalls -= this.calls[slot]!;
    this.totalFailures -= this.failures[slot]!;
    this.calls[slot] = 0;
    this.failures[slot] = 0;
  }
}

function slotOf(index: number): number {
  return ((index % BUCKETS) + BUCKETS) % BUCKETS;
}

function bucketMsFor(windowMs: number): number {
  return Math.max(1, Math.ceil(windowMs / BUCKETS));
}

/**
 * Options made safe for the arithmetic: every number clamped to a range where no interval or
 * date overflows. The schema already refuses absurd values; this guards callers that build
 * options by hand. A missing or NaN field falls back to the behaviour from before it existed
 * (consecutive policy, no growth of the open interval).
 */
function resolve(o: BreakerOptions): BreakerOptions {
  const openMs = clamp(o.openMs, 1, MAX_BREAKER_MS, 30_000);
  return {
    policy: o.policy === "failure-rate" ? "failure-rate" : "consecutive",
    failureThreshold: clamp(o.failureThreshold, 1, Number.MAX_SAFE_INTEGER, 5),
    openMs,
    maxOpenMs: clamp(o.maxOpenMs, openMs, MAX_BREAKER_MS, openMs),
    backoffMultiplier: clamp(o.backoffMultiplier, 1, 1_000, 1),
    failureRate: clamp(o.failureRate, 0, 1, 0.5),
    windowMs: clamp(o.windowMs, 1, MAX_BREAKER_MS, 60_000),
    minimumCalls: clamp(o.minimumCalls, 1, Number.MAX_SAFE_INTEGER, 20),
  };
}

function clamp(value: unknown, min: number, max: number, fallback: number): number {
  return typeof value === "number" && !Number.isNaN(value) ? Math.min(max, Math.max(min, value)) : fallback;
}
