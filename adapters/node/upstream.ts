import type { IncomingHttpHeaders } from "node:http";
import type { Readable } from "node:stream";
import { Agent, type Dispatcher } from "undici";
import type { HeaderSource } from "../../src/http/headers.ts";
import { UpstreamIdle, UpstreamTimeout, type BodyBytes, type ClientSignal, type UpstreamFetch, type UpstreamResponse } from "../../src/proxy/attempt.ts";
import { idleWatch, type BodyReader, type IdleEntry } from "../../src/proxy/idle-watch.ts";
import { clampDelay } from "../../src/timers.ts";

/** Statuses whose responses carry no body. */
const NULL_BODY = new Set([204, 205, 304]);

/** Largest non-streaming answer read whole before it is handed to the core. */
const WHOLE_BODY_MAX = 256 * 1024;

/**
 * undici's body stream read in place by the core's relay: one read per chunk, in paused mode
 * (the socket is read only as fast as the client takes the bytes). Lighter than a Web
 * ReadableStream in between, which would be a second stream layer on every streamed answer.
 */
class NodeBodyReader implements BodyReader {
  private ended = false;
  private failed: Error | undefined;
  private waiting: (() => void) | undefined;

  constructor(private readonly body: Readable) {
    const wake = () => {
      const w = this.waiting;
      this.waiting = undefined;
      w?.();
    };
    body.on("readable", wake);
    body.once("end", () => {
      this.ended = true;
      wake();
    });
    body.once("error", (err) => {
      this.failed = err;
      wake();
    });
    body.once("close", () => {
      this.ended = true;
      wake();
    });
  }

  async read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    for (;;) {
      if (this.failed) throw this.failed;
      const chunk = this.body.read() as Buffer | null;
      if (chunk !== null) return { done: false, value: chunk };
      if (this.ended || this.body.readableEnded) return { done: true, value: undefined };
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  cancel(reason?: unknown): Promise<void> {
    this.ended = true;
    this.body.destroy(reason instanceof Error ? reason : undefined);
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
    return Promise.resolve();
  }
}

/**
 * A Node stream's bytes, whole: one chunk as it is, several joined once. Past `limit` bytes it
 * stops holding them and rejects with `tooLarge()` (what is still sent is read and dropped).
 */
export function readWhole(body: Readable, limit = Number.POSITIVE_INFINITY, tooLarge?: () => Error): Promise<BodyBytes> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    body.on("data", (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) {
        if (chunks.length) chunks.length = 0;
        body.removeAllListeners("end");
        reject(tooLarge ? tooLarge() : new Error(`body over ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    body.once("end", () => resolve((chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length)) as unknown as BodyBytes));
    body.once("error", reject);
  });
}

/**
 * A small answer read whole, but never waited on for longer than `idleMs` between bytes: a
 * backend that sends its headers and then nothing is failed over like a timeout (UpstreamIdle).
 */
function readWholeWithin(body: Readable, idleMs: number): Promise<BodyBytes> {
  return new Promise((resolve, reject) => {
    // The core's idle sweep, not a timer per answer: a deadline moved forward by each chunk.
    const entry: IdleEntry = {
      deadline: Date.now() + idleMs,
      onIdle() {
        body.destroy();
        reject(new UpstreamIdle(idleMs));
      },
    };
    idleWatch.watch(entry, idleMs);
    body.on("data", () => (entry.deadline = Date.now() + idleMs));
    readWhole(body).then(
      (bytes) => {
        idleWatch.unwatch(entry);
        resolve(bytes);
      },
      (err: unknown) => {
        idleWatch.unwatch(entry);
        reject(err);
      },
    );
  });
}

/**
 * The signal undici gets for one attempt: it fires when the client goes away, or when no
 * headers came within the attempt's timeout. A precise timer of our own: undici's own
 * headersTimeout runs on a coarse clock (half-second ticks) and can fire early. Lighter than
 * an AbortController, which costs measurably per request on Node.
 */
class AttemptSignal implements ClientSignal {
  aborted = false;
  reason: unknown = undefined;
  timedOut = false;
  private listener: (() => void) | undefined;
  private readonly timer: ReturnType<typeof setTimeout>;
  private readonly onClientAbort = () => this.abort(this.client?.reason);

  constructor(
    private readonly client: ClientSignal | undefined,
    timeoutMs: number,
  ) {
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.abort(new UpstreamTimeout(timeoutMs));
    }, clampDelay(timeoutMs));
    if (client?.aborted) this.abort(client.reason);
    else client?.addEventListener("abort", this.onClientAbort, { once: true });
  }

  /** Headers arrived: the timeout no longer applies (the client's going away still does). */
  headersArrived(): void {
    clearTimeout(this.timer);
  }

  /** The exchange is over: nothing more to watch. */
  done(): void {
    clearTimeout(this.timer);
    this.client?.removeEventListener("abort", this.onClientAbort);
  }

  addEventListener(_type: "abort", listener: () => void): void {
    this.listener = listener;
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    if (this.listener === listener) this.listener = undefined;
  }

  private abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.listener?.();
  }
}

/** undici's header record (lower-case names) read in place, without building a Headers. */
class RawHeaders implements HeaderSource {
  constructor(private readonly raw: IncomingHttpHeaders) {}

  get(name: string): string | null {
    const v = this.raw[name];
    return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
  }

  forEach(callback: (value: string, name: string) => void): void {
    for (const name in this.raw) {
      const v = this.raw[name];
      if (Array.isArray(v)) for (const one of v) callback(one, name);
      else if (v !== undefined) callback(v, name);
    }
  }
}

/**
 * A small answer that is not an event stream and declares its length arrives in one or two
 * segments anyway; holding it until complete costs no time and spares the stream machinery.
 */
function isSmallWholeBody(headers: IncomingHttpHeaders): boolean {
  const length = Number(headers["content-length"] ?? Number.NaN);
  return length >= 0 && length <= WHOLE_BODY_MAX && !headers["content-type"]?.includes("text/event-stream");
}

/**
 * Upstream client for Node: undici's `request` over one keep-alive pool, Nagle off. undici's
 * own fetch costs several times more per request than `request` (measured: 3.4k vs 21k
 * requests/s at 64 connections on the bench machine).
 */
export function createUpstreamClient(options: { connectionsPerOrigin?: number } = {}): { upstream: UpstreamFetch; close(): Promise<void> } {
  const agent = new Agent({
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
    connections: options.connectionsPerOrigin ?? null,
    // The attempt's timeout (until headers) is the gateway's own; the body has none, so long streams are not cut.
    headersTimeout: 0,
    bodyTimeout: 0,
    connect: { noDelay: true, keepAlive: true },
  });

  const upstream: UpstreamFetch = async (input, r): Promise<UpstreamResponse> => {
    const url = new URL(input);
    const headers: string[] = [];
    for (const [name, value] of r.headers) headers.push(name, value);
    const signal = new AttemptSignal(r.signal, r.timeoutMs);
    let res: Dispatcher.ResponseData;
    try {
      res = await agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method: r.method as Dispatcher.HttpMethod,
        headers,
        body: r.body,
        signal,
        headersTimeout: 0,
      });
    } catch (err) {
      signal.done();
      throw signal.timedOut ? new UpstreamTimeout(r.timeoutMs) : err;
    }
    signal.headersArrived();
    res.body.once("close", () => signal.done());
    const status = res.statusCode;
    const responseHeaders = new RawHeaders(res.headers);
    if (NULL_BODY.has(status) || r.method === "HEAD") {
      res.body.resume();
      return { status, headers: responseHeaders, body: null };
    }
    if (isSmallWholeBody(res.headers)) {
      return { status, headers: responseHeaders, body: null, wholeBody: await readWholeWithin(res.body, r.idleTimeoutMs) };
    }
    return { status, headers: responseHeaders, body: null, reader: new NodeBodyReader(res.body) };
  };
  return { upstream, close: () => agent.close() };
}
