import type { Classified } from "../classify.ts";
import { errorResponse, retryAfterHeaders, type AttemptRecord } from "../http/errors.ts";
import { downstreamResponseHeaders, GATEWAY_RESPONSE_HEADERS as H } from "../http/headers.ts";
import { ResponseMeter } from "../metering/meter.ts";
import { discardBody } from "../proxy/attempt.ts";
import { exhaustedResponse } from "../proxy/exhaustion.ts";
import { relay, type RelayEnd, type RelayHandle } from "../proxy/relay.ts";
import type { ApiKind } from "../types.ts";
import type { Exchange } from "./exchange.ts";
import type { Executed } from "./execute.ts";

/** The gateway's own answer to a request it does not send on (or no longer can). */
export interface Refusal {
  status: number;
  code: string;
  message: string;
  /** Extra headers (Retry-After, budgets). */
  headers?: Record<string, string>;
  attempts?: AttemptRecord[];
}

/** Statuses that must not carry a body (a Response with one is refused). */
const NULL_BODY = new Set([101, 204, 205, 304]);
/** What the usage event records when the client left before an answer. */
const CLIENT_GONE = 499;

/**
 * The respond step: the only place the gateway's answers are built. Every answer carries the
 * request id, the attempts made and the time queued; one from a backend also names it.
 */
export function gatewayHeaders(ex: Exchange, backend: string | undefined, extra: Record<string, string> | undefined): Record<string, string> {
  const h: Record<string, string> = { ...extra, [H.requestId]: ex.requestId, [H.attempts]: String(ex.attempts), [H.queueMs]: String(Math.round(ex.queueMs)) };
  if (backend) {
    h[H.backend] = backend;
    h[H.affinity] = backend;
  }
  return h;
}

/** A refusal in the error shape of the client's API family. The exchange settles in the pipeline's `finally`. */
export function refuse(ex: Exchange, api: ApiKind, r: Refusal, extra?: Record<string, string>): Response {
  return errorResponse({ api, status: r.status, code: r.code, message: r.message, attempts: r.attempts, headers: { ...gatewayHeaders(ex, undefined, extra), ...r.headers } });
}

/** No backend answered (or the client left): the exhaustion status of CONTRACT §4. */
export function unanswered(ex: Exchange, api: ApiKind, executed: Exclude<Executed, { kind: "answer" }>, extra?: Record<string, string>): Response {
  ex.attempts = executed.attempts.length;
  if (executed.kind === "client-gone") {
    // The attempt the client left during counts too.
    if (ex.backend !== null) ex.attempts++;
    ex.truncated = ex.backend !== null;
    return new Response(null, { status: CLIENT_GONE });
  }
  const d = executed.decision;
  const base = gatewayHeaders(ex, undefined, extra);
  switch (d.kind) {
    case "queue-full":
      return refuse(ex, api, { status: 429, code: "queue_full", message: "the gateway's queue is full; retry later", headers: retryAfterHeaders(d.retryAfterMs) }, extra);
    case "expired":
      return refuse(ex, api, { status: 412, code: "ttl_expired", message: "the request's TTL passed before a backend was free; it was not sent", attempts: executed.attempts }, extra);
    case "cooling":
      return exhaustedResponse(executed.attempts, { reason: "cooling", retryAfterMs: d.retryAfterMs }, base, api);
    case "unavailable":
      return exhaustedResponse(executed.attempts, { reason: d.reason, retryAfterMs: d.retryAfterMs }, base, api);
    case "tried-all":
      return exhaustedResponse(executed.attempts, { reason: "tried-all", retryAfterMs: d.retryAfterMs }, base, api);
  }
}

export interface AnswerOptions {
  cls: Classified;
  /** The gateway added include_usage: the client must not see the extra chunk. */
  stripUsageChunk: boolean;
  extraHeaders: Record<string, string> | undefined;
  /** Relays in flight (the runtime's), for a shutdown to end as broken. */
  streams?: Set<RelayHandle>;
}

/**
 * A backend's answer, passed on: its status and headers (minus hop-by-hop), the body byte for
 * byte through the metering tap. When the body ends, errors or is cancelled, the attempt's lease
 * goes back and the exchange settles — whoever reads the body (the client, or a job's store).
 */
export function answer(ex: Exchange, executed: Extract<Executed, { kind: "answer" }>, o: AnswerOptions): Response {
  const { upstream, backend, ttfbMs } = executed;
  const status = upstream.status;
  ex.backend = backend.name;
  ex.attempts = executed.attempts.length + 1;
  ex.ttfbMs = ttfbMs;
  const stamp = gatewayHeaders(ex, backend.name, o.extraHeaders);
  const headers = downstreamResponseHeaders(upstream.headers);
  if (Array.isArray(headers)) for (const k in stamp) headers.push([k, stamp[k]!]);
  else Object.assign(headers, stamp);
  const init = { status, headers };
  // A 5xx passed through (not in failoverOn) still counts against the backend's health.
  const healthy = status < 500;
  const sse = (upstream.headers.get("content-type") ?? "").includes("text/event-stream");
  // Only answers are metered: an error passed through carries no usage.
  const meter = status < 400 ? new ResponseMeter({ sse, stripUsageChunk: o.stripUsageChunk && sse, promptEstimate: o.cls.cost - o.cls.completionBudget }) : undefined;
  const finish = (how: RelayEnd) => {
    ex.endAttempt(how === "error" || !healthy ? { verdict: "failure" } : { verdict: "success", ttfbMs });
    if (meter) ex.usage = meter.usage();
    ex.truncated = how !== "complete";
    ex.settle(status);
  };
  if (upstream.wholeBody) {
    meter?.whole(upstream.wholeBody);
    finish("complete");
    return new Response(upstream.wholeBody, init);
  }
  if (NULL_BODY.has(status) || (!upstream.body && !executed.body)) {
    if (executed.body) executed.body.reader.cancel().catch(() => undefined);
    else discardBody(upstream);
    finish("complete");
    return new Response(null, init);
  }
  ex.relaying = true;
  const source = executed.body?.reader ?? upstream.body!;
  return new Response(relay(source, { sse, api: o.cls.api, backend: backend.name, tap: meter, idleMs: backend.idleTimeoutMs, first: executed.body?.first, active: o.streams, onEnd: finish }), init);
}
