import type { BackendConfig, SluiceConfig } from "../config/schema.ts";
import { CircuitBreaker } from "../resilience/breaker.ts";
import { resolvePriority } from "../priority.ts";

export type Unavailability = "cooling" | "busy" | "open";

/** A configured backend plus the live state the gateway keeps about it. */
export class Backend {
  readonly name: string;
  readonly kind: BackendConfig["kind"];
  readonly group: number;
  readonly weight: number;
  readonly timeoutMs: number;
  /** Base URL without a trailing slash. */
  readonly baseUrl: string;
  readonly breaker: CircuitBreaker;
  private readonly deployments = new Map<string, string>();
  private readonly anyModel: boolean;
  private readonly accepted: Set<number> | undefined;
  private readonly maxConcurrency: number;

  inFlight = 0;
  cooldownUntil = 0;
  /** Moving average of time to first byte; undefined until measured. */
  ttfbMs: number | undefined;
  /** Smooth weighted round-robin running weight. */
  wrrCurrent = 0;

  constructor(readonly config: BackendConfig, cfg: SluiceConfig) {
    this.name = config.name;
    this.kind = config.kind;
    this.group = config.group;
    this.weight = config.weight;
    this.timeoutMs = config.timeoutMs ?? cfg.resilience.timeoutMs;
    this.baseUrl = config.url.replace(/\/+$/, "");
    this.maxConcurrency = config.maxConcurrency ?? Number.POSITIVE_INFINITY;
    this.breaker = new CircuitBreaker(cfg.resilience.breaker);
    let any = false;
    for (const m of config.models) {
      if (typeof m === "string") {
        if (m === "*") any = true;
        else this.deployments.set(m, m);
      } else this.deployments.set(m.name, m.deployment ?? m.name);
    }
    this.anyModel = any;
    this.accepted = config.priorities
      ? new Set(config.priorities.map((p) => resolvePriority(p, cfg.priorities.levels)!))
      : undefined;
  }

  /** The backend's own name for `model`, or undefined when it does not serve it. */
  deploymentFor(model: string | undefined): string | undefined {
    if (model === undefined) return this.anyModel || this.deployments.size > 0 ? "" : undefined;
    return this.deployments.get(model) ?? (this.anyModel ? model : undefined);
  }

  /** Model names this backend declares (for GET /v1/models). */
  modelNames(): string[] {
    return [...this.deployments.keys()];
  }

  acceptsPriority(level: number): boolean {
    return this.accepted === undefined || this.accepted.has(level);
  }

  /** Why the backend cannot take a request now, or undefined when it can. */
  unavailable(now: number): Unavailability | undefined {
    if (this.cooldownUntil > now) return "cooling";
    if (!this.breaker.canPass(now)) return "open";
    if (this.inFlight >= this.maxConcurrency) return "busy";
    return undefined;
  }

  /** Takes a concurrency slot (and the half-open probe, if that is the state). */
  acquire(now: number): boolean {
    if (this.unavailable(now) || !this.breaker.tryPass(now)) return false;
    this.inFlight++;
    return true;
  }

  release(): void {
    this.inFlight--;
  }

  coolDown(until: number): void {
    if (until > this.cooldownUntil) this.cooldownUntil = until;
  }

  recordTtfb(ms: number, alpha: number): void {
    this.ttfbMs = this.ttfbMs === undefined ? ms : this.ttfbMs + alpha * (ms - this.ttfbMs);
  }
}
