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
  /** Anthropic: prompt tokens written to the provider's cache (billed at a premium). */
  cacheCreationTokens: number | null;
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
