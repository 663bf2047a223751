/**
 * Node host for the Web-standard simulator: plain node:http, so that resets and mid-stream
 * truncation are real socket events a client library has to cope with.
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createSimulator, type Simulator } from "../../src/simulator/index.ts";

export interface RunningSimulator {
  name: string;
  url: string;
  port: number;
  sim: Simulator;
  close(): Promise<void>;
}

export interface StartSimulatorOptions {
  name: string;
  /** 0 = ephemeral (default). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  paceMs?: number;
  tpm?: number;
  fixturesDir?: string;
}

const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const DEFAULT_FIXTURES_DIR = resolve(PROJECT_ROOT, "../shared/fixtures/recorded");

/**
 * Reads every file of the fixtures directory, keyed by file name. The default directory may
 * be absent (a checkout without shared fixtures); an explicitly named one must exist.
 */
export async function loadFixtures(dir?: string): Promise<Record<string, Uint8Array>> {
  const explicit = dir ?? process.env.SLUICE_FIXTURES_DIR;
  const root = explicit ?? DEFAULT_FIXTURES_DIR;
  let names: string[];
  try {
    names = await readdir(root);
  } catch (error) {
    if (explicit === undefined) return {};
    throw new Error(`cannot read fixtures directory ${root}: ${(error as Error).message}`);
  }
  const fixtures: Record<string, Uint8Array> = {};
  for (const name of names.sort()) {
    const path = join(root, name);
    if (!(await stat(path)).isFile()) continue;
    fixtures[name] = new Uint8Array(await readFile(path));
  }
  return fixtures;
}

export async function startSimulator(options: StartSimulatorOptions): Promise<RunningSimulator> {
  const fixtures = await loadFixtures(options.fixturesDir);
  const sim = createSimulator({
    name: options.name,
    fixtures,
    ...(options.paceMs !== undefined ? { paceMs: options.paceMs } : {}),
    ...(options.tpm !== undefined ? { tpm: options.tpm } : {}),
  });
  const host = options.host ?? "127.0.0.1";
  const server = createServer({ keepAlive: true }, (req, res) => {
    serve(sim, req, res).catch(() => req.socket.destroy());
  });
  // Streams are many small writes; Nagle would batch them and distort pacing and TTFB.
  server.on("connection", (socket: Socket) => socket.setNoDelay(true));
  await new Promise<void>((ok, fail) => {
    server.once("error", fail);
    server.listen(options.port ?? 0, host, () => {
      server.off("error", fail);
      ok();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(":") ? `[${host}]` : host;
  let closing: Promise<void> | undefined;
  return {
    name: options.name,
    url: `http://${urlHost}:${port}`,
    port,
    sim,
    close() {
      closing ??= new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

async function readBody(req: IncomingMessage): Promise<Uint8Array<ArrayBuffer> | undefined> {
  if (req.method === "GET" || req.method === "HEAD") return undefined;
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  return new Uint8Array(Buffer.concat(parts));
}

function toRequest(req: IncomingMessage, body: Uint8Array<ArrayBuffer> | undefined, signal: AbortSignal): Request {
  const headers = new Headers();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  const url = `http://${req.headers.host ?? "localhost"}${req.url ?? "/"}`;
  return new Request(url, { method: req.method ?? "GET", headers, body: body ?? null, signal });
}

/** A real RST where the runtime offers one: closer to what a dying backend looks like. */
function resetSocket(socket: Socket): void {
  if (typeof socket.resetAndDestroy === "function" && !socket.destroyed) socket.resetAndDestroy();
  else socket.destroy();
}

/** Resolves when the chunk reached the kernel, or the response is gone. */
function write(res: ServerResponse, chunk: Uint8Array): Promise<void> {
  return new Promise((ok) => {
    const done = (): void => {
      res.off("close", done);
      ok();
    };
    res.once("close", done);
    res.write(chunk, done);
  });
}

async function serve(sim: Simulator, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const clientGone = new AbortController();
  res.on("error", () => {});
  res.on("close", () => {
    if (!res.writableFinished) clientGone.abort();
  });

  const body = await readBody(req);
  let response: Response;
  try {
    response = await sim.fetch(toRequest(req, body, clientGone.signal), { resetConnection: () => resetSocket(req.socket) });
  } catch (error) {
    if (req.socket.destroyed || res.headersSent) return;
    res.writeHead(500, { "content-type": "text/plain" }).end(`simulator failed: ${(error as Error).message}`);
    return;
  }

  if (res.destroyed) {
    await response.body?.cancel().catch(() => {});
    return;
  }
  const headers: Record<string, string | string[]> = {};
  response.headers.forEach((value, key) => (headers[key] = value));
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) headers["set-cookie"] = cookies;
  res.writeHead(response.status, headers);
  if (!response.body) {
    res.end();
    return;
  }
  // Headers go out now, not with the first chunk: time to first byte is what the gateway measures.
  res.flushHeaders();

  const reader = response.body.getReader();
  // A client that leaves mid-stream cancels the body, which is how the simulator counts it.
  clientGone.signal.addEventListener("abort", () => void reader.cancel().catch(() => {}), { once: true });
  if (clientGone.signal.aborted) void reader.cancel().catch(() => {});
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (res.destroyed) return;
      await write(res, value);
    }
  } catch {
    // The body errored on purpose (reset after N chunks): end the connection without the
    // terminating chunk, so the client sees a truncated response rather than a clean end.
    req.socket.destroy();
    return;
  }
  if (!res.destroyed) res.end();
}
