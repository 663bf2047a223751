import type { Reservation, RateLimiter } from "../governance/limits.ts";
import type { Usage } from "../metering/usage.ts";
import type { UsageEvent, UsageSink } from "../metering/events.ts";
import type { Scheduler, SlotRelease } from "../scheduling/port.ts";

/**
 * The usage event of a request refused before it could be parsed as one (the runtime's HTTP
 * parser refused it: a bad request line, oversized headers): every answer has one.
 */
export function unparsedRequestEvent(requestId: string, status: number, at: number, priority: number): UsageEvent {
  return {
    time: new Date(at).toISOString(),
    requestId,
    caller: "unknown",
    app: null,
    priority,
    model: null,
    operation: null,
    backend: null,
    status,
    attempts: 0,
    queueMs: 0,
    ttfbMs: null,
    totalMs: 0,
    promptTokens: null,
    completionTokens: null,
    totalTokens: null,
    cachedTokens: null,
    cacheCreationTokens: null,
    reasoningTokens: null,
    usageSource: null,
    stream: false,
    async: false,
    truncated: false,
  };
}

/** What an exchange needs to settle. */
export interface SettleDeps {
  sink: UsageSink;
  scheduler: Scheduler;
  limiter: RateLimiter;
  now: () => number;
}

/**
 * One request's exchange: what the gateway learns about it along the pipeline, what it holds on
 * its behalf (a backend lease, a budget reservation), and the one place all of it is settled.
 *
 * `settle` is idempotent and is the only place that gives a lease back at the end, settles or
 * releases the budget and emits the usage event (metrics are a usage sink). The pipeline calls
 * it from a `finally` around every step; a relayed body calls it when it ends, errors or is
 * cancelled. So every exit settles, a throw included, exactly once.
 */
export class Exchange {
  caller = "unknown";
  app: string | null = null;
  priority: number;
  model: string | null = null;
  operation: string | null = null;
  stream = false;
  async = false;
  backend: string | null = null;
  attempts = 0;
  queueMs = 0;
  ttfbMs: number | null = null;
  usage: Usage | null = null;
  truncated = false;
  /** Set once the response body is relayed: its end settles, not the pipeline's `finally`. */
  relaying = false;
  /** Set when a job took the exchange over: the job's run settles it, not the pipeline's `finally`. */
  handedOff = false;
  /** Told the usage event too (a job records its usage). */
  observer: ((event: UsageEvent) => void) | undefined;
  /** Told once, when the first lease is granted (a job is `running` from then on). */
  onFirstLease: (() => void) | undefined;
  private reservation: Reservation | undefined;
  /** Some attempt reached a backend: the request counts toward `requestsPerMinute` whatever the answer. */
  private reached = false;
  private lease: string | undefined;
  private settled = false;

  constructor(
    private readonly deps: SettleDeps,
    readonly requestId: string,
    readonly startedAt: number,
    defaultPriority: number,
  ) {
    this.priority = defaultPriority;
  }

  reserved(reservation: Reservation): void {
    this.reservation = reservation;
  }

  /** A lease on `backend` was granted; the attempt is about to be sent. */
  leased(backend: string): void {
    this.lease = backend;
    this.reached = true;
    const first = this.onFirstLease;
    if (first) {
      this.onFirstLease = undefined;
      first();
    }
  }

  /** Some attempt was granted a backend. */
  get hasReached(): boolean {
    return this.reached;
  }

  /** The current attempt ended: its lease goes back with what it said about the backend. */
  endAttempt(outcome: SlotRelease): void {
    const backend = this.lease;
    if (backend === undefined) return;
    this.lease = undefined;
    this.deps.scheduler.release(backend, outcome);
  }

  /** Ends the exchange with the status the client got (or the sink stored). Runs once; later calls do nothing. */
  settle(status: number): void {
    if (this.settled) return;
    this.settled = true;
    // A lease still held here belongs to an attempt that ended without a verdict (a throw, a client gone).
    this.endAttempt({ verdict: "abandoned" });
    const u = this.usage;
    const r = this.reservation;
    if (r) {
      // Tokens are charged what was used (nothing known: nothing); the request itself counts once it reached a backend.
      if (this.reached) this.deps.limiter.settle(r, u?.totalTokens ?? 0);
      else this.deps.limiter.release(r);
    }
    const event = this.event(status, u);
    this.deps.sink.emit(event);
    this.observer?.(event);
  }

  private event(status: number, u: Usage | null): UsageEvent {
    return {
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
      totalMs: Math.round(this.deps.now() - this.startedAt),
      promptTokens: u?.promptTokens ?? null,
      completionTokens: u?.completionTokens ?? null,
      totalTokens: u?.totalTokens ?? null,
      cachedTokens: u?.cachedTokens ?? null,
      cacheCreationTokens: u?.cacheCreationTokens ?? null,
      reasoningTokens: u?.reasoningTokens ?? null,
      usageSource: u?.source ?? null,
      stream: this.stream,
      async: this.async,
      truncated: this.truncated,
    };
  }
}
