import type { SluiceConfig } from "../config/schema.ts";
import type { Classified } from "../classify.ts";
import { downstreamResponseHeaders, GATEWAY_RESPONSE_HEADERS as H, upstreamRequestHeaders, type HeaderPairs } from "../http/headers.ts";
import { errorResponse, retryAfterHeaders, type AttemptRecord } from "../http/errors.ts";
import type { Backend } from "../routing/backend.ts";
import type { BackendPool } from "../routing/pool.ts";
import { applyCredentials, upstreamTarget } from "../routing/upstream-request.ts";
import { retryAfterMs } from "../resilience/retry-after.ts";
import type { QueuePlace, Scheduler } from "../scheduling/port.ts";
import { sendAttempt, type BodyBytes, type ClientSignal, type UpstreamFetch, type UpstreamResponse } from "./attempt.ts";
import { exhaustedResponse } from "./exhaustion.ts";
import { relay, type RelayEnd } from "./relay.ts";
import { ResponseMeter } from "../metering/meter.ts";
import type { RequestRecord } from "../metering/events.ts";

export interface ProxyContext {
  config: SluiceConfig;
  pool: BackendPool;
  scheduler: Scheduler;
  upstream: UpstreamFetch;
  now: () => number;
}

export interface ProxyInput {
  request: Request;
  url: URL;
  requestId: string;
  cls: Classified;
  body: BodyBytes | null;
  /** Names of the backends serving the model at the request's priority, lowest group first. */
  eligible: readonly string[];
  /** Epoch ms after which the request must not reach a backend. */
  deadline: number;
  /** Aborts when the client goes away. */
  signal: ClientSignal | undefined;
  /** Collects what becomes the request's usage event. */
  record: RequestRecord;
  /** The gateway added `stream_options.include_usage`; the client must not see the extra chunk. */
  stripUsageChunk: boolean;
  /** Headers for every response (the caller's remaining budget). */
  extraHeaders?: Record<string, string>;
  /** The verified caller: the fair-share key. */
  caller: string;
  /** Request headers never sent upstream (header policy). */
  stripHeaders?: ReadonlySet<string>;
  /** Headers added upstream (profile headers, forwarded identity). */
  addHeaders?: HeaderPairs;
}

const CLIENT_GONE = 499;
/** Statuses that must not carry a body (a Response with one is refused). */
const NULL_BODY = new Set([101, 204, 205, 304]);
const POLICY_CYCLE = "x-policycyclecounter";

/**
 * Runs the attempt loop for one request: wait for a slot from the scheduler, send, and on a
 * failover outcome ask at once for a slot on the next backend — never sleeping in between. A
 * 429 with `S7PREQUEUE: true` sends the request back to the queue in its old place until the
 * backend's cooldown ends.
 */
export async function proxyRequest(ctx: ProxyContext, input: ProxyInput): Promise<Response> {
  const { config, pool, scheduler, now } = ctx;
  const { request, cls } = input;
  const res = config.resilience;
  const affinity = config.routing.affinity ? (request.headers.get(H.affinity) ?? undefined) : undefined;
  const baseHeaders = upstreamRequestHeaders(request.headers, input.stripHeaders);
  if (input.addHeaders) baseHeaders.push(...input.addHeaders);
  const attempts: AttemptRecord[] = [];
  let tried: string[] = [];
  let budget = res.maxAttempts ?? input.eligible.length;
  let requeues = 0;
  let queuedMs = 0;
  let place: QueuePlace | undefined;
  let notBefore: number | undefined;
  let policyCycle: string | null = null;
  /** Earliest cooldown end this request's attempts caused: the Retry-After of an all-429 answer. */
  let earliestCooldown = Number.POSITIVE_INFINITY;
  const stamp = (backend?: string) => ({ ...input.extraHeaders, ...gatewayHeaders(input.requestId, attempts.length + (backend ? 1 : 0), backend, queuedMs) });
  const record = input.record;
  /** A response that ends here (no body to relay): the usage event goes out now. */
  const final = (response: Response) => {
    record.attempts = attempts.length;
    record.queueMs = queuedMs;
    record.complete(response.status, now());
    return response;
  };

  while (budget > 0) {
    const decision = await scheduler.acquire(
      { id: input.requestId, priority: cls.priority, caller: input.caller, cost: cls.cost, deadline: input.deadline, eligible: input.eligible, tried, affinity, place, notBefore },
      input.signal,
    );
    if (decision.kind === "cancelled") return final(new Response(null, { status: CLIENT_GONE }));
    if (decision.kind === "queue-full") {
      return final(
        errorResponse({ status: 429, code: "queue_full", message: "the gateway's queue is full; retry later", headers: { ...stamp(), ...retryAfterHeaders(decision.retryAfterMs) } }),
      );
    }
    queuedMs += decision.queuedMs;
    if (decision.kind === "expired") {
      return final(errorResponse({ status: 412, code: "ttl_expired", message: "the request's TTL passed before a backend was free; it was not sent", attempts, headers: stamp() }));
    }
    if (decision.kind !== "granted") {
      return final(exhaustedResponse(attempts, decision.kind === "cooling" ? { reason: "cooling", retryAfterMs: decision.retryAfterMs } : decision, stamp()));
    }
    place = decision.place;
    notBefore = undefined;
    const backend = pool.byName(decision.backend)!;

    const target = upstreamTarget(backend, cls, input.url, input.body);
    const headers = baseHeaders.slice();
    applyCredentials(backend, headers);
    if (backend.kind === "apim") headers.push(["llm_proxy_priority", String(cls.priority)]);
    if (policyCycle !== null) headers.push([POLICY_CYCLE, policyCycle]);
    const outcome = await sendAttempt(
      ctx.upstream,
      target.url,
      { method: request.method, headers, body: target.body, signal: input.signal, timeoutMs: backend.timeoutMs },
      now,
    );

    if (outcome.kind === "client-gone") {
      scheduler.release(backend.name, { verdict: "abandoned" });
      record.backend = backend.name;
      record.truncated = true;
      return final(new Response(null, { status: CLIENT_GONE }));
    }
    if (outcome.kind === "timeout" || outcome.kind === "network") {
      scheduler.release(backend.name, { verdict: "failure" });
      attempts.push(
        outcome.kind === "timeout"
          ? { backend: backend.name, status: 504, error: `timed out after ${outcome.ms} ms waiting for headers`, ms: outcome.ms }
          : { backend: backend.name, status: 502, error: outcome.error, ms: outcome.ms },
      );
      tried.push(backend.name);
      budget--;
      continue;
    }

    const upstream = outcome.response;
    const status = upstream.status;
    if (res.failoverOn.includes(status)) {
      upstream.body?.cancel().catch(() => undefined);
      const at = now();
      const cooldownUntil = res.cooldownOn.includes(status) ? at + (retryAfterMs(upstream.headers, at) ?? res.defaultCooldownMs) : undefined;
      // A throttle says nothing about the backend's health; errors and timeouts do.
      scheduler.release(backend.name, { verdict: status === 429 ? "throttled" : "failure", cooldownUntil });
      if (cooldownUntil !== undefined) earliestCooldown = Math.min(earliestCooldown, cooldownUntil);
      attempts.push({ backend: backend.name, status, ms: outcome.ttfbMs });
      policyCycle = upstream.headers.get(POLICY_CYCLE) ?? policyCycle;
      if (status === 429 && upstream.headers.get("s7prequeue")?.toLowerCase() === "true" && requeues < config.scheduling.maxRequeues) {
        // Back to the queue in its old place, every backend allowed again, not before the cooldown ends.
        requeues++;
        tried = [];
        budget = res.maxAttempts ?? input.eligible.length;
        notBefore = cooldownUntil;
        continue;
      }
      tried.push(backend.name);
      budget--;
      continue;
    }
    record.backend = backend.name;
    record.attempts = attempts.length + 1;
    record.queueMs = queuedMs;
    record.ttfbMs = outcome.ttfbMs;
    return respond(upstream, backend, ctx, stamp(backend.name), outcome.ttfbMs, input);
  }

  const wait = earliestCooldown - now();
  return final(exhaustedResponse(attempts, { reason: "tried-all", retryAfterMs: Number.isFinite(wait) ? Math.max(0, wait) : undefined }, stamp()));
}

function respond(upstream: UpstreamResponse, backend: Backend, ctx: ProxyContext, stamp: Record<string, string>, ttfbMs: number, input: ProxyInput): Response {
  const { scheduler, now } = ctx;
  const { record } = input;
  const status = upstream.status;
  const headers = downstreamResponseHeaders(upstream.headers);
  if (Array.isArray(headers)) headers.push(...Object.entries(stamp));
  else Object.assign(headers, stamp);
  const init = { status, headers };
  // A 5xx passed through (not in failoverOn) still counts against the backend's health.
  const healthy = status < 500;
  const sse = (upstream.headers.get("content-type") ?? "").includes("text/event-stream");
  // Only answers are metered: an error passed through carries no usage.
  const meter = status < 400 ? new ResponseMeter({ sse, stripUsageChunk: input.stripUsageChunk && sse, promptEstimate: input.cls.cost - input.cls.completionBudget }) : undefined;
  const finish = (how: RelayEnd) => {
    scheduler.release(backend.name, how === "error" || !healthy ? { verdict: "failure" } : { verdict: "success", ttfbMs });
    if (meter) record.usage = meter.usage();
    record.truncated = how !== "complete";
    record.complete(status, now());
  };
  if (upstream.wholeBody) {
    meter?.whole(upstream.wholeBody);
    finish("complete");
    return new Response(upstream.wholeBody, init);
  }
  let body: ReadableStream<Uint8Array> | null = null;
  if (NULL_BODY.has(status)) {
    upstream.body?.cancel().catch(() => undefined);
    finish("complete");
  } else if (upstream.body) {
    body = relay(upstream.body, { sse, backend: backend.name, tap: meter, onEnd: finish });
  } else finish("complete");
  return new Response(body, init);
}

/** The headers the gateway puts on every response it sends. */
export function gatewayHeaders(requestId: string, attempts: number, backend: string | undefined, queuedMs = 0): Record<string, string> {
  const h: Record<string, string> = { [H.requestId]: requestId, [H.attempts]: String(attempts), [H.queueMs]: String(Math.round(queuedMs)) };
  if (backend) {
    h[H.backend] = backend;
    h[H.affinity] = backend;
  }
  return h;
}
