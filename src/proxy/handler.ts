import type { SluiceConfig } from "../config/schema.ts";
import type { Classified } from "../classify.ts";
import { downstreamResponseHeaders, GATEWAY_RESPONSE_HEADERS as H, upstreamRequestHeaders } from "../http/headers.ts";
import type { AttemptRecord } from "../http/errors.ts";
import type { Backend } from "../routing/backend.ts";
import type { BackendPool } from "../routing/pool.ts";
import { applyCredentials, upstreamTarget } from "../routing/upstream-request.ts";
import { retryAfterMs } from "../resilience/retry-after.ts";
import { sendAttempt, type BodyBytes, type ClientSignal, type UpstreamFetch, type UpstreamResponse } from "./attempt.ts";
import { exhaustedResponse } from "./exhaustion.ts";
import { relay } from "./relay.ts";

export interface ProxyContext {
  config: SluiceConfig;
  pool: BackendPool;
  upstream: UpstreamFetch;
  now: () => number;
}

export interface ProxyInput {
  request: Request;
  url: URL;
  requestId: string;
  cls: Classified;
  body: BodyBytes | null;
  eligible: readonly Backend[];
  /** Aborts when the client goes away. */
  signal: ClientSignal | undefined;
}

const CLIENT_GONE = 499;
/** Statuses that must not carry a body (a Response with one is refused). */
const NULL_BODY = new Set([101, 204, 205, 304]);

/**
 * Runs the attempt loop for one request: pick a free backend (lowest group first), send,
 * and on a failover outcome move on at once to the next — never sleeping in between.
 */
export async function proxyRequest(ctx: ProxyContext, input: ProxyInput): Promise<Response> {
  const { config, pool, now } = ctx;
  const { request, cls, eligible } = input;
  const res = config.resilience;
  const maxAttempts = res.maxAttempts ?? eligible.length;
  const affinity = config.routing.affinity ? (request.headers.get(H.affinity) ?? undefined) : undefined;
  const baseHeaders = upstreamRequestHeaders(request.headers);
  const tried = new Set<Backend>();
  const attempts: AttemptRecord[] = [];

  while (attempts.length < maxAttempts) {
    const backend = pool.pick(eligible, tried, now(), affinity);
    if (!backend) break;
    tried.add(backend);
    if (!backend.acquire(now())) continue;

    const target = upstreamTarget(backend, cls, input.url, input.body);
    const headers = baseHeaders.slice();
    applyCredentials(backend, headers);
    const outcome = await sendAttempt(
      ctx.upstream,
      target.url,
      { method: request.method, headers, body: target.body, signal: input.signal, timeoutMs: backend.timeoutMs },
      now,
    );

    if (outcome.kind === "client-gone") {
      backend.release();
      backend.breaker.onAbandon();
      return new Response(null, { status: CLIENT_GONE });
    }
    if (outcome.kind === "timeout" || outcome.kind === "network") {
      backend.release();
      backend.breaker.onFailure(now());
      attempts.push(
        outcome.kind === "timeout"
          ? { backend: backend.name, status: 504, error: `timed out after ${outcome.ms} ms waiting for headers`, ms: outcome.ms }
          : { backend: backend.name, status: 502, error: outcome.error, ms: outcome.ms },
      );
      continue;
    }

    const upstream = outcome.response;
    const status = upstream.status;
    if (res.failoverOn.includes(status)) {
      upstream.body?.cancel().catch(() => undefined);
      backend.release();
      const at = now();
      if (res.cooldownOn.includes(status)) backend.coolDown(at + (retryAfterMs(upstream.headers, at) ?? res.defaultCooldownMs));
      // A throttle says nothing about the backend's health; errors and timeouts do.
      if (status === 429) backend.breaker.onAbandon();
      else backend.breaker.onFailure(at);
      attempts.push({ backend: backend.name, status, ms: outcome.ttfbMs });
      continue;
    }

    if (status >= 500) backend.breaker.onFailure(now());
    else {
      backend.breaker.onSuccess();
      backend.recordTtfb(outcome.ttfbMs, config.routing.latencyAlpha);
    }
    return respond(upstream, backend, attempts.length + 1, input.requestId, now);
  }

  return exhaustedResponse(attempts, eligible, now(), gatewayHeaders(input.requestId, attempts.length, undefined));
}

function respond(upstream: UpstreamResponse, backend: Backend, attempts: number, requestId: string, now: () => number): Response {
  const headers = downstreamResponseHeaders(upstream.headers);
  const stamp = gatewayHeaders(requestId, attempts, backend.name);
  if (Array.isArray(headers)) headers.push(...Object.entries(stamp));
  else Object.assign(headers, stamp);
  const init = { status: upstream.status, headers };
  const finish = (failed: boolean) => {
    backend.release();
    if (failed) backend.breaker.onFailure(now());
  };
  if (upstream.wholeBody) {
    finish(false);
    return new Response(upstream.wholeBody, init);
  }
  let body: ReadableStream<Uint8Array> | null = null;
  if (NULL_BODY.has(upstream.status)) {
    upstream.body?.cancel().catch(() => undefined);
    finish(false);
  } else if (upstream.body) {
    const sse = (upstream.headers.get("content-type") ?? "").includes("text/event-stream");
    body = relay(upstream.body, { sse, backend: backend.name, onEnd: (how) => finish(how === "error") });
  } else finish(false);
  return new Response(body, init);
}

/** The headers the gateway puts on every response it sends. */
export function gatewayHeaders(requestId: string, attempts: number, backend: string | undefined): Record<string, string> {
  const h: Record<string, string> = { [H.requestId]: requestId, [H.attempts]: String(attempts), [H.queueMs]: "0" };
  if (backend) {
    h[H.backend] = backend;
    h[H.affinity] = backend;
  }
  return h;
}
