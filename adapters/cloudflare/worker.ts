import { ConfigError } from "../../src/config/load.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import { errorResponse } from "../../src/http/errors.ts";
import { DurableObjectRateLimiter, LIMITS_OBJECT, type LimiterNamespace } from "./limiter-client.ts";
import { DurableObjectScheduler, poolKey, type SchedulerNamespace } from "./scheduler-client.ts";
import { configFromEnv } from "./scheduler-object.ts";
import { workerSinks } from "./sinks.ts";

/** The Durable Object classes wrangler binds as SCHEDULER and LIMITER: exported from the entry module. */
export { SchedulerObject } from "./scheduler-object.ts";
export { LimiterObject } from "./limiter-object.ts";

export interface Env {
  /** The config JSON (a var, or a secret holding it); other string bindings feed ${ENV} interpolation. */
  SLUICE_CONFIG?: string;
  /** The SchedulerObject namespace: when bound, every isolate shares one queue per backend pool. */
  SCHEDULER?: SchedulerNamespace;
  /** The LimiterObject namespace: when bound, every isolate admits against one set of token and request budgets. */
  LIMITER?: LimiterNamespace;
  [binding: string]: unknown;
}

let current: { source: string; gateway: Gateway } | undefined;

/**
 * One gateway per isolate, rebuilt only when the config binding changes. With SCHEDULER bound,
 * the queue and the backends' state live in the pool's Durable Object, shared by all isolates;
 * without it, in the isolate (shared by the requests it serves). Likewise, with LIMITER bound
 * the budgets of `limits` live in one Durable Object; without it, each isolate keeps its own.
 */
function gatewayFor(env: Env): Gateway {
  const source = env.SLUICE_CONFIG ?? "";
  if (current?.source !== source) {
    const config = configFromEnv(env);
    const ns = env.SCHEDULER;
    const id = ns?.idFromName(poolKey(config));
    const scheduler = ns ? () => new DurableObjectScheduler(() => ns.get(id as never), config.scheduling.queueFullRetryMs) : undefined;
    const lns = env.LIMITER;
    const lid = lns?.idFromName(LIMITS_OBJECT);
    const limiter = lns ? new DurableObjectRateLimiter(() => lns.get(lid as never)) : undefined;
    current = { source, gateway: createGateway({ config, scheduler, limiter, usageSinks: workerSinks(config.metering.sinks, env) }) };
  }
  return current.gateway;
}

export default {
  fetch(request: Request, env: Env, ctx: unknown): Response | Promise<Response> {
    let gateway: Gateway;
    try {
      gateway = gatewayFor(env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      console.error(err.message);
      return errorResponse({ status: 503, code: "invalid_config", message: err.message });
    }
    return gateway.fetch(request, env, ctx as never);
  },
};
