import type { SluiceConfig } from "../../src/config/schema.ts";
import { ConfigError } from "../../src/config/load.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import { createRuntime, type GatewayRuntime } from "../../src/runtime.ts";
import { errorResponse } from "../../src/http/errors.ts";
import type { ConfigStatus } from "../../src/config/holder.ts";
import { ConfigVersions, KV_PROFILES_KEY, KvReadError, type ConfigEnv } from "./config-source.ts";
import { keptAlive, STALLED_BODY_MS, type WorkerContext } from "./lifetime.ts";
import { DurableObjectRateLimiter, LIMITS_OBJECT, type LimiterNamespace } from "./limiter-client.ts";
import { DurableObjectScheduler, poolKey, type SchedulerNamespace } from "./scheduler-client.ts";
import { workerSinks } from "./sinks.ts";

/** The Durable Object classes wrangler binds as SCHEDULER and LIMITER: exported from the entry module. */
export { SchedulerObject } from "./scheduler-object.ts";
export { LimiterObject } from "./limiter-object.ts";
export type { ConfigKv } from "./config-source.ts";

/**
 * The Worker's bindings: the config (SLUICE_CONFIG, SLUICE_CONFIG_KV, SLUICE_CONFIG_KV_TTL_MS; see
 * config-source.ts), which the SchedulerObject reads the same way, and the Durable Objects.
 */
export interface Env extends ConfigEnv {
  /** The SchedulerObject namespace: when bound, every isolate shares one queue per backend pool. */
  SCHEDULER?: SchedulerNamespace;
  /** The LimiterObject namespace: when bound, every isolate admits against one set of token and request budgets. */
  LIMITER?: LimiterNamespace;
  /** How long (ms) a response body may go untaken by the runtime before its client is presumed gone; default 20000 (see lifetime.ts). */
  SLUICE_CLIENT_STALL_MS?: string;
}

function stalledMs(env: Env): number {
  const n = Number(env.SLUICE_CLIENT_STALL_MS);
  return env.SLUICE_CLIENT_STALL_MS?.trim() && Number.isFinite(n) && n > 0 ? n : STALLED_BODY_MS;
}

/**
 * Per isolate: the gateway for the config documents as they are now (re-read from
 * SLUICE_CONFIG_KV at most every SLUICE_CONFIG_KV_TTL_MS), rebuilt only when they change. An
 * invalid new version is refused and logged once, and the gateway in use keeps serving; with
 * none in use yet, ConfigError is thrown.
 */
const versions = new ConfigVersions<Gateway, Env>(build);

function build(config: SluiceConfig, status: () => ConfigStatus, env: Env): Gateway {
  if (config.profilesSource) {
    console.error(`sluice: profilesSource is followed by the Node gateway; on Workers put that document in SLUICE_CONFIG_KV under the key "${KV_PROFILES_KEY}" (ignored here)`);
  }
  return createGateway({
    config,
    runtime: runtimeFor(config, env),
    usageSinks: workerSinks(config.metering.sinks, env),
    configStatus: status,
  });
}

/**
 * What outlives config versions in this isolate: the queue (its own, or the pool's Durable
 * Object), the budgets, the metrics and the JWKS caches. One per queue: a config naming other
 * backends is another pool's object.
 */
const runtimes = new Map<string, GatewayRuntime>();

function runtimeFor(config: SluiceConfig, env: Env): GatewayRuntime {
  const ns = env.SCHEDULER;
  const key = ns ? poolKey(config) : "isolate";
  let runtime = runtimes.get(key);
  if (runtime) return runtime;
  const id = ns?.idFromName(key);
  const lns = env.LIMITER;
  const lid = lns?.idFromName(LIMITS_OBJECT);
  runtime = createRuntime({
    scheduler: ns ? new DurableObjectScheduler(() => ns.get(id as never), config.scheduling.queueFullRetryMs) : undefined,
    limiter: lns ? new DurableObjectRateLimiter(() => lns.get(lid as never)) : undefined,
  });
  runtimes.set(key, runtime);
  return runtime;
}

/**
 * With SCHEDULER bound, the queue and the backends' state live in the pool's Durable Object,
 * shared by all isolates (the object reads the config as the Worker does); without it, in the
 * isolate (shared by the requests it serves). Likewise, with LIMITER bound the budgets of
 * `limits` live in one Durable Object; without it, each isolate keeps its own.
 *
 * Each request's invocation is kept alive until its exchange has settled (see lifetime.ts): a
 * client that leaves mid-stream still gets its lease released, its reservation settled and its
 * usage event sent.
 */
export default {
  fetch(request: Request, env: Env, ctx: WorkerContext): Promise<Response> {
    return keptAlive(request, ctx, async () => {
      let gateway: Gateway;
      try {
        gateway = await versions.get(env);
      } catch (err) {
        // The details (field names, unset variables) go to the log only, never to a caller.
        if (err instanceof ConfigError) {
          console.error(err.message);
          return errorResponse({ status: 503, code: "invalid_config", message: "the gateway has no valid configuration; its log names the problem" });
        }
        if (!(err instanceof KvReadError)) throw err;
        console.error(`sluice: ${err.message}`);
        return errorResponse({ status: 503, code: "config_unavailable", message: "the gateway could not read its configuration; its log says why" });
      }
      return gateway.fetch(request, env, ctx as never);
    }, stalledMs(env));
  },
};
