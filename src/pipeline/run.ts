import { apiOfPath, BadRequest, classify, isModelListing } from "../classify.ts";
import type { SluiceConfig } from "../config/schema.ts";
import type { Authenticator, Identity } from "../governance/identity.ts";
import { modelAllowed } from "../governance/identity.ts";
import type { RateLimiter } from "../governance/limits.ts";
import { checkHeaderPolicy, upstreamIdentityHeaders } from "../governance/policy.ts";
import { GATEWAY_RESPONSE_HEADERS as H } from "../http/headers.ts";
import type { UsageEvent, UsageSink } from "../metering/events.ts";
import { withStreamUsage } from "../metering/stream-usage.ts";
import type { UpstreamFetch } from "../proxy/attempt.ts";
import type { RelayHandle } from "../proxy/relay.ts";
import type { BackendPool } from "../routing/pool.ts";
import type { Scheduler } from "../scheduling/port.ts";
import { ttlDeadline } from "../scheduling/ttl.ts";
import { asyncPreference } from "../jobs/prefer.ts";
import type { JobRun, JobService } from "../jobs/service.ts";
import type { Classified } from "../classify.ts";
import type { ApiKind, BodyBytes, ClientSignal } from "../types.ts";
import { admit } from "./admit.ts";
import { BodyTooLarge } from "./body.ts";
import { checkPath, stripQueryCredentials } from "./path.ts";
import { Exchange } from "./exchange.ts";
import { execute } from "./execute.ts";
import { plan } from "./plan.ts";
import { answer, gatewayHeaders, refuse, unanswered } from "./respond.ts";

/** Everything the pipeline reads; one per config version (its long-lived parts shared by all versions). */
export interface PipelineContext {
  config: SluiceConfig;
  pool: BackendPool;
  scheduler: Scheduler;
  limiter: RateLimiter;
  upstream: UpstreamFetch;
  sink: UsageSink;
  authenticator: Authenticator;
  now: () => number;
  readBody: (request: Request, env: unknown, limit: number) => Promise<BodyBytes>;
  clientSignal: (request: Request, env: unknown) => ClientSignal | undefined;
  /** The request line as the client sent it, when the runtime has it: URL parsing resolves dot segments, and a runtime may drop headers past its own limit. */
  requestLine: (request: Request, env: unknown) => RequestLine | undefined;
  stripHeaders: ReadonlySet<string>;
  defaultLevel: number;
  /** Streams being relayed (the runtime's set). */
  streams: Set<RelayHandle>;
  /** The async handoff, where the runtime has a job store. */
  jobs?: JobService;
}

const NO_BODY = new Set(["GET", "HEAD"]);
const MAX_HEADERS = 1000;

/** What an adapter knows of the request as it came off the wire. */
export interface RequestLine {
  /** The request target, unparsed. */
  target?: string;
  /** Header fields received. */
  headerCount?: number;
}
/** A client's request id is passed on only when it is a short token of safe characters. */
const SAFE_REQUEST_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

function requestIdOf(headers: Headers): string {
  const given = headers.get(H.requestId);
  return given !== null && SAFE_REQUEST_ID.test(given) ? given : crypto.randomUUID();
}

/**
 * One request, start to end: identify → classify → admit → plan → execute → respond, inside a
 * `finally` that settles the exchange — unless a relayed body took that over, in which case its
 * end settles. A throw anywhere is a 500 with the request id, and still settles: the lease goes
 * back, the budget is released, one usage event goes out.
 */
export async function runExchange(ctx: PipelineContext, request: Request, env: unknown, job?: JobRun): Promise<Response> {
  // The context is what settling needs (sink, scheduler, limiter, clock): no object per request for it.
  const ex = new Exchange(ctx, requestIdOf(request.headers), ctx.now(), ctx.defaultLevel);
  if (job) {
    ex.async = true;
    ex.observer = job.settled;
    ex.onFirstLease = job.started;
  }
  const url = new URL(request.url);
  const api = { kind: apiOfPath(url.pathname) };
  return guarded(ex, api, () => steps(ctx, ex, request, env, url, api, job));
}

/**
 * Runs `work` for the exchange and settles it in a `finally` — unless a relayed body took that
 * over (its end settles) or a job did (the job's own `guarded` run, `settles`, does). A throw is
 * the gateway's error answer.
 */
async function guarded(ex: Exchange, api: { kind: ApiKind }, work: () => Promise<Response>, settles = false): Promise<Response> {
  let status = 500;
  try {
    const response = await work();
    status = response.status;
    return response;
  } catch (err) {
    if (err instanceof BadRequest) {
      status = 400;
      return refuse(ex, api.kind, { status, code: err.code, message: err.message });
    }
    if (err instanceof BodyTooLarge) {
      status = 413;
      // The rest of the body is not read: the connection cannot be reused.
      return refuse(ex, api.kind, { status, code: "body_too_large", message: err.message, headers: { connection: "close" } });
    }
    console.error(`sluice: unhandled error (request ${ex.requestId})`, err);
    return refuse(ex, api.kind, { status: 500, code: "internal_error", message: "the gateway failed to handle this request" });
  } finally {
    if (!ex.relaying && (settles || !ex.handedOff)) ex.settle(status);
  }
}

/** The pipeline's steps; `api.kind` is the API family of the path, until classify knows better. */
async function steps(ctx: PipelineContext, ex: Exchange, request: Request, env: unknown, url: URL, api: { kind: ApiKind }, job: JobRun | undefined): Promise<Response> {
  const { config } = ctx;
  const line = ctx.requestLine(request, env);
  // Past this many headers a runtime starts dropping them silently (Node at 2,000): refuse instead.
  if (line?.headerCount !== undefined && line.headerCount > MAX_HEADERS) {
    return refuse(ex, api.kind, { status: 431, code: "too_many_headers", message: `the request has more than ${MAX_HEADERS} headers` });
  }
  // TRACE would echo the request (its headers included) back; CONNECT would open a tunnel.
  if (request.method === "TRACE" || request.method === "CONNECT") {
    return refuse(ex, api.kind, { status: 405, code: "method_not_allowed", message: `${request.method} is not served`, headers: { allow: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" } });
  }
  checkPath(line?.target ?? url.pathname);
  stripQueryCredentials(url);
  let identity: Identity;
  if (job) {
    // Verified when the job was submitted; its profile is the one of the version in use now.
    identity = job.identity;
    if (identity.profile?.suspended) return refuse(ex, api.kind, { status: 403, code: "caller_suspended", message: "this caller is suspended" });
  } else {
    const who = await ctx.authenticator.identify(request.headers);
    if (!who.ok) return refuse(ex, api.kind, who);
    identity = who.identity;
  }
  ex.caller = identity.caller;
  ex.app = identity.app;
  if (isModelListing(request.method, url.pathname)) return listModels(ctx, ex, identity, url.pathname);

  const wantsAsync = job ? undefined : asyncPreference(request.headers, config.jobs.maxWaitSeconds);
  const body = NO_BODY.has(request.method) ? null : await ctx.readBody(request, env, config.server.maxBodyBytes);
  const cls = classify(url.pathname, url, request.headers, body, config, identity.profile);
  api.kind = cls.api;
  ex.priority = cls.priority;
  ex.model = cls.model ?? null;
  ex.operation = cls.operation ?? null;
  ex.stream = cls.stream;
  const ttlHeader = request.headers.get("s7pttl");
  checkHeaderPolicy(request.headers, config, identity);
  if (!wantsAsync) {
    const deadline = job ? job.deadline : ttlDeadline(ttlHeader, ex.startedAt, config.scheduling.defaultTtlMs);
    return serve(ctx, ex, request, url, body, cls, identity, deadline, job ? job.signal : ctx.clientSignal(request, env));
  }

  // CONTRACT §7: the caller's profile must allow async; the demo's does for everyone.
  if (!identity.profile?.async) return refuse(ex, cls.api, { status: 403, code: "async_not_allowed", message: "this caller may not make async requests (its profile has no \"async\": true)" });
  if (!ctx.jobs) return refuse(ex, cls.api, { status: 501, code: "async_unavailable", message: "async requests need a job store, and this deployment has none" });
  const submission = { identity, request, url, body, requestId: ex.requestId, priority: cls.priority, model: ex.model, deadline: ttlDeadline(ttlHeader, ex.startedAt, config.jobs.defaultTtlMs) };
  if (wantsAsync.waitMs === 0) {
    // Nothing is held yet: the job's run is the exchange that settles, with the usage event.
    const accepted = await ctx.jobs.submit(submission);
    ex.handedOff = accepted.status === 202;
    return accepted;
  }
  // The rest runs here, answering the client or the job; its own `guarded` settles it.
  let settled!: (e: UsageEvent) => void;
  const event = new Promise<UsageEvent>((resolve) => (settled = resolve));
  ex.observer = settled;
  ex.handedOff = true;
  const inner = { kind: cls.api };
  return ctx.jobs.raceHandoff(
    submission,
    wantsAsync.waitMs,
    ctx.clientSignal(request, env),
    (signal) => guarded(ex, inner, () => serve(ctx, ex, request, url, body, cls, identity, submission.deadline, signal), true),
    {
      settled: event,
      handedOff: (yes) => (ex.async = yes),
      started: (then) => {
        if (ex.hasReached) return true;
        ex.onFirstLease = then;
        return false;
      },
    },
  );
}

/** admit → plan → execute → respond, for a classified request. */
async function serve(ctx: PipelineContext, ex: Exchange, request: Request, url: URL, body: BodyBytes | null, cls: Classified, identity: Identity, deadline: number, signal: ClientSignal | undefined): Promise<Response> {
  const { config } = ctx;
  const admitted = await admit(ctx, ex, cls, identity, deadline);
  if ("status" in admitted) return refuse(ex, cls.api, admitted);

  const rewritten = config.metering.addStreamUsage ? withStreamUsage(cls) : undefined;
  const p = plan(ctx.pool, {
    cls,
    eligible: admitted.eligible,
    url,
    body: rewritten?.body ?? body,
    json: rewritten?.json ?? cls.json,
    clientHeaders: request.headers,
    stripHeaders: ctx.stripHeaders,
    addHeaders: upstreamIdentityHeaders(identity, config),
    affinity: config.routing.affinity ? (request.headers.get(H.affinity) ?? undefined) : undefined,
  });
  const executed = await execute(ctx, ex, { method: request.method, cls, plan: p, deadline, signal });
  if (executed.kind !== "answer") return unanswered(ex, cls.api, executed, admitted.budget);
  return answer(ex, executed, { cls, stripUsageChunk: rewritten !== undefined, extraHeaders: admitted.budget, streams: ctx.streams });
}

/**
 * The gateway's own model listings (`/v1/models`, `/openai/models`, `/openai/v1/models`, and
 * `…/models/{id}`): the models its backends declare, filtered by the caller's profile. Never
 * sent to a backend.
 */
function listModels(ctx: PipelineContext, ex: Exchange, identity: Identity, pathname: string): Response {
  ex.operation = "models";
  const allowed = identity.profile?.models;
  const names = new Set<string>();
  for (const b of ctx.pool.backends) for (const n of b.modelNames()) if (modelAllowed(allowed, n)) names.add(n);
  const model = (id: string) => ({ id, object: "model", created: 0, owned_by: "sluice" });
  const headers = { "content-type": "application/json", ...gatewayHeaders(ex, undefined, undefined) };
  const one = /\/models\/(.+)$/.exec(pathname);
  if (one) {
    let id: string;
    try {
      id = decodeURIComponent(one[1]!);
    } catch {
      throw new BadRequest("the model id in the path is not valid percent-encoding", "invalid_path");
    }
    if (!names.has(id)) return refuse(ex, "models", { status: 404, code: "model_not_found", message: `the model "${id}" is not served by this gateway` });
    return new Response(JSON.stringify(model(id)), { status: 200, headers });
  }
  return new Response(JSON.stringify({ object: "list", data: [...names].sort().map(model) }), { status: 200, headers });
}
