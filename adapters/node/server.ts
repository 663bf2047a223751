import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Duplex } from "node:stream";
import { getRequestListener } from "@hono/node-server";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import type { RequestLine } from "../../src/pipeline/run.ts";
import { BodyTooLarge, checkDeclaredLength, readBodyWithin } from "../../src/pipeline/body.ts";
import { OPERATOR_LISTENER } from "../../src/ops.ts";
import { unparsedRequestEvent } from "../../src/pipeline/exchange.ts";
import { resolvePriority } from "../../src/priority.ts";
import { interruptAll } from "../../src/proxy/relay.ts";
import { createRuntime } from "../../src/runtime.ts";
import type { BodyBytes, ClientSignal } from "../../src/types.ts";
import { configVersion, GatewayHolder } from "./reload.ts";
import { openNodeJobs } from "./jobs.ts";
import { nodeCredentials } from "./managed-identity.ts";
import { openSharedState } from "./shared-state.ts";
import { nodeSinks } from "./sinks.ts";
import { createUpstreamClient, readWhole } from "./upstream.ts";

export interface RunningGateway {
  url: string;
  port: number;
  /** The operator listener (server.operatorPort), when there is one. */
  operatorUrl?: string;
  /** The gateway new requests go to (a config reload replaces it). */
  readonly gateway: Gateway;
  /** Holds the current gateway; config sources offer new versions to it. */
  holder: GatewayHolder;
  server: Server;
  /** Stops accepting, lets in-flight requests finish within `graceMs`, then closes the rest. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Reads the body straight from the socket stream: going through the Request that
 * @hono/node-server builds costs most of a request's time (measured: 29k → 6.4k requests/s
 * for an app that only reads the body).
 */
export function readIncomingBody(request: Request, env: unknown, limit: number): Promise<BodyBytes> {
  const incoming = (env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (!incoming || incoming.readableEnded || incoming.readableDidRead) return readBodyWithin(request, limit);
  checkDeclaredLength(request.headers, limit);
  return readWhole(incoming, limit, () => new BodyTooLarge(limit));
}

/**
 * "The client went away", from the response's close before it finished. An AbortSignal per
 * request costs measurably on Node, and Request.signal would make @hono/node-server build a
 * full undici Request (body stream included), so this is a minimal signal that both the core
 * and undici accept.
 */
class ConnectionSignal implements ClientSignal {
  aborted = false;
  reason: unknown = undefined;
  private listeners: (() => void)[] = [];

  constructor(outgoing: ServerResponse) {
    outgoing.once("close", () => {
      if (outgoing.writableFinished) return;
      this.aborted = true;
      this.reason = new Error("the client closed the connection");
      for (const l of this.listeners.splice(0)) l();
    });
  }

  addEventListener(_type: "abort", listener: () => void): void {
    this.listeners.push(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    const i = this.listeners.indexOf(listener);
    if (i >= 0) this.listeners.splice(i, 1);
  }
}

/** The request target exactly as the client sent it, and how many header fields came. */
export function requestLine(_request: Request, env: unknown): RequestLine | undefined {
  const incoming = (env as { incoming?: IncomingMessage } | undefined)?.incoming;
  return incoming ? { target: incoming.url, headerCount: incoming.rawHeaders.length / 2 } : undefined;
}

export function socketCloseSignal(request: Request, env: unknown): ClientSignal | undefined {
  const outgoing = (env as { outgoing?: ServerResponse } | undefined)?.outgoing;
  return outgoing ? new ConnectionSignal(outgoing) : request.signal;
}

export interface GatewayServerOptions {
  /** Instead of server.host / server.port (tests: 127.0.0.1 and 0). */
  host?: string;
  port?: number;
  /** The version of `config` shown by /_gateway/health (default: a hash of the parsed config). */
  version?: string;
  /** Where `config` came from, for reload messages. */
  origin?: string;
  /** Instead of server.operatorPort (tests: 0). */
  operatorPort?: number;
  /** The job directory when the config names no `jobs.store` (the `sluice` command: .sluice/jobs); without either, async requests are 501. */
  jobsDirectory?: string;
}

/** A refused request's answer and its usage event: the gateway's error shape, with a request id. */
type Refuse = (requestId: string | undefined, status: number, code: string, message: string) => { requestId: string; head: string; body: string };

function refusal(refused: (requestId: string, status: number) => void): Refuse {
  return (given, status, code, message) => {
    const requestId = given !== undefined && SAFE_ID.test(given) ? given : crypto.randomUUID();
    const body = JSON.stringify({ error: { message, type: "sluice_error", code } });
    refused(requestId, status);
    return { requestId, body, head: `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${requestId}\r\nconnection: close` };
  };
}

/** host[:port], or [IPv6][:port]: what a URL can be built from. */
const HOST = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$/;

function validHost(host: string): boolean {
  const m = HOST.exec(host);
  return m !== null && (m[1] === undefined || Number(m[1]) <= 65_535);
}

/** The request ids the core passes on (src/pipeline/run.ts), for answers given before it runs. */
const SAFE_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

/**
 * What a client gets when Node's HTTP parser refuses its request before the gateway sees it (a
 * character not allowed in the target, a malformed header): the gateway's own error, with the
 * client's request id when it can be read, and a usage event like every other answer.
 */
function answerUnparsed(err: NodeJS.ErrnoException, socket: Duplex, refuse: Refuse): void {
  if (!socket.writable || err.code === "ECONNRESET") {
    socket.destroy();
    return;
  }
  const raw = (err as { rawPacket?: Buffer }).rawPacket?.toString("latin1") ?? "";
  const given = /\r\nx-request-id:[ \t]*([^\r\n]*?)[ \t]*\r\n/i.exec(raw)?.[1];
  const tooLarge = err.code === "HPE_HEADER_OVERFLOW";
  const r = refuse(given, tooLarge ? 431 : 400, tooLarge ? "headers_too_large" : "malformed_request", tooLarge ? "the request's headers are too large" : "the request could not be parsed as HTTP");
  socket.end(`HTTP/1.1 ${tooLarge ? "431 Request Header Fields Too Large" : "400 Bad Request"}\r\n${r.head}\r\n\r\n${r.body}`);
}

/**
 * Requests @hono/node-server would refuse with a bare 400 (a backslash in the target, no Host
 * header) get the gateway's own 400 instead; the rest go to the app.
 */
function guarded(listener: (req: IncomingMessage, res: ServerResponse) => void, refuse: Refuse) {
  return (req: IncomingMessage, res: ServerResponse) => {
    const host = req.headers.host;
    const problem = req.url?.includes("\\")
      ? "the request target holds a backslash"
      : host === undefined
        ? "the request has no Host header"
        : !validHost(host)
          ? "the Host header is not a host name with an optional port"
          : !req.url?.startsWith("/")
            ? "the request target is not a path (absolute-form and * are not served)"
            : undefined;
    if (!problem) return listener(req, res);
    const id = req.headers["x-request-id"];
    const r = refuse(typeof id === "string" ? id : undefined, 400, "invalid_path", problem);
    res.writeHead(400, { "content-type": "application/json", "x-request-id": r.requestId, connection: "close" });
    res.end(r.body);
  };
}

/** One listener: @hono/node-server over node:http, Nagle off, every header field counted. */
async function listen(fetch: Gateway["fetch"], hostname: string, port: number, refused: (requestId: string, status: number) => void): Promise<Server> {
  const refuse = refusal(refused);
  // Headers up to 128 KiB reach the gateway, so an oversized token gets its 401 rather than a bare 431.
  const server = createServer(
    { noDelay: true, keepAlive: true, keepAliveTimeout: 65_000, maxHeaderSize: 128 * 1024 },
    guarded(getRequestListener(fetch, { hostname }), refuse),
  );
  server.listen(port, hostname);
  server.on("connection", (socket: Socket) => socket.setNoDelay(true));
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => answerUnparsed(err, socket, refuse));
  // Node keeps only the first 1,000-odd header fields and drops the rest silently; with no count
  // limit here (maxHeaderSize still bounds the bytes) the gateway sees them all and answers 431.
  server.maxHeadersCount = 0;
  await new Promise<void>((resolve, reject) => {
    if (server.listening) return resolve();
    server.once("listening", resolve);
    server.once("error", reject);
  });
  return server;
}

/**
 * The gateway on Node: @hono/node-server over node:http, Nagle off on every socket. Each
 * request goes to the gateway current at its arrival (see GatewayHolder); every config version
 * shares the upstream connection pool, the usage sinks and one runtime: backend state (leases,
 * cooldowns, breakers, latency), the queue, the budgets, the metrics and the JWKS caches.
 */
export async function startGatewayServer(config: SluiceConfig, overrides: GatewayServerOptions = {}): Promise<RunningGateway> {
  const client = createUpstreamClient();
  const usage = nodeSinks(config.metering.sinks);
  const jobs = await openNodeJobs(config, overrides.jobsDirectory);
  // Budgets, cooldowns, breakers, slots and queue order shared between replicas through Redis (state.redis), else in-process; read once at start.
  const shared = await openSharedState(config, () => runtime);
  const runtime = createRuntime({ jobs: jobs?.service, ...shared.runtimeOptions });
  // Read once at start, like server.port: a reload that changes it says it needs a restart.
  const operatorPort = overrides.operatorPort ?? config.server.operatorPort;
  // Backend credentials: the config's keys, and managed-identity tokens cached across config versions.
  const credentials = nodeCredentials();
  const holder = new GatewayHolder(
    (cfg, configStatus) => {
      const gateway = createGateway({ config: cfg, runtime, upstream: client.upstream, readBody: readIncomingBody, clientSignal: socketCloseSignal, requestLine, usageSinks: usage.sinks, configStatus, operatorListener: operatorPort !== undefined, sharedState: shared.status, credentials: credentials.factory });
      void shared.adopted();
      return gateway;
    },
    { config, version: overrides.version ?? configVersion(JSON.stringify(config)), origin: overrides.origin ?? "startup" },
  );
  // The first version's backends hold their share of the slots before the first request.
  await shared.adopted();
  const host = overrides.host ?? config.server.host;
  const refused = (requestId: string, status: number) => {
    const cfg = holder.config;
    const event = unparsedRequestEvent(requestId, status, Date.now(), resolvePriority(cfg.priorities.default, cfg.priorities.levels)!);
    runtime.metrics.emit(event);
    for (const s of usage.sinks) s.emit(event);
  };
  const server = await listen(holder.fetch, host, overrides.port ?? config.server.port, refused);
  const port = (server.address() as AddressInfo).port;
  // The gateway's own endpoints on a listener of their own (server.operatorPort), marked so the core knows.
  const operator =
    operatorPort === undefined ? undefined : await listen((request, env) => holder.fetch(request, { ...(env as object), [OPERATOR_LISTENER]: true }), host, operatorPort, refused);
  const shownHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;
  await jobs?.start();

  const close = async (graceMs = holder.config.server.shutdownGraceMs) => {
    // Jobs get the same grace as requests; the ones still running then go back to the queue.
    const jobsClosed = jobs?.close(graceMs);
    if (operator) {
      operator.close();
      operator.closeAllConnections();
    }
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    // Keep-alive connections that finish their last response are closed as they go idle.
    const sweep = setInterval(() => server.closeIdleConnections(), 50);
    server.closeIdleConnections();
    const grace = new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref());
    await Promise.race([closed, grace]);
    clearInterval(sweep);
    // Streams still open at the end of the grace end as broken (the SSE error event, no [DONE]),
    // never cut as if they had finished; a moment to write it, then every connection closes.
    if (runtime.streams.size) {
      interruptAll(runtime.streams);
      await new Promise((resolve) => setTimeout(resolve, 100).unref());
    }
    server.closeAllConnections();
    await closed;
    await jobsClosed;
    credentials.close();
    await client.close();
    await usage.close();
    await shared.close();
  };
  return {
    url: `http://${shownHost}:${port}`,
    port,
    ...(operator ? { operatorUrl: `http://${shownHost}:${(operator.address() as AddressInfo).port}` } : {}),
    get gateway() {
      return holder.current;
    },
    holder,
    server,
    close,
  };
}
