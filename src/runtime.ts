import type { SluiceConfig } from "./config/schema.ts";
import { InProcessRateLimiter, type RateLimiter } from "./governance/limits.ts";
import type { JwtVerifier } from "./governance/identity.ts";
import { createJwtVerifier } from "./governance/jwt.ts";
import { GatewayMetrics } from "./metrics/gateway-metrics.ts";
import { resolvePriority } from "./priority.ts";
import type { JobService } from "./jobs/service.ts";
import type { RelayHandle } from "./proxy/relay.ts";
import type { BackendPool } from "./routing/pool.ts";
import { InProcessScheduler, type SchedulerOptions } from "./scheduling/in-process.ts";
import type { SlotBroker } from "./scheduling/broker.ts";
import type { Scheduler } from "./scheduling/port.ts";
import { InProcessBackendStore, logBreakerChange, type BackendBreakerChange, type BackendStateStore } from "./state/backend-state.ts";

/**
 * What outlives config versions in one process (or isolate): the backends' live state, the
 * queue, the budgets, the metrics counters and the JWKS caches. Every gateway a reload builds is
 * handed the same runtime, so a reload never resets a cooldown, an open breaker or a counter,
 * and never lets a backend see more than its `maxConcurrency`.
 */
export interface GatewayRuntime {
  readonly store: BackendStateStore;
  /** The queue; the in-process one is told of each new version's backends (`adopt`). */
  readonly scheduler: Scheduler;
  readonly limiter: RateLimiter;
  readonly metrics: GatewayMetrics;
  /** A new version's backends and settings, before it serves. */
  adopt(config: SluiceConfig, pool: BackendPool): void;
  /** Streams being relayed, by every version: a shutdown ends them with the SSE error event before it closes connections. */
  readonly streams: Set<RelayHandle>;
  /** The async handoff, when the adapter has a job store. */
  readonly jobs?: JobService;
  /** The JWT verifier for these settings: the same one (and its key cache) while they do not change. */
  jwtVerifier(jwt: NonNullable<SluiceConfig["auth"]["jwt"]>): JwtVerifier;
}

export interface RuntimeOptions {
  now?: () => number;
  /** Budgets: in-process by default, a Durable Object on Workers. */
  limiter?: RateLimiter;
  /** The queue: in-process by default, a Durable Object on Workers (which then owns backend state too). */
  scheduler?: Scheduler;
  /** The async handoff on the adapter's job store; without it async requests are 501. */
  jobs?: JobService;
  /** Told of each cooldown a backend's answer started here (a shared store passes it to the other replicas). */
  onCooldown?: (backend: string, until: number) => void;
  /** Told of each breaker change, after it is logged and counted (a shared store passes it on). */
  onBreakerChange?: (change: BackendBreakerChange) => void;
  /** Shares the backends' slots between replicas (Redis) for the in-process queue. */
  broker?: SlotBroker;
}

/** The in-process scheduler's settings for a config version. */
export function schedulerOptions(config: SluiceConfig, now: () => number = Date.now): SchedulerOptions {
  const s = config.scheduling;
  const perLevel = new Map<number, number>();
  for (const [name, cap] of Object.entries(s.maxQueuePerLevel)) perLevel.set(resolvePriority(name, config.priorities.levels)!, cap);
  return {
    maxQueue: s.maxQueue,
    maxQueuePerLevel: perLevel,
    reservedShare: s.reservedShare,
    latencyAlpha: config.routing.latencyAlpha,
    queueFullRetryMs: s.queueFullRetryMs,
    now,
  };
}

/** An in-process scheduler over a pool's backends and store (tests, benches; the runtime makes its own). */
export function inProcessScheduler(pool: BackendPool, config: SluiceConfig, now: () => number = Date.now): InProcessScheduler {
  return new InProcessScheduler(pool.store, pool, schedulerOptions(config, now));
}

export function createRuntime(options: RuntimeOptions = {}): GatewayRuntime {
  const now = options.now ?? Date.now;
  const metrics = new GatewayMetrics();
  const store = new InProcessBackendStore(
    (change) => {
      logBreakerChange(change);
      metrics.breakerChanged(change.backend, change.to);
      options.onBreakerChange?.(change);
    },
    options.onCooldown,
  );
  let inProcess: InProcessScheduler | undefined;
  const scheduler = options.scheduler;
  const verifiers = new Map<string, JwtVerifier>();
  return {
    store,
    get scheduler(): Scheduler {
      if (scheduler) return scheduler;
      if (!inProcess) throw new Error("sluice: the runtime has no config version yet (adopt one first)");
      return inProcess;
    },
    limiter: options.limiter ?? new InProcessRateLimiter(now),
    metrics,
    streams: new Set<RelayHandle>(),
    jobs: options.jobs,
    adopt(config, pool) {
      metrics.adopt(config);
      if (scheduler) return;
      if (inProcess) inProcess.usePool(pool, schedulerOptions(config, now));
      else inProcess = new InProcessScheduler(store, pool, schedulerOptions(config, now), options.broker);
    },
    jwtVerifier(jwt) {
      const key = JSON.stringify(jwt);
      let v = verifiers.get(key);
      if (!v) {
        // Settings that changed leave the old verifier unused; keep at most a few.
        if (verifiers.size >= 8) verifiers.clear();
        v = createJwtVerifier(jwt);
        verifiers.set(key, v);
      }
      return v;
    },
  };
}
