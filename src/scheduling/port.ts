import type { ClientSignal } from "../proxy/attempt.ts";

/**
 * A request's place in the queue, kept across requeues so that a request sent back after a
 * throttle does not lose its turn to requests that arrived later.
 */
export interface QueuePlace {
  seq: number;
  /** Fair-share start tag (virtual time, in estimated tokens) within its priority level. */
  tag: number;
  enqueuedAt: number;
}

export interface SlotRequest {
  /** The request id, for logs and cancellation across a Durable Object boundary. */
  id: string;
  /** Priority level: a lower number is more urgent. */
  priority: number;
  /** Fair-share key: requests of one caller are served in arrival order. */
  caller: string;
  /** Estimated tokens: the fair-share weight of the request. */
  cost: number;
  /** Epoch ms after which the request must not reach a backend (TTL). */
  deadline: number;
  /** Backend names that serve the request at its priority, lowest group first. */
  eligible: readonly string[];
  /** Backends already tried by this request (a failover never goes back to them). */
  tried: readonly string[];
  affinity?: string;
  /** Its earlier place, when the request comes back after a requeue. */
  place?: QueuePlace;
  /** Not before this epoch ms (a requeue waits for the backend's cooldown to end). */
  notBefore?: number;
}

export type SlotDecision =
  | { kind: "granted"; backend: string; queuedMs: number; place: QueuePlace }
  /** The TTL passed before a slot was free: 412, no backend contacted. */
  | { kind: "expired"; queuedMs: number }
  /** Queue limit reached: 429. */
  | { kind: "queue-full"; retryAfterMs: number }
  /** Every untried eligible backend cools down past the deadline: 429 with the earliest end. */
  | { kind: "cooling"; retryAfterMs: number; queuedMs: number }
  /** Nothing can serve it: every eligible backend tried, or every circuit open. */
  | { kind: "unavailable"; reason: "tried-all" | "circuit-open"; retryAfterMs?: number; queuedMs: number }
  /** The client went away while queued. */
  | { kind: "cancelled" };

/**
 * How one attempt ended, for the backend's state: `success` closes its breaker and feeds the
 * latency average; `failure` counts toward opening it; `throttled` and `abandoned` say nothing
 * about its health.
 */
export interface SlotRelease {
  verdict: "success" | "failure" | "throttled" | "abandoned";
  /** The backend asked not to be called before this epoch ms. */
  cooldownUntil?: number;
  ttfbMs?: number;
}

export interface LevelStats {
  level: number;
  waiting: number;
  dispatched: number;
  /** Total ms the dispatched requests waited. */
  waitedMs: number;
}

/** A backend's live state, as the store that owns it sees it. */
export interface BackendState {
  name: string;
  group: number;
  inFlight: number;
  breaker: "closed" | "open" | "half-open";
  coolingDownMs: number;
  ttfbMs: number | null;
}

export interface SchedulerStats {
  waiting: number;
  levels: LevelStats[];
  /** The backends' state where the scheduler keeps it (in-process, or in the Durable Object). */
  backends: BackendState[];
}

/**
 * Grants backend slots in priority order with fair share between callers, waits when every
 * eligible backend is busy, and expires requests at their deadline. Releasing a slot
 * dispatches the next waiter at once. One implementation per backing store (in-process, a
 * Durable Object), one conformance suite for all.
 */
export interface Scheduler {
  acquire(request: SlotRequest, signal?: ClientSignal): Promise<SlotDecision>;
  release(backend: string, outcome: SlotRelease): void;
  /** Queue depth and waits per level (a remote store answers asynchronously). */
  stats(): SchedulerStats | Promise<SchedulerStats>;
  /** Backend state changed from outside (a cooldown another replica saw): look at the waiters again. */
  refresh?(): void;
}
