import { Hono } from "hono";
import type { SluiceConfig } from "./config/schema.ts";
import type { CredentialsFactory } from "./credentials/from-config.ts";
import { Authenticator } from "./governance/identity.ts";
import type { RateLimiter } from "./governance/limits.ts";
import { FanOutSink, type UsageSink } from "./metering/events.ts";
import { mountJobs } from "./jobs/routes.ts";
import { mountOps, type SharedStateStatus } from "./ops.ts";
import { readBodyWithin } from "./pipeline/body.ts";
import { runExchange, type PipelineContext, type RequestLine } from "./pipeline/run.ts";
import { resolvePriority } from "./priority.ts";
import { webUpstream, type UpstreamFetch } from "./proxy/attempt.ts";
import { BackendPool } from "./routing/pool.ts";
import { createRuntime, type GatewayRuntime } from "./runtime.ts";
import type { Scheduler } from "./scheduling/port.ts";
import type { BodyBytes, ClientSignal } from "./types.ts";

export { BodyTooLarge } from "./pipeline/body.ts";

export interface GatewayOptions {
  config: SluiceConfig;
  /**
   * What outlives this config version (backend state, queue, budgets, metrics, JWKS caches).
   * A reload passes the runtime of the version it replaces; default: a new one.
   */
  runtime?: GatewayRuntime;
  /** How backends are called: the global fetch by default, a pooled client on Node. */
  upstream?: UpstreamFetch;
  /** Reads the request body, never holding more than `limit` bytes (else throws BodyTooLarge); an adapter may read it more cheaply than the Web stream. */
  readBody?: (request: Request, env: unknown, limit: number) => Promise<BodyBytes>;
  /** Aborts when the client goes away; an adapter may make it more cheaply than Request.signal. */
  clientSignal?: (request: Request, env: unknown) => ClientSignal | undefined;
  /** The request line as the client sent it (Node: the raw target and header count), to refuse dot segments URL parsing would resolve and headers a runtime would drop. */
  requestLine?: (request: Request, env: unknown) => RequestLine | undefined;
  now?: () => number;
  random?: () => number;
  /** Where usage events go; the adapter builds them from `metering.sinks` for its runtime. Default: none. */
  usageSinks?: readonly UsageSink[];
  /** Budgets, when no runtime is given: in-process by default. */
  limiter?: RateLimiter;
  /** Credentials per backend: from the config by default (a runtime may add managed identity). */
  credentials?: CredentialsFactory;
  /** The runtime runs an operator listener (Node, `server.operatorPort`): the gateway's own endpoints are served only there. */
  operatorListener?: boolean;
  /** The config version this gateway serves and the last refused reload; shown under `config` by /_gateway/health. */
  configStatus?: () => { version: string; loadedAt: string; lastReloadError: string | null; lastReloadErrorAt?: string | null };
  /** The state shared between replicas, when the adapter has one: shown by /_gateway/health and /metrics. */
  sharedState?: () => SharedStateStatus;
}

export interface Gateway {
  app: Hono;
  fetch: Hono["fetch"];
  pool: BackendPool;
  scheduler: Scheduler;
  config: SluiceConfig;
  runtime: GatewayRuntime;
}

/** The gateway for one config version: wires the pipeline and the gateway's own endpoints into one Hono app, the same on every runtime. */
export function createGateway(options: GatewayOptions): Gateway {
  const config = options.config;
  const now = options.now ?? Date.now;
  const runtime = options.runtime ?? createRuntime({ now, limiter: options.limiter });
  const pool = new BackendPool(config, runtime.store, options.random, options.credentials);
  runtime.adopt(config, pool);
  const scheduler = runtime.scheduler;
  const ctx: PipelineContext = {
    config,
    pool,
    scheduler,
    limiter: runtime.limiter,
    upstream: options.upstream ?? webUpstream(),
    sink: new FanOutSink([runtime.metrics, ...(options.usageSinks ?? [])]),
    authenticator: new Authenticator(config, config.auth.jwt ? runtime.jwtVerifier(config.auth.jwt) : undefined),
    now,
    readBody: options.readBody ?? ((request, _env, limit) => readBodyWithin(request, limit)),
    clientSignal: options.clientSignal ?? ((request: Request) => request.signal),
    requestLine: options.requestLine ?? (() => undefined),
    stripHeaders: new Set(config.headerPolicy.strip.map((h) => h.toLowerCase())),
    defaultLevel: resolvePriority(config.priorities.default, config.priorities.levels)!,
    streams: runtime.streams,
    jobs: runtime.jobs,
  };
  // Jobs started from now on run on this version's pipeline.
  runtime.jobs?.use(config, (request, run) => runExchange(ctx, request, undefined, run));
  const app = new Hono();
  mountJobs(app, runtime.jobs, ctx.authenticator);
  mountOps(app, {
    scheduler,
    metrics: runtime.metrics,
    authenticator: ctx.authenticator,
    operatorListenerOnly: options.operatorListener === true,
    configStatus: options.configStatus,
    sharedState: options.sharedState,
  });
  app.all("*", (c) => runExchange(ctx, c.req.raw, c.env));
  // The pipeline answers its own errors; this is for the ops endpoints.
  app.onError((err) => {
    console.error("sluice: unhandled error", err);
    return new Response(JSON.stringify({ error: { message: "the gateway failed to handle this request", type: "sluice_error", code: "internal_error" } }), {
      status: 500,
      headers: { "content-type": "application/json" },
    });
  });
  return { app, fetch: app.fetch, pool, scheduler, config, runtime };
}
