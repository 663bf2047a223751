/**
 * The fuzz test's client side: sends a generated request with node:http's options form (so the
 * request target reaches the gateway byte for byte, dot segments and all), reads or abandons
 * the answer, and reads the gateway's NDJSON usage file as it grows.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { request, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import type { FuzzBody, FuzzRequest } from "./arbitraries.ts";

export interface Reply {
  /** Undefined when no response head arrived (aborted first, or the connection failed). */
  status?: number;
  headers?: IncomingHttpHeaders;
  /** The first bytes of the body (for failure messages). */
  bodyStart: string;
  bodyBytes: number;
  /** The client aborted on purpose (the `abort` of the request). */
  aborted: boolean;
  /** A transport error that was not the client's own abort. */
  error?: string;
  /** No answer within the client's hard limit. */
  hung: boolean;
  /** Node's client refused to send the request (a generator bug). */
  unsendable?: string;
  ms: number;
}

/** The body bytes of a generated request. */
export function bodyBytes(body: FuzzBody, maxBodyBytes: number): Buffer | undefined {
  switch (body.kind) {
    case "none":
      return undefined;
    case "json":
      return Buffer.from(JSON.stringify(body.value), "utf8");
    case "text":
      return Buffer.from(body.text, "utf8");
    case "bytes":
      return Buffer.from(body.bytes);
    case "sized": {
      const size = maxBodyBytes + body.over;
      const head = '{"model":"gpt-4o","max_tokens":4,"messages":[{"role":"user","content":"';
      const tail = '"}]}';
      return Buffer.from(head + "x".repeat(Math.max(0, size - head.length - tail.length)) + tail, "utf8");
    }
  }
}

export interface SendOptions {
  port: number;
  requestId: string;
  maxBodyBytes: number;
  /** Give up (and call it a hang) after this long. */
  hardLimitMs: number;
}

/** Sends one generated request and settles when its answer ended, failed or was abandoned. */
export function send(r: FuzzRequest, o: SendOptions): Promise<Reply> {
  const started = Date.now();
  const headers: OutgoingHttpHeaders = {};
  const add = (name: string, value: string) => {
    // Node's client takes one Host only (the last generated one wins).
    if (name.toLowerCase() === "host") return void (headers[name] = value);
    const prev = headers[name];
    headers[name] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [String(prev), value];
  };
  for (const [name, value] of r.headers) add(name, value);
  for (let i = 0; i < r.manyHeaders; i++) add(`x-fz-${i}`, String(i));
  if (r.fault !== null) add("x-sim-fault", "garbage" in r.fault ? r.fault.garbage : JSON.stringify(r.fault));
  headers["x-request-id"] = o.requestId;
  const body = bodyBytes(r.body, o.maxBodyBytes);
  // Named explicitly: for GET, HEAD, DELETE and OPTIONS Node's client would otherwise write the
  // body unframed (neither chunked nor with a length), i.e. as the start of a second request.
  if (body !== undefined) {
    if (r.chunked) headers["transfer-encoding"] = "chunked";
    else headers["content-length"] = String(body.length);
  }

  return new Promise<Reply>((resolve) => {
    const reply: Reply = { bodyStart: "", bodyBytes: 0, aborted: false, hung: false, ms: 0 };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(hard);
      clearTimeout(abortTimer);
      reply.ms = Date.now() - started;
      resolve(reply);
    };
    const abandon = () => {
      reply.aborted = true;
      req.destroy();
      finish();
    };
    let abortTimer: ReturnType<typeof setTimeout> | undefined;
    const hard = setTimeout(() => {
      reply.hung = true;
      req.destroy();
      finish();
    }, o.hardLimitMs);

    let req: ReturnType<typeof request>;
    try {
      req = request({ hostname: "127.0.0.1", port: o.port, path: r.target, method: r.method, headers, agent: false }, onResponse);
    } catch (err) {
      // Node's client refused to put this on the wire: a generator bug, not a gateway answer.
      reply.unsendable = (err as Error).message;
      return finish();
    }
    function onResponse(res: IncomingMessage) {
      reply.status = res.statusCode;
      reply.headers = res.headers;
      if (r.abort === "after-headers") return abandon();
      res.on("data", (chunk: Buffer) => {
        if (reply.bodyStart.length < 400) reply.bodyStart += chunk.toString("utf8", 0, Math.min(chunk.length, 400));
        reply.bodyBytes += chunk.length;
        if (r.abort === "after-first-chunk") abandon();
      });
      res.on("end", finish);
      res.on("error", (err) => {
        if (!done && !reply.aborted) reply.error = `response: ${err.message}`;
        finish();
      });
      res.on("close", finish);
    }
    req.on("error", (err) => {
      if (!done && !reply.aborted) reply.error = `request: ${(err as NodeJS.ErrnoException).code ?? ""} ${err.message}`;
      finish();
    });
    if (typeof r.abort === "object") {
      const ms = r.abort.afterMs;
      // Counted from the end of the upload, so the gateway has the request by then.
      req.once("finish", () => (abortTimer = setTimeout(abandon, ms)));
    }
    if (body === undefined) req.end();
    else if (r.chunked) {
      const half = Math.floor(body.length / 2);
      req.write(body.subarray(0, half));
      req.end(body.subarray(half));
    } else req.end(body);
  });
}

/** A GET that answers JSON (the gateway's health), over its own connection. */
export function getJson<T>(port: number, path: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const req = request({ hostname: "127.0.0.1", port, path, method: "GET", agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => {
        try {
          resolve(JSON.parse(text) as T);
        } catch (err) {
          reject(new Error(`GET ${path}: ${res.statusCode} ${text.slice(0, 200)} (${(err as Error).message})`));
        }
      });
    });
    req.on("error", reject);
    req.setTimeout(5_000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.end();
  });
}

export interface LoggedEvent {
  requestId: string;
  status: number;
  [key: string]: unknown;
}

/** The usage events of an NDJSON file, read incrementally as the gateway appends. */
export class UsageLog {
  private offset = 0;
  private partial = "";
  private readonly byId = new Map<string, LoggedEvent[]>();

  constructor(private readonly path: string) {}

  /** Reads whatever was appended since the last call. */
  refresh(): void {
    let fd: number;
    try {
      fd = openSync(this.path, "r");
    } catch {
      return; // not written yet
    }
    try {
      const buf = Buffer.alloc(1 << 16);
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, this.offset);
        if (n === 0) break;
        this.offset += n;
        this.partial += buf.toString("utf8", 0, n);
      }
    } finally {
      closeSync(fd);
    }
    const lines = this.partial.split("\n");
    this.partial = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.trim()) continue;
      const e = JSON.parse(line) as LoggedEvent;
      const list = this.byId.get(e.requestId);
      if (list) list.push(e);
      else this.byId.set(e.requestId, [e]);
    }
  }

  events(requestId: string): LoggedEvent[] {
    return this.byId.get(requestId) ?? [];
  }

  /** Every request id seen so far with its event count. */
  counts(): Map<string, number> {
    return new Map([...this.byId].map(([id, list]) => [id, list.length]));
  }
}
