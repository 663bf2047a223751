import type { Usage } from "./usage.ts";

/** One per request, for chargeback (CONTRACT §5). Token fields are null when nothing was answered, never 0 for unknown. */
export interface UsageEvent {
  time: string;
  requestId: string;
  caller: string;
  app: string | null;
  priority: number;
  model: string | null;
  /** The API operation, e.g. `chat/completions`, `embeddings`, `messages`. */
  operation: string | null;
  backend: string | null;
  status: number;
  attempts: number;
  queueMs: number;
  ttfbMs: number | null;
  totalMs: number;
  promptTokens: number | null;
  completionTokens: number | null;
  totalTokens: number | null;
  cachedTokens: number | null;
  reasoningTokens: number | null;
  usageSource: Usage["source"] | null;
  stream: boolean;
  async: boolean;
  /** The answer was cut short: the backend's stream broke, or the client left before its end. */
  truncated: boolean;
}

/** Where usage events go: stdout, a file, a queue… Must not block the request path. */
export interface UsageSink {
  emit(event: UsageEvent): void;
}

export class ConsoleSink implements UsageSink {
  emit(event: UsageEvent): void {
    console.log(JSON.stringify(event));
  }
}

/** Sends every event to each sink; one failing sink does not keep the others from theirs. */
export class FanOutSink implements UsageSink {
  constructor(private readonly sinks: readonly UsageSink[]) {}

  emit(event: UsageEvent): void {
    for (const s of this.sinks) {
      try {
        s.emit(event);
      } catch (err) {
        console.error("sluice: a usage sink failed", err);
      }
    }
  }
}

/**
 * What the gateway learns about one request along the way; `complete` turns it into the
 * request's one usage event, exactly once, when the response has ended.
 */
export class RequestRecord {
  backend: string | null = null;
  operation: string | null = null;
  app: string | null = null;
  attempts = 0;
  queueMs = 0;
  ttfbMs: number | null = null;
  usage: Usage | null = null;
  truncated = false;
  /** Runs once the request has ended, with the usage it was charged (null: nothing answered). */
  onComplete: ((usage: Usage | null) => void) | undefined;
  private done = false;

  constructor(
    private readonly sink: UsageSink,
    private readonly startedAt: number,
    readonly requestId: string,
    readonly caller: string,
    readonly priority: number,
    readonly model: string | null,
    readonly stream: boolean,
  ) {}

  complete(status: number, now: number): void {
    if (this.done) return;
    this.done = true;
    const u = this.usage;
    this.onComplete?.(u);
    this.sink.emit({
      time: new Date(this.startedAt).toISOString(),
      requestId: this.requestId,
      caller: this.caller,
      app: this.app,
      priority: this.priority,
      model: this.model,
      operation: this.operation,
      backend: this.backend,
      status,
      attempts: this.attempts,
      queueMs: Math.round(this.queueMs),
      ttfbMs: this.ttfbMs === null ? null : Math.round(this.ttfbMs),
      totalMs: Math.round(now - this.startedAt),
      promptTokens: u?.promptTokens ?? null,
      completionTokens: u?.completionTokens ?? null,
      totalTokens: u?.totalTokens ?? null,
      cachedTokens: u?.cachedTokens ?? null,
      reasoningTokens: u?.reasoningTokens ?? null,
      usageSource: u?.source ?? null,
      stream: this.stream,
      async: false,
      truncated: this.truncated,
    });
  }
}
