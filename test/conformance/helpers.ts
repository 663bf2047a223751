/**
 * Shared utilities for the gateway conformance suite: simulator backends, config builders,
 * a small HTTP client over the global `fetch`, SSE helpers and bounded polling.
 *
 * Everything here runs in the Node test process; the gateway under test may run elsewhere
 * (workerd via miniflare), so the only channel to it is HTTP on 127.0.0.1.
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { GatewayUnderTest, StartGateway } from "../harness/types.ts";

export type Sim = RunningSimulator;
export type SimFault = Parameters<RunningSimulator["sim"]["script"]>[0][number];
export type SimStats = ReturnType<RunningSimulator["sim"]["stats"]>;
export type SimRequest = SimStats["requests"][number];
export type BackendInput = SluiceConfigInput["backends"][number];

// ---------------------------------------------------------------------------------------------
// Fixtures

const FIXTURES_DIR = fileURLToPath(new URL("../../../shared/fixtures/recorded/", import.meta.url));

/** The exact bytes of a recorded provider response from ../shared/fixtures/recorded/. */
export function fixtureBytes(name: string): Buffer {
  return readFileSync(FIXTURES_DIR + name);
}

// ---------------------------------------------------------------------------------------------
// Paths and bodies

export const API_VERSION = "2024-10-21";
/** Azure OpenAI chat path for a deployment (the model the client asks for). */
export const azurePath = (deployment = "gpt-4o"): string =>
  `/openai/deployments/${deployment}/chat/completions?api-version=${API_VERSION}`;
export const OPENAI_PATH = "/v1/chat/completions";

/** A small chat request body; `model` is left out when undefined (Azure style). */
export function chatBody(opts: { model?: string; stream?: boolean; content?: string } = {}): string {
  const body: Record<string, unknown> = {};
  if (opts.model !== undefined) body.model = opts.model;
  body.messages = [{ role: "user", content: opts.content ?? "Say hello." }];
  body.max_tokens = 16;
  if (opts.stream) {
    body.stream = true;
    // Already asked for, so the gateway has no reason to rewrite the body.
    body.stream_options = { include_usage: true };
  }
  return JSON.stringify(body);
}

// ---------------------------------------------------------------------------------------------
// Config builders

/** The deployment name backend `name` uses for model gpt-4o (each backend renames differently). */
export const deploymentOf = (backendName: string): string => `${backendName}-gpt4o`;

/** An Azure OpenAI backend serving gpt-4o under its own deployment name, with key `<name>-key`. */
export function azureBackend(name: string, url: string, extra: Partial<BackendInput> = {}): BackendInput {
  return {
    name,
    url,
    kind: "azure-openai",
    models: [{ name: "gpt-4o", deployment: deploymentOf(name) }],
    group: 1,
    auth: { type: "api-key", key: `${name}-key` },
    ...extra,
  };
}

/** An OpenAI backend serving gpt-4o-mini, with bearer token `<name>-token`. */
export function openaiBackend(name: string, url: string, extra: Partial<BackendInput> = {}): BackendInput {
  return {
    name,
    url,
    kind: "openai",
    models: ["gpt-4o-mini"],
    group: 1,
    auth: { type: "bearer", token: `${name}-token` },
    ...extra,
  };
}

export interface ConfigOptions {
  strategy?: "latency" | "weighted-round-robin" | "round-robin" | "random";
  latencyExploration?: number;
  timeoutMs?: number;
  defaultCooldownMs?: number;
  failureThreshold?: number;
  openMs?: number;
}

/**
 * A config with test-friendly resilience settings: short timeouts, and a breaker that does not
 * trip during ordinary failover tests unless asked to.
 */
export function gatewayConfig(backends: BackendInput[], o: ConfigOptions = {}): SluiceConfigInput {
  return {
    routing: {
      strategy: o.strategy ?? "round-robin",
      ...(o.latencyExploration !== undefined ? { latencyExploration: o.latencyExploration } : {}),
    },
    resilience: {
      timeoutMs: o.timeoutMs ?? 5_000,
      defaultCooldownMs: o.defaultCooldownMs ?? 10_000,
      breaker: { failureThreshold: o.failureThreshold ?? 1_000, openMs: o.openMs ?? 30_000 },
    },
    backends,
  };
}

// ---------------------------------------------------------------------------------------------
// Environment: simulators + gateway, closed after each test

export class TestEnv {
  private closers: Array<() => Promise<void>> = [];

  constructor(private readonly startGateway: StartGateway) {}

  /** Starts one simulator per name, each on its own 127.0.0.1 port. */
  async sims(names: string[], opts: { paceMs?: number } = {}): Promise<Sim[]> {
    const started = await Promise.all(names.map((name) => startSimulator({ name, port: 0, paceMs: opts.paceMs ?? 0 })));
    for (const s of started) this.closers.push(() => s.close());
    return started;
  }

  async gateway(config: SluiceConfigInput): Promise<Gateway> {
    const gw = await this.startGateway(config);
    // Gateways close before simulators (closers run in reverse order).
    this.closers.push(() => gw.close());
    return new Gateway(gw);
  }

  async closeAll(): Promise<void> {
    const closers = this.closers.reverse();
    this.closers = [];
    const errors: unknown[] = [];
    for (const close of closers) {
      try {
        await close();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw errors[0];
  }
}

// ---------------------------------------------------------------------------------------------
// Client

export interface Reply {
  status: number;
  headers: Headers;
  text: string;
  bytes: Buffer;
  /** Elapsed time from sending to the end of the body, ms. */
  ms: number;
  /** x-sluice-backend, or null. */
  backend: string | null;
  /** x-sluice-attempts as a number (NaN when absent). */
  attempts: number;
  json(): any;
}

export interface SendOptions {
  method?: string;
  body?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export class Gateway {
  readonly url: string;
  constructor(readonly under: GatewayUnderTest) {
    this.url = under.url.replace(/\/+$/, "");
  }

  fetch(path: string, o: SendOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { ...(o.body !== undefined ? { "content-type": "application/json" } : {}), ...o.headers };
    return fetch(this.url + path, {
      method: o.method ?? (o.body !== undefined ? "POST" : "GET"),
      headers,
      body: o.body,
      signal: o.signal,
    });
  }

  /** Sends a request and reads the whole body. */
  async send(path: string, o: SendOptions = {}): Promise<Reply> {
    const t0 = performance.now();
    const res = await this.fetch(path, o);
    const bytes = Buffer.from(await res.arrayBuffer());
    const ms = performance.now() - t0;
    const text = bytes.toString("utf8");
    return {
      status: res.status,
      headers: res.headers,
      text,
      bytes,
      ms,
      backend: res.headers.get("x-sluice-backend"),
      attempts: Number(res.headers.get("x-sluice-attempts") ?? NaN),
      json() {
        return JSON.parse(text);
      },
    };
  }

  /** A non-streamed chat completion for gpt-4o on the Azure path. */
  chat(headers: Record<string, string> = {}, body = chatBody()): Promise<Reply> {
    return this.send(azurePath(), { body, headers });
  }

  /** The gateway's own view of its queue and backends (`/_gateway/health`). */
  async health(): Promise<GatewayHealth> {
    const r = await this.send("/_gateway/health");
    if (r.status !== 200) throw new Error(`/_gateway/health answered ${r.status}: ${r.text.slice(0, 300)}`);
    return r.json() as GatewayHealth;
  }

  /** Requests waiting in the gateway's queue right now, all priorities. */
  async waiting(): Promise<number> {
    return (await this.health()).queue.waiting;
  }

  /** One backend's state as `/_gateway/health` reports it. */
  async backendState(name: string): Promise<GatewayHealth["backends"][number]> {
    const b = (await this.health()).backends.find((x) => x.name === name);
    if (!b) throw new Error(`/_gateway/health lists no backend ${name}`);
    return b;
  }
}

/** What `/_gateway/health` reports (the parts the tests read). */
export interface GatewayHealth {
  queue: { waiting: number; levels: Array<{ level: number; waiting: number; dispatched: number }> };
  backends: Array<{ name: string; inFlight: number; breaker: "closed" | "open" | "half-open"; coolingDownMs: number }>;
}

/** x-sluice-queue-ms as a number (NaN when absent). */
export const queueMsOf = (r: Reply): number => Number(r.headers.get("x-sluice-queue-ms") ?? NaN);

// ---------------------------------------------------------------------------------------------
// Simulator stats helpers

export const received = (s: Sim): number => s.sim.stats().received;

export function lastRequest(s: Sim): SimRequest {
  const reqs = s.sim.stats().requests;
  const last = reqs[reqs.length - 1];
  if (!last) throw new Error(`simulator ${s.name} received no request`);
  return last;
}

/** "path?query" as the backend saw it. */
export function pathWithQuery(r: SimRequest): string {
  return r.query ? `${r.path}?${r.query}` : r.path;
}

// ---------------------------------------------------------------------------------------------
// Timing

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Calls `probe` until it returns something other than undefined/false, or the deadline passes
 * (then throws, naming `what` and the last value seen).
 */
export async function pollUntil<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  opts: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}`);
    await sleep(opts.intervalMs ?? 25);
  }
}

// ---------------------------------------------------------------------------------------------
// SSE

/** Splits an SSE text into raw events, each without its terminating blank line. */
export function sseEvents(text: string): string[] {
  return text
    .replace(/\r\n/g, "\n")
    .split("\n\n")
    .filter((e) => e.trim() !== "");
}

/** The `data:` payload of a raw SSE event (multi-line data joined by "\n"). */
export function sseData(event: string): string {
  return event
    .split("\n")
    .filter((l) => l.startsWith("data:"))
    .map((l) => l.slice(5).replace(/^ /, ""))
    .join("\n");
}

/** The `event:` name of a raw SSE event, or "message". */
export function sseEventName(event: string): string {
  const line = event.split("\n").find((l) => l.startsWith("event:"));
  return line ? line.slice(6).trim() : "message";
}

// ---------------------------------------------------------------------------------------------
// Network

/** A URL on 127.0.0.1 where nothing listens (a port just released). */
export async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("no port");
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${addr.port}`;
}

/** Counts occurrences of each value. */
export function tally(values: Array<string | null>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[String(v)] = (out[String(v)] ?? 0) + 1;
  return out;
}
