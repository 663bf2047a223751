import type { BodyBytes, ClientSignal, HeaderPairs, HeaderSource } from "../types.ts";
import { clampDelay } from "../timers.ts";
import { UpstreamIdle, type BodyReader } from "./idle-watch.ts";

export { UpstreamIdle };

export type { BodyBytes, ClientSignal };

export interface UpstreamRequest {
  method: string;
  headers: HeaderPairs;
  body: BodyBytes | null;
  /** The client's signal: aborting it cancels the upstream request, body included. */
  signal?: ClientSignal;
  /** Time allowed until response headers; a long body is never cut by it. */
  timeoutMs: number;
  /** Longest silence between body bytes; an adapter that reads a small body whole applies it there (rejecting with UpstreamIdle). */
  idleTimeoutMs: number;
}

/** No response headers arrived within the attempt's timeout. */
export class UpstreamTimeout extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no response headers within ${timeoutMs} ms`);
    this.name = "UpstreamTimeout";
  }
}

/** A backend's answer as the core reads it; a fetch Response is one. */
export interface UpstreamResponse {
  readonly status: number;
  readonly headers: HeaderSource;
  readonly body: ReadableStream<Uint8Array> | null;
  /** The body as a reader, when the runtime has a lighter one than a Web stream (Node); used instead of `body`. */
  readonly reader?: BodyReader;
  /** The whole body, when the client already holds it (small, non-streaming answers): no stream needed. */
  readonly wholeBody?: BodyBytes;
}

/**
 * How the core talks to backends: resolves at response headers, rejects with UpstreamTimeout
 * when they do not come in time, with anything else on a connection failure. Each runtime
 * supplies its fastest client (undici on Node, the global fetch on Workers).
 */
export type UpstreamFetch = (url: string, request: UpstreamRequest) => Promise<UpstreamResponse>;

/** Drops an upstream body that will not be passed on (a failover, a retry): its connection is freed. */
export function discardBody(r: UpstreamResponse): void {
  if (r.reader) r.reader.cancel().catch(() => undefined);
  else r.body?.cancel().catch(() => undefined);
}

/** An UpstreamFetch over the Web `fetch`, for runtimes whose fetch is the best client they have. */
export function webUpstream(fetchFn: typeof fetch = (input, init) => fetch(input, init)): UpstreamFetch {
  return async (url, r) => {
    const controller = new AbortController();
    const clientSignal = r.signal;
    if (clientSignal) {
      if (clientSignal.aborted) controller.abort(clientSignal.reason);
      // Not removed after the headers: the client going away must also stop the body.
      else clientSignal.addEventListener("abort", () => controller.abort(clientSignal.reason), { once: true });
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, clampDelay(r.timeoutMs));
    try {
      return await fetchFn(url, { method: r.method, headers: r.headers, body: r.body, signal: controller.signal, redirect: "manual" });
    } catch (err) {
      throw timedOut ? new UpstreamTimeout(r.timeoutMs) : err;
    } finally {
      clearTimeout(timer);
    }
  };
}

export type AttemptOutcome =
  | { kind: "response"; response: UpstreamResponse; ttfbMs: number }
  /** No headers within the attempt's timeout, or (`body`) no body byte within the idle timeout. */
  | { kind: "timeout"; ms: number; waitingFor: "headers" | "body" }
  | { kind: "network"; error: string; ms: number }
  | { kind: "client-gone" };

/** One request to one backend, with its outcome classified for the attempt loop. */
export async function sendAttempt(upstream: UpstreamFetch, url: string, request: UpstreamRequest, now: () => number): Promise<AttemptOutcome> {
  const started = now();
  if (request.signal?.aborted) return { kind: "client-gone" };
  try {
    const response = await upstream(url, request);
    return { kind: "response", response, ttfbMs: now() - started };
  } catch (err) {
    if (err instanceof UpstreamTimeout) return { kind: "timeout", ms: now() - started, waitingFor: "headers" };
    if (err instanceof UpstreamIdle) return { kind: "timeout", ms: now() - started, waitingFor: "body" };
    if (request.signal?.aborted) return { kind: "client-gone" };
    return { kind: "network", error: describe(err), ms: now() - started };
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as Error & { cause?: unknown }).cause;
    const code = (err as Error & { code?: string }).code;
    const detail = cause instanceof Error ? `: ${(cause as Error & { code?: string }).code ?? cause.message}` : code ? ` (${code})` : "";
    return `${err.message}${detail}`;
  }
  return String(err);
}
