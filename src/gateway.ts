import { Hono } from "hono";
import type { SluiceConfig } from "./config/schema.ts";
import { BadRequest, classify, type Classified } from "./classify.ts";
import { errorResponse, retryAfterHeaders } from "./http/errors.ts";
import { GATEWAY_RESPONSE_HEADERS as H } from "./http/headers.ts";
import { gatewayHeaders, proxyRequest, type ProxyContext } from "./proxy/handler.ts";
import { webUpstream, type BodyBytes, type ClientSignal, type UpstreamFetch } from "./proxy/attempt.ts";
import { BackendPool } from "./routing/pool.ts";
import { resolvePriority } from "./priority.ts";
import { InProcessScheduler } from "./scheduling/in-process.ts";
import type { Scheduler } from "./scheduling/port.ts";
import { ttlDeadline } from "./scheduling/ttl.ts";
import { FanOutSink, RequestRecord, type UsageSink } from "./metering/events.ts";
import { GatewayMetrics, PROMETHEUS_CONTENT_TYPE, priorityNamer } from "./metrics/gateway-metrics.ts";
import { budgetHeaders, InProcessRateLimiter, type LimitScope, type RateLimiter } from "./governance/limits.ts";
import { Authenticator, modelAllowed, type Identity } from "./governance/identity.ts";
import { createJwtVerifier } from "./governance/jwt.ts";
import { checkHeaderPolicy, governedPriority, upstreamIdentityHeaders } from "./governance/policy.ts";
import { withStreamUsage } from "./metering/stream-usage.ts";

export interface GatewayOptions {
  config: SluiceConfig;
  /** How backends are called: the global fetch by default, a pooled client on Node. */
  upstream?: UpstreamFetch;
  /** Reads the request body; an adapter may read it more cheaply than Request.arrayBuffer(). */
  readBody?: (request: Request, env: unknown) => Promise<BodyBytes>;
  /** Aborts when the client goes away; an adapter may make it more cheaply than Request.signal. */
  clientSignal?: (request: Request, env: unknown) => ClientSignal | undefined;
  now?: () => number;
  random?: () => number;
  /** Where usage events go; the adapter builds them from `metering.sinks` for its runtime. Default: none. */
  usageSinks?: readonly UsageSink[];
  /** Token and request budgets: in-process by default, a Durable Object on Workers. */
  limiter?: RateLimiter;
  /** The scheduler's backing store: in-process by default, a Durable Object on Workers. */
  scheduler?: (pool: BackendPool, config: SluiceConfig) => Scheduler;
  /** The config version this gateway serves and the last refused reload; shown under `config` by /_gateway/health. */
  configStatus?: () => { version: string; loadedAt: string; lastReloadError: string | null; lastReloadErrorAt?: string | null };
}

/** The in-process scheduler for a config (Node, Azure Functions, tests). */
export function inProcessScheduler(pool: BackendPool, config: SluiceConfig, now: () => number = Date.now): Scheduler {
  const s = config.scheduling;
  const perLevel = new Map<number, number>();
  for (const [name, cap] of Object.entries(s.maxQueuePerLevel)) perLevel.set(resolvePriority(name, config.priorities.levels)!, cap);
  return new InProcessScheduler(pool, {
    maxQueue: s.maxQueue,
    maxQueuePerLevel: perLevel,
    reservedShare: s.reservedShare,
    latencyAlpha: config.routing.latencyAlpha,
    queueFullRetryMs: s.queueFullRetryMs,
    now,
  });
}

export interface Gateway {
  app: Hono;
  fetch: Hono["fetch"];
  pool: BackendPool;
  scheduler: Scheduler;
  config: SluiceConfig;
}

const NO_BODY = new Set(["GET", "HEAD"]);

const readRequestBody = async (request: Request): Promise<BodyBytes> => new Uint8Array(await request.arrayBuffer());

/** The gateway: one Hono app on Web-standard APIs, the same on every runtime. */
export function createGateway(options: GatewayOptions): Gateway {
  const config = options.config;
  const readBody = options.readBody ?? readRequestBody;
  const clientSignal = options.clientSignal ?? ((request: Request) => request.signal);
  const metrics = new GatewayMetrics({ priorityLabel: priorityNamer(config.priorities.levels) });
  const sink = new FanOutSink([metrics, ...(options.usageSinks ?? [])]);
  const defaultLevel = resolvePriority(config.priorities.default, config.priorities.levels)!;
  const pool = new BackendPool(config, options.random);
  const now = options.now ?? Date.now;
  const limiter = options.limiter ?? new InProcessRateLimiter(now);
  const limitScopes = (identity: Identity): LimitScope[] => {
    const spec = identity.profile?.limits ?? config.limits.callers[identity.caller] ?? config.limits.perCaller;
    return spec ? [{ key: `caller:${identity.caller}`, spec }] : [];
  };
  const authenticator = new Authenticator(config, config.auth.jwt ? createJwtVerifier(config.auth.jwt) : undefined);
  const stripHeaders = new Set(config.headerPolicy.strip.map((h) => h.toLowerCase()));
  const scheduler = options.scheduler ? options.scheduler(pool, config) : inProcessScheduler(pool, config, now);
  const ctx: ProxyContext = {
    config,
    pool,
    scheduler,
    upstream: options.upstream ?? webUpstream(),
    now,
  };
  const app = new Hono();

  app.get("/liveness", (c) => c.text("ok"));
  app.get("/startup", (c) => c.text("ok"));
  // Backend state lives with the scheduler (in-process, or the Durable Object on Workers).
  app.get("/readiness", async (c) => {
    const { backends } = await scheduler.stats();
    const usable = backends.some((b) => b.breaker !== "open");
    return c.text(usable ? "ready" : "no usable backend", usable ? 200 : 503);
  });
  app.get("/_gateway/health", async (c) => {
    const { backends, ...queue } = await scheduler.stats();
    return c.json({ status: "ok", queue, backends, ...(options.configStatus ? { config: options.configStatus() } : {}) });
  });
  app.get("/metrics", async (c) => {
    const queue = await scheduler.stats();
    const backends = queue.backends.map((b) => ({ name: b.name, inFlight: b.inFlight, breaker: b.breaker, coolingDown: b.coolingDownMs > 0, ttfbMs: b.ttfbMs }));
    return c.body(metrics.render({ backends, queue }), 200, { "content-type": PROMETHEUS_CONTENT_TYPE });
  });
  app.get("/_gateway/metrics", (c) => c.redirect("/metrics", 308));
  app.get("/v1/models", (c) => {
    const names = [...new Set(pool.backends.flatMap((b) => b.modelNames()))].sort();
    return c.json({ object: "list", data: names.map((id) => ({ id, object: "model", owned_by: "sluice" })) });
  });

  app.all("*", async (c) => {
    const started = now();
    const request = c.req.raw;
    const requestId = request.headers.get(H.requestId) || crypto.randomUUID();
    const headers = gatewayHeaders(requestId, 0, undefined);
    const who = await authenticator.identify(request.headers);
    if (!who.ok) {
      new RequestRecord(sink, started, requestId, "unknown", defaultLevel, null, false).complete(who.status, now());
      return errorResponse({ status: who.status, code: who.code, message: who.message, headers });
    }
    const identity = who.identity;
    const url = new URL(request.url);
    const body = NO_BODY.has(request.method) ? null : await readBody(request, c.env);
    let cls: Classified;
    let deadline: number;
    try {
      cls = classify(url.pathname, url, request.headers, body, config);
      deadline = ttlDeadline(request.headers.get("s7pttl"), started, config.scheduling.defaultTtlMs);
      checkHeaderPolicy(request.headers, config, identity);
    } catch (err) {
      if (!(err instanceof BadRequest)) throw err;
      new RequestRecord(sink, started, requestId, identity.caller, defaultLevel, null, false).complete(400, now());
      return errorResponse({ status: 400, code: err.code, message: err.message, headers });
    }
    cls.priority = governedPriority(cls, identity, config);
    const record = new RequestRecord(sink, started, requestId, identity.caller, cls.priority, cls.model ?? null, cls.stream);
    record.app = identity.app;
    record.operation = cls.operation ?? null;
    /** Answered by the gateway itself, before any backend: the usage event goes out now. */
    const refuse = (status: number, code: string, message: string) => {
      record.complete(status, now());
      return errorResponse({ status, code, message, headers });
    };
    if (!modelAllowed(identity.profile?.models, cls.model)) {
      return refuse(403, "model_not_allowed", `this caller may not use the model "${cls.model ?? ""}"`);
    }
    const { modelKnown, names: eligible } = pool.eligible(cls.model, cls.priority);
    if (!modelKnown) {
      return refuse(404, "model_not_found", cls.model === undefined ? "this request names no model and no backend serves it" : `the model "${cls.model}" is not served by this gateway`);
    }
    if (!eligible.length) return refuse(503, "no_eligible_backend", `no backend serves "${cls.model}" at priority ${cls.priority}`);
    if (deadline <= now()) return refuse(412, "ttl_expired", "the request's TTL had passed when it arrived; it was not sent");
    let extraHeaders: Record<string, string> | undefined;
    const scopes = limitScopes(identity);
    if (scopes.length) {
      const admission = await limiter.reserve(scopes, cls.cost);
      if (!admission.ok) {
        record.complete(429, now());
        return errorResponse({
          status: 429,
          code: "rate_limit_exceeded",
          message: `this request's estimate of ${cls.cost} tokens exceeds the caller's remaining budget; retry after the indicated time`,
          headers: { ...headers, ...budgetHeaders(admission.view), ...retryAfterHeaders(admission.retryAfterMs) },
        });
      }
      const reservation = admission.reservation;
      record.onComplete = (usage) => (usage ? limiter.settle(reservation, usage.totalTokens) : limiter.release(reservation));
      extraHeaders = budgetHeaders(admission.view);
    }
    const rewritten = config.metering.addStreamUsage ? withStreamUsage(cls) : undefined;
    return proxyRequest(ctx, {
      request,
      url,
      requestId,
      cls,
      body: rewritten ?? body,
      eligible,
      deadline,
      signal: clientSignal(request, c.env),
      record,
      stripUsageChunk: rewritten !== undefined,
      extraHeaders,
      caller: identity.caller,
      stripHeaders,
      addHeaders: upstreamIdentityHeaders(identity, config),
    });
  });

  app.onError((err) => {
    console.error("sluice: unhandled error", err);
    return errorResponse({ status: 500, code: "internal_error", message: "the gateway failed to handle this request" });
  });

  return { app, fetch: app.fetch, pool, scheduler, config };
}
