export type BreakerState = "closed" | "open" | "half-open";

export interface BreakerOptions {
  failureThreshold: number;
  openMs: number;
}

/**
 * A per-backend circuit breaker: `failureThreshold` consecutive failures open it for
 * `openMs`; then one probe is let through (half-open). The probe's success closes it,
 * its failure opens it again for another `openMs`.
 */
export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private probing = false;
  private current: BreakerState = "closed";

  constructor(private readonly options: BreakerOptions) {}

  state(now: number): BreakerState {
    if (this.current === "open" && now - this.openedAt >= this.options.openMs) this.current = "half-open";
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

  /** When the circuit will let a probe through, for Retry-After on a refusal. */
  reopensAt(): number {
    return this.openedAt + this.options.openMs;
  }

  onSuccess(): void {
    this.failures = 0;
    this.probing = false;
    this.current = "closed";
  }

  onFailure(now: number): void {
    this.probing = false;
    this.failures++;
    if (this.current === "half-open" || this.failures >= this.options.failureThreshold) {
      this.current = "open";
      this.openedAt = now;
    }
  }

  /** An attempt that ended without a verdict on health (e.g. client went away). */
  onAbandon(): void {
    this.probing = false;
  }
}
