import type { Context, Hono, Next } from "hono";
import type { Authenticator } from "./governance/identity.ts";
import { PROMETHEUS_CONTENT_TYPE, type GatewayMetrics } from "./metrics/gateway-metrics.ts";
import type { Scheduler } from "./scheduling/port.ts";

export interface OpsContext {
  scheduler: Scheduler;
  metrics: GatewayMetrics;
  authenticator: Authenticator;
  /** Served only on an operator listener (server.operatorPort): the adapter marks its requests. */
  operatorListenerOnly: boolean;
  configStatus?: () => unknown;
  /** The state shared between replicas, when configured (Redis on Node and Azure Functions). */
  sharedState?: () => SharedStateStatus;
}

export interface SharedStateStatus {
  store: string;
  /** Reachable now: when not, each replica runs on its own (degraded, still serving). */
  reachable: boolean;
  /** Why not, when not. */
  error: string | null;
  /** What it shares. */
  shares: string[];
  /** Per backend with a maxConcurrency, across every live replica (as of the last renewal). */
  backends?: { backend: string; maxConcurrency: number; inFlight: number; slotsHeld: number; slotsHere: number; replicas: number }[];
}

/** How an adapter marks a request that came in on the operator listener. */
export const OPERATOR_LISTENER = "sluiceOperatorListener";

/**
 * The gateway's own endpoints: the probes SimpleL7Proxy users expect (`/liveness`, `/startup`,
 * `/readiness`), `/_gateway/health` and `/metrics`. Backend state comes from the scheduler's
 * store (in-process, or the Durable Object on Workers).
 */
export function mountOps(app: Hono, ctx: OpsContext): void {
  const { scheduler, metrics } = ctx;
  // The gateway's own endpoints show callers, backends and config state: operators only.
  const operatorsOnly = async (c: Context, next: Next) => {
    if (ctx.operatorListenerOnly && !(c.env as Record<string, unknown> | undefined)?.[OPERATOR_LISTENER]) return c.notFound();
    const check = await ctx.authenticator.operator(c.req.raw.headers);
    if (!check.ok) return c.json({ error: { message: check.message, type: "sluice_error", code: check.code } }, check.status);
    return next();
  };
  app.use("/_gateway/*", operatorsOnly);
  app.use("/metrics", operatorsOnly);
  app.get("/liveness", (c) => c.text("ok"));
  app.get("/startup", (c) => c.text("ok"));
  app.get("/readiness", async (c) => {
    const { backends } = await scheduler.stats();
    const usable = backends.some((b) => b.breaker !== "open");
    return c.text(usable ? "ready" : "no usable backend", usable ? 200 : 503);
  });
  app.get("/_gateway/health", async (c) => {
    const { backends, ...queue } = await scheduler.stats();
    const shared = ctx.sharedState?.();
    return c.json({
      status: shared && !shared.reachable ? "degraded" : "ok",
      queue,
      backends,
      ...(ctx.configStatus ? { config: ctx.configStatus() } : {}),
      ...(shared ? { sharedState: shared } : {}),
    });
  });
  app.get("/metrics", async (c) => {
    const queue = await scheduler.stats();
    const backends = queue.backends.map((b) => ({ name: b.name, inFlight: b.inFlight, breaker: b.breaker, coolingDown: b.coolingDownMs > 0, ttfbMs: b.ttfbMs }));
    const shared = ctx.sharedState?.();
    return c.body(metrics.render({ backends, queue, ...(shared ? { sharedState: { reachable: shared.reachable, backends: shared.backends } } : {}) }), 200, { "content-type": PROMETHEUS_CONTENT_TYPE });
  });
  app.get("/_gateway/metrics", (c) => c.redirect("/metrics", 308));
}
