import type { BackendConfig, SluiceConfig } from "../config/schema.ts";
import { backendKind } from "../backends/index.ts";
import type { BackendKind } from "../backends/kind.ts";
import type { CredentialProvider } from "../credentials/port.ts";
import { resolvePriority } from "../priority.ts";
import type { BackendLive, BackendStateStore, Unavailability } from "../state/backend-state.ts";

export type { Unavailability };

/**
 * A backend as one config version defines it. What the gateway learns about it and holds
 * there (breaker, cooldown, leases, latency) is `live`, from the backend-state store, shared
 * by every version that names the same backend.
 */
export class Backend {
  readonly name: string;
  readonly kind: BackendConfig["kind"];
  readonly group: number;
  readonly weight: number;
  readonly timeoutMs: number;
  /** Longest silence between body bytes once headers arrived. */
  readonly idleTimeoutMs: number;
  /** Base URL without a trailing slash. */
  readonly baseUrl: string;
  /** Also receives requests that name no model (paths other than the model APIs). */
  readonly passThrough: boolean;
  readonly live: BackendLive;
  /** URL, body rewrite, headers and retry hints of the backend's kind. */
  readonly protocol: BackendKind;
  private readonly deployments = new Map<string, string>();
  private readonly anyModel: boolean;
  private readonly accepted: Set<number> | undefined;

  constructor(
    readonly config: BackendConfig,
    cfg: SluiceConfig,
    store: BackendStateStore,
    readonly credentials: CredentialProvider,
  ) {
    this.protocol = backendKind(config.kind);
    this.name = config.name;
    this.kind = config.kind;
    this.group = config.group;
    this.weight = config.weight;
    this.timeoutMs = config.timeoutMs ?? cfg.resilience.timeoutMs;
    this.idleTimeoutMs = config.idleTimeoutMs ?? cfg.resilience.idleTimeoutMs;
    this.baseUrl = config.url.replace(/\/+$/, "");
    this.passThrough = config.passThrough;
    this.live = store.attach({ name: config.name, maxConcurrency: config.maxConcurrency ?? Number.POSITIVE_INFINITY, breaker: cfg.resilience.breaker });
    let any = false;
    for (const m of config.models) {
      if (typeof m === "string") {
        if (m === "*") any = true;
        else this.deployments.set(m, m);
      } else this.deployments.set(m.name, m.deployment ?? m.name);
    }
    this.anyModel = any;
    this.accepted = config.priorities ? new Set(config.priorities.map((p) => resolvePriority(p, cfg.priorities.levels)!)) : undefined;
  }

  /** The backend's own name for `model`, or undefined when it does not serve it; a request naming no model goes only to pass-through backends. */
  deploymentFor(model: string | undefined): string | undefined {
    if (model === undefined) return this.passThrough ? "" : undefined;
    return this.deployments.get(model) ?? (this.anyModel ? model : undefined);
  }

  /** Model names this backend declares (for the gateway's model listing). */
  modelNames(): string[] {
    return [...this.deployments.keys()];
  }

  acceptsPriority(level: number): boolean {
    return this.accepted === undefined || this.accepted.has(level);
  }

  unavailable(now: number): Unavailability | undefined {
    return this.live.unavailable(now);
  }

  acquire(now: number): boolean {
    return this.live.acquire(now);
  }
}
