/**
 * The gateway's Prometheus metrics (CONTRACT §8): a UsageSink fed the one usage event per
 * request, plus gauges read from live backend and scheduler state at scrape time. Sluice's own
 * metrics are `sluice_*`; the OpenTelemetry GenAI semantic-convention metrics are exported
 * alongside under their Prometheus names (`gen_ai.client.token.usage` → `gen_ai_client_token_usage`).
 */
import type { UsageEvent, UsageSink } from "../metering/events.ts";
import type { BreakerState } from "../resilience/breaker.ts";
import type { SharedStateStatus } from "../ops.ts";
import type { SchedulerStats } from "../scheduling/port.ts";
import { type Counter, type Histogram, OVERFLOW_LABEL_VALUE, PROMETHEUS_CONTENT_TYPE, Registry } from "./registry.ts";

export { PROMETHEUS_CONTENT_TYPE };

/** Seconds: 5 ms … 2 min, for time to first byte, request duration and queue wait. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
];

/** Tokens: powers of 4 from 1 to 1,048,576 (the GenAI semantic conventions' advice). */
export const TOKEN_BUCKETS: readonly number[] = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576];

const BREAKER_STATES: readonly BreakerState[] = ["closed", "open", "half-open"];

/** A usage event, optionally with the API operation (e.g. `chat/completions`) for `gen_ai_operation_name`. */
export type MetricsEvent = UsageEvent & { operation?: string | null };

export interface BackendMetricsState {
  name: string;
  inFlight: number;
  breaker: BreakerState;
  coolingDown: boolean;
  /** Moving average of time to first byte, when measured. */
  ttfbMs?: number | null;
}

export interface MetricsState {
  backends: readonly BackendMetricsState[];
  queue: Pick<SchedulerStats, "waiting" | "levels">;
  /** Shared state between replicas, when configured: reachable now or not. */
  sharedState?: Pick<SharedStateStatus, "reachable" | "backends">;
}

export interface GatewayMetricsOptions {
  /** Label combinations kept per metric before folding into `other` (default 10,000). */
  maxSeries?: number;
  /** The `priority` label of a level; default: the level number until a config is adopted. See `priorityNamer`. */
  priorityLabel?: (level: number) => string;
}

/**
 * The part of a config version that decides label values (a `SluiceConfig` is one): the
 * priority level names, and the model names backends declare.
 */
export interface MetricsLabelSource {
  priorities: { levels: Readonly<Record<string, number>> };
  backends: readonly { models: readonly (string | { name: string })[] }[];
}

/**
 * Labels priority levels by their configured name (`priorities.levels`; the first name of a
 * level named twice); any other level is `other`. A client may send any integer priority, so the
 * number itself is never a label value.
 */
export function priorityNamer(levels: Readonly<Record<string, number>>): (level: number) => string {
  const names = new Map<number, string>();
  for (const [name, level] of Object.entries(levels)) if (!names.has(level)) names.set(level, name);
  return (level) => names.get(level) ?? OVERFLOW_LABEL_VALUE;
}

/** The model names some backend declares (not `*`: what a wildcard backend serves is whatever clients send). */
export function declaredModels(backends: MetricsLabelSource["backends"]): Set<string> {
  const names = new Set<string>();
  for (const b of backends) {
    for (const m of b.models) {
      const name = typeof m === "string" ? m : m.name;
      if (name !== "*") names.add(name);
    }
  }
  return names;
}

/** Sums samples whose labels coincide (several levels may share `other`): one sample per label value. */
function summed<T>(items: readonly T[], label: (item: T) => string, value: (item: T) => number): Map<string, number> {
  const out = new Map<string, number>();
  for (const it of items) {
    const l = label(it);
    out.set(l, (out.get(l) ?? 0) + value(it));
  }
  return out;
}

/**
 * `gen_ai.operation.name` for a request operation (the path after `/v1/` or the Azure
 * deployment, or the classifier's API kind); "" (label left out) when unknown.
 */
export function genAiOperationName(operation: string | null | undefined): string {
  if (!operation) return "";
  const op = operation.toLowerCase();
  if (op.startsWith("chat/completions") || op === "chat" || op.startsWith("messages") || op.startsWith("responses")) return "chat";
  if (op.startsWith("completions") || op === "text_completion") return "text_completion";
  if (op.startsWith("embeddings")) return "embeddings";
  if (op === "generate_content") return "generate_content";
  return "";
}

const backendLabel = (b: string | null): string => (b ? b : "none");

/**
 * The gateway's metrics. Label values come from the config, not from clients: `priority` is a
 * configured level name (else `other`), `model` a model name some backend declares (else
 * `other`, including what a `*` backend serves) — once a config version was adopted (`adopt`).
 * Callers and backends are bounded by the registry's series fold, the last line of defence.
 */
export class GatewayMetrics implements UsageSink {
  readonly registry: Registry;
  /** The `priority` label of a level; `adopt` replaces it with each config version's names. The counters stay. */
  priorityLabel: (level: number) => string;
  /** Model names that are label values; undefined until a config is adopted (then every name is, up to the fold). */
  private models: ReadonlySet<string> | undefined;
  /** The state of the scrape being rendered (read by the gauge callbacks). */
  private state: MetricsState | undefined;

  private readonly requests: Counter;
  private readonly attempts: Counter;
  private readonly failovers: Counter;
  private readonly tokens: Counter;
  private readonly ttfb: Histogram;
  private readonly duration: Histogram;
  private readonly queueWait: Histogram;
  private readonly genAiTtft: Histogram;
  private readonly genAiDuration: Histogram;
  private readonly genAiTokens: Histogram;
  private readonly breakerChanges: Counter;

  constructor(options: GatewayMetricsOptions = {}) {
    const r = (this.registry = new Registry({ maxSeries: options.maxSeries }));
    this.priorityLabel = options.priorityLabel ?? String;

    this.requests = r.counter("sluice_requests_total", "Requests answered, by the backend that answered (none: the gateway), status and priority level.", [
      "backend",
      "status",
      "priority",
    ]);
    this.attempts = r.counter("sluice_attempts_total", "Upstream attempts made for all requests.");
    this.failovers = r.counter("sluice_failovers_total", "Attempts beyond a request's first (failovers to another backend).");
    this.attempts.inc(undefined, 0);
    this.failovers.inc(undefined, 0);
    this.tokens = r.counter(
      "sluice_tokens_total",
      "Tokens by caller, model, backend and type (input, output, cached, reasoning); usage_source: provider or estimated.",
      ["caller", "model", "backend", "type", "usage_source"],
      { foldable: ["caller", "model", "backend"] },
    );
    this.ttfb = r.histogram("sluice_time_to_first_byte_seconds", "Time from sending the answering attempt to the backend's response headers (its first byte).", ["backend"], LATENCY_BUCKETS);
    this.duration = r.histogram("sluice_request_duration_seconds", "Time from the request's arrival to the end of its response.", ["backend", "status"], LATENCY_BUCKETS);
    this.queueWait = r.histogram("sluice_queue_wait_seconds", "Time requests waited in the gateway's queue for a backend slot.", ["priority"], LATENCY_BUCKETS);
    this.genAiTtft = r.histogram(
      "gen_ai_server_time_to_first_token_seconds",
      "GenAI semantic conventions: time from sending the answering attempt to the first byte of successful responses.",
      ["gen_ai_request_model"],
      LATENCY_BUCKETS,
    );
    this.genAiDuration = r.histogram(
      "gen_ai_client_operation_duration_seconds",
      "GenAI semantic conventions: duration of GenAI operations (error_type: the status of failed ones).",
      ["gen_ai_request_model", "gen_ai_operation_name", "error_type"],
      LATENCY_BUCKETS,
      { foldable: ["gen_ai_request_model"] },
    );
    this.genAiTokens = r.histogram(
      "gen_ai_client_token_usage",
      "GenAI semantic conventions: tokens per request, by token type (input, output).",
      ["gen_ai_token_type", "gen_ai_request_model"],
      TOKEN_BUCKETS,
      { foldable: ["gen_ai_request_model"] },
    );

    this.breakerChanges = r.counter("sluice_backend_breaker_transitions_total", "Circuit breaker state changes per backend, by the state entered.", ["backend", "state"]);

    r.gauge("sluice_backend_in_flight", "Requests in flight per backend.", ["backend"], (sample) => {
      for (const b of this.state?.backends ?? []) sample([b.name], b.inFlight);
    });
    r.gauge("sluice_backend_breaker_state", "Circuit breaker state per backend: 1 for the current state, 0 for the others.", ["backend", "state"], (sample) => {
      for (const b of this.state?.backends ?? []) {
        for (const s of BREAKER_STATES) sample([b.name, s], b.breaker === s ? 1 : 0);
      }
    });
    r.gauge("sluice_shared_state_up", "1 while the state shared between replicas (Redis) is reachable, 0 while each replica runs on its own; absent without shared state.", [], (sample) => {
      if (this.state?.sharedState) sample([], this.state.sharedState.reachable ? 1 : 0);
    });
    r.gauge("sluice_backend_in_flight_all_replicas", "Requests in flight per backend on every replica together (shared state; as of its last renewal).", ["backend"], (sample) => {
      for (const b of this.state?.sharedState?.backends ?? []) sample([b.backend], b.inFlight);
    });
    r.gauge("sluice_backend_slots_held", "Slots of maxConcurrency this replica holds per backend, when replicas share them.", ["backend"], (sample) => {
      for (const b of this.state?.sharedState?.backends ?? []) sample([b.backend], b.slotsHere);
    });
    r.gauge("sluice_backend_cooling_down", "1 while the backend is in cooldown after a 429/503, else 0.", ["backend"], (sample) => {
      for (const b of this.state?.backends ?? []) sample([b.name], b.coolingDown ? 1 : 0);
    });
    r.gauge("sluice_backend_ttfb_ewma_seconds", "Moving average of time to first byte per backend (what latency routing uses).", ["backend"], (sample) => {
      for (const b of this.state?.backends ?? []) if (b.ttfbMs != null) sample([b.name], b.ttfbMs / 1000);
    });
    const byLevel = (sample: (labels: readonly string[], value: number) => void, value: (l: MetricsState["queue"]["levels"][number]) => number) => {
      for (const [label, v] of summed(this.state?.queue.levels ?? [], (l) => this.priorityLabel(l.level), value)) sample([label], v);
    };
    r.gauge("sluice_queue_depth", "Requests waiting in the gateway's queue, by priority level.", ["priority"], (sample) => byLevel(sample, (l) => l.waiting));
    r.scrapedCounter("sluice_queue_dispatched_total", "Requests the scheduler dispatched to a backend, by priority level.", ["priority"], (sample) =>
      byLevel(sample, (l) => l.dispatched),
    );
    r.scrapedCounter("sluice_queue_waited_seconds_total", "Total time dispatched requests waited in the queue, by priority level.", ["priority"], (sample) =>
      byLevel(sample, (l) => l.waitedMs / 1000),
    );
  }

  /**
   * A config version was adopted: from now on `priority` labels are its level names and `model`
   * labels the model names its backends declare; anything else is `other`. Series already
   * recorded stay.
   */
  adopt(config: MetricsLabelSource): void {
    this.priorityLabel = priorityNamer(config.priorities.levels);
    this.models = declaredModels(config.backends);
  }

  /** The `model` label value of a model name: "" for none (the label is left out), `other` for one not declared. */
  private modelValue(model: string | null): string {
    if (!model) return "";
    return this.models === undefined || this.models.has(model) ? model : OVERFLOW_LABEL_VALUE;
  }

  emit(event: MetricsEvent): void {
    const backend = backendLabel(event.backend);
    const status = String(event.status);
    const priority = this.priorityLabel(event.priority);
    const model = this.modelValue(event.model);

    this.requests.inc([backend, status, priority]);
    if (event.attempts > 0) {
      this.attempts.inc(undefined, event.attempts);
      if (event.attempts > 1) this.failovers.inc(undefined, event.attempts - 1);
    }

    const totalS = event.totalMs / 1000;
    this.duration.observe([backend, status], totalS);
    this.genAiDuration.observe([model, genAiOperationName(event.operation), event.status >= 400 ? status : ""], totalS);
    if (event.ttfbMs != null) {
      this.ttfb.observe([backend], event.ttfbMs / 1000);
      if (event.status < 400) this.genAiTtft.observe([model], event.ttfbMs / 1000);
    }
    // Only requests that went through the scheduler (a 404 or 401 never waited).
    if (event.attempts > 0 || event.queueMs > 0) this.queueWait.observe([priority], event.queueMs / 1000);

    const source = event.usageSource ?? "unknown";
    const caller = event.caller || "unknown";
    const m = model || "unknown";
    if (event.promptTokens != null) {
      this.tokens.inc([caller, m, backend, "input", source], event.promptTokens);
      this.genAiTokens.observe(["input", model], event.promptTokens);
    }
    if (event.completionTokens != null) {
      this.tokens.inc([caller, m, backend, "output", source], event.completionTokens);
      this.genAiTokens.observe(["output", model], event.completionTokens);
    }
    if (event.cachedTokens != null) this.tokens.inc([caller, m, backend, "cached", source], event.cachedTokens);
    if (event.cacheCreationTokens != null) this.tokens.inc([caller, m, backend, "cache_creation", source], event.cacheCreationTokens);
    if (event.reasoningTokens != null) this.tokens.inc([caller, m, backend, "reasoning", source], event.reasoningTokens);
  }

  /** A backend's circuit breaker entered `state`. */
  breakerChanged(backend: string, state: string): void {
    this.breakerChanges.inc([backend, state]);
  }

  /** The whole exposition text (serve with `PROMETHEUS_CONTENT_TYPE`). */
  render(state: MetricsState): string {
    this.state = state;
    try {
      return this.registry.render();
    } finally {
      this.state = undefined;
    }
  }
}
