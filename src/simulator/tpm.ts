/**
 * Sliding-window tokens-per-minute limiter, shaped like Azure OpenAI's: a request that would
 * push the window over the limit is refused with the time until enough tokens age out.
 */
export type TpmDecision =
  | { ok: true; remaining: number }
  | { ok: false; remaining: number; retryAfterMs: number };

export class TokenWindow {
  private entries: { at: number; tokens: number }[] = [];

  constructor(
    readonly limit: number,
    private readonly now: () => number,
    private readonly windowMs = 60_000,
  ) {}

  /** Checks and, when allowed, records in one step so concurrent requests cannot both slip in. */
  take(tokens: number): TpmDecision {
    const now = this.now();
    this.expire(now);
    const used = this.used();
    // A request larger than the whole limit could never fit; let it through an empty window
    // rather than refusing it forever.
    if (used + tokens <= this.limit || this.entries.length === 0) {
      this.entries.push({ at: now, tokens });
      return { ok: true, remaining: Math.max(0, this.limit - used - tokens) };
    }
    let excess = used + tokens - this.limit;
    let retryAfterMs = this.windowMs;
    for (const entry of this.entries) {
      excess -= entry.tokens;
      if (excess <= 0) {
        retryAfterMs = entry.at + this.windowMs - now;
        break;
      }
    }
    return { ok: false, remaining: Math.max(0, this.limit - used), retryAfterMs: Math.max(1, retryAfterMs) };
  }

  clear(): void {
    this.entries = [];
  }

  private used(): number {
    return this.entries.reduce((sum, e) => sum + e.tokens, 0);
  }

  private expire(now: number): void {
    const cutoff = now - this.windowMs;
    while (this.entries.length > 0 && this.entries[0]!.at <= cutoff) this.entries.shift();
  }
}

/** Duration in the style of OpenAI's `x-ratelimit-reset-*` headers ("250ms", "1.5s"). */
export function formatResetDuration(ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`;
  return `${Number((ms / 1000).toFixed(3))}s`;
}
