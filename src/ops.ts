import type { Hono } from "hono";
import { PROMETHEUS_CONTENT_TYPE, type GatewayMetrics } from "./metrics/gateway-metrics.ts";
import type { Scheduler } from "./scheduling/port.ts";

export interface OpsContext {
  scheduler: Scheduler;
  metrics: GatewayMetrics;
  configStatus?: () => unknown;
}

/**
 * The gateway's own endpoints: the probes SimpleL7Proxy users expect (`/liveness`, `/startup`,
 * `/readiness`), `/_gateway/health` and `/metrics`. Backend state comes from the scheduler's
 * store (in-process, or the Durable Object on Workers).
 */
export function mountOps(app: Hono, ctx: OpsContext): void {
  const { scheduler, metrics } = ctx;
  app.get("/liveness", (c) => c.text("ok"));
  app.get("/startup", (c) => c.text("ok"));
  app.get("/readiness", async (c) => {
    const { backends } = await scheduler.stats();
    const usable = backends.some((b) => b.breaker !== "open");
    return c.text(usable ? "ready" : "no usable backend", usable ? 200 : 503);
  });
  app.get("/_gateway/health", async (c) => {
    const { backends, ...queue } = await scheduler.stats();
    return c.json({ status: "ok", queue, backends, ...(ctx.configStatus ? { config: ctx.configStatus() } : {}) });
  });
  app.get("/metrics", async (c) => {
    const queue = await scheduler.stats();
    const backends = queue.backends.map((b) => ({ name: b.name, inFlight: b.inFlight, breaker: b.breaker, coolingDown: b.coolingDownMs > 0, ttfbMs: b.ttfbMs }));
    return c.body(metrics.render({ backends, queue }), 200, { "content-type": PROMETHEUS_CONTENT_TYPE });
  });
  app.get("/_gateway/metrics", (c) => c.redirect("/metrics", 308));
}
