/**
 * Settlement on workerd (miniflare), over real sockets: a client that leaves mid-stream still
 * ends its exchange (one usage event, marked truncated; the budget reservation refunded; the
 * lease released; the upstream response cancelled), and usage events sent to a Workers Queue
 * all reach its consumer.
 */
import { createServer, request as httpRequest, type ClientRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Readable } from "node:stream";
import { Miniflare } from "miniflare";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../src/config/schema.ts";
import type { UsageEvent } from "../src/metering/events.ts";
import { bundleWorker, COMPATIBILITY_DATE, COMPATIBILITY_FLAGS, LIMITER_CLASS, SCHEDULER_CLASS } from "./harness/workers.ts";
import { until } from "./harness/until.ts";
import { ConsoleEvents } from "./harness/usage-events.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A test-only queue consumer: posts each batch of usage events to the test process. */
const CONSUMER_SOURCE = `
export default {
  async queue(batch, env) {
    await fetch(env.COLLECTOR, { method: "POST", body: JSON.stringify(batch.messages.map((m) => m.body)) });
    batch.ackAll();
  },
};
`;

/** Usage events as they reach the test process: from the Worker's console, and from the queue's consumer. */
class Events {
  private readonly fromConsole = new ConsoleEvents();
  readonly queued: UsageEvent[] = [];

  get console(): UsageEvent[] {
    return this.fromConsole.events;
  }

  /** Lines of the Worker's stdout: a console sink writes one JSON event per line. */
  stdout(data: string): void {
    this.fromConsole.feed(data);
  }

  of(list: UsageEvent[], requestId: string): UsageEvent[] {
    return list.filter((e) => e.requestId === requestId);
  }
}

interface Setup {
  url: string;
  events: Events;
  close(): Promise<void>;
}

/** The gateway Worker with the Durable Objects wrangler.toml binds and a USAGE queue whose consumer reports to this process. */
async function startGateway(config: SluiceConfigInput, bindings: Record<string, string> = {}): Promise<Setup> {
  const events = new Events();
  const collector: Server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d: string) => (body += d));
    req.on("end", () => {
      events.queued.push(...(JSON.parse(body) as UsageEvent[]));
      res.end("ok");
    });
  });
  await new Promise<void>((ok) => collector.listen(0, "127.0.0.1", ok));
  const mf = new Miniflare({
    host: "127.0.0.1",
    port: 0,
    handleRuntimeStdio(stdout: Readable, stderr: Readable) {
      stdout.setEncoding("utf8");
      stdout.on("data", (d: string) => events.stdout(d));
      stderr.resume();
    },
    workers: [
      {
        name: "gateway",
        modules: [{ type: "ESModule", path: "worker.js", contents: await bundleWorker() }],
        compatibilityDate: COMPATIBILITY_DATE,
        compatibilityFlags: COMPATIBILITY_FLAGS,
        bindings: { SLUICE_CONFIG: JSON.stringify(config), ...bindings },
        durableObjects: { SCHEDULER: SCHEDULER_CLASS, LIMITER: LIMITER_CLASS },
        queueProducers: { USAGE: { queueName: "usage" } },
      },
      {
        name: "consumer",
        modules: [{ type: "ESModule", path: "consumer.js", contents: CONSUMER_SOURCE }],
        compatibilityDate: COMPATIBILITY_DATE,
        bindings: { COLLECTOR: `http://127.0.0.1:${(collector.address() as AddressInfo).port}/` },
        queueConsumers: { usage: { maxBatchSize: 10, maxBatchTimeout: 0.1 } },
      },
    ],
  });
  const url = (await mf.ready).origin;
  return {
    url,
    events,
    close: async () => {
      await mf.dispose();
      collector.closeAllConnections();
      await new Promise<void>((ok) => collector.close(() => ok()));
    },
  };
}

const MODEL = "gpt-4o";
const MAX_TOKENS = 2000;
const CONTENT = "Tell me about sluice gates.";
const streamBody = JSON.stringify({ model: MODEL, stream: true, max_tokens: MAX_TOKENS, messages: [{ role: "user", content: CONTENT }] });
const plainBody = JSON.stringify({ model: MODEL, max_tokens: MAX_TOKENS, messages: [{ role: "user", content: CONTENT }] });
/** The gateway's estimate of a request: body bytes / 4, plus max_tokens. */
const estimate = (body: string) => Math.ceil(Buffer.byteLength(body) / 4) + MAX_TOKENS;

/**
 * A streamed request over its own socket (node:http) that the client abandons after the first
 * body chunk: the socket is destroyed. Resolves with the response's request id.
 */
function leaveAfterFirstChunk(url: string, fault: Record<string, unknown>): Promise<{ requestId: string; status: number }> {
  return leave(url, fault, (req, resolve) => {
    req.on("response", (res) => {
      res.once("data", () => {
        req.destroy();
        resolve({ requestId: String(res.headers["x-request-id"]), status: res.statusCode ?? 0 });
      });
    });
  });
}

/** A streamed request with the given request id whose client leaves after `ms`, before any response. */
function leaveAfter(url: string, fault: Record<string, unknown>, requestId: string, ms: number): Promise<{ requestId: string; status: number }> {
  return leave(url, fault, (req, resolve) => {
    req.setHeader("x-request-id", requestId);
    req.on("response", (res) => resolve({ requestId, status: res.statusCode ?? 0 }));
    setTimeout(() => {
      req.destroy();
      resolve({ requestId, status: 0 });
    }, ms);
  });
}

function leave(
  url: string,
  fault: Record<string, unknown>,
  wire: (req: ClientRequest, resolve: (v: { requestId: string; status: number }) => void) => void,
): Promise<{ requestId: string; status: number }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${url}/v1/chat/completions`, {
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", "x-sim-fault": JSON.stringify(fault) },
    });
    wire(req, resolve);
    req.on("error", (err) => {
      if (!req.destroyed) reject(err);
    });
    req.end(streamBody);
  });
}

async function chat(url: string, body = plainBody): Promise<{ status: number; requestId: string; text: string }> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-sim-fault": JSON.stringify({ chunks: 5 }) },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return {
    status: res.status,
    requestId: res.headers.get("x-request-id") ?? "",
    text,
  };
}

describe("Workers (miniflare): a client that leaves mid-stream", () => {
  let closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    closers = [];
  });

  it("settles: one usage event marked truncated, the reservation refunded, the lease released, the upstream response cancelled", async () => {
    const sim: RunningSimulator = await startSimulator({ name: "b1" });
    closers.push(() => sim.close());
    // Just above two requests' estimates: enough for two requests at once only if the one that
    // left was refunded (a reservation left taken would refuse the second with a 429).
    const budget = estimate(streamBody) + estimate(plainBody) + 100;
    const gw = await startGateway({
      backends: [{ name: "b1", url: sim.url, kind: "openai", models: [MODEL], maxConcurrency: 1, auth: { type: "none" } }],
      limits: { perCaller: { tokensPerMinute: budget } },
      // One failure opens the circuit: a client leaving must not count as the backend failing.
      resilience: { breaker: { failureThreshold: 1 } },
      metering: { sinks: [{ type: "console" }, { type: "queue", binding: "USAGE" }] },
    });
    closers.push(() => gw.close());

    // 50 chunks 200 ms apart: ten seconds of stream, left after the first chunk.
    const left = await leaveAfterFirstChunk(gw.url, { paceMs: 200, chunks: 50 });
    expect(left.status).toBe(200);
    const [event] = await until("the usage event on the console", () => gw.events.of(gw.events.console, left.requestId).length > 0 && gw.events.of(gw.events.console, left.requestId), 5000);
    expect(event).toMatchObject({ status: 200, backend: "b1", stream: true, truncated: true });
    // Charged what it used (the prompt and the little it streamed), not what it reserved.
    expect(event!.totalTokens).toBeLessThan(100);
    await until("the usage event through the queue", () => gw.events.of(gw.events.queued, left.requestId).length > 0, 5000);
    await until("the simulator to see its response cancelled", () => sim.sim.stats().cancelled === 1, 5000);
    const health = (await (await fetch(`${gw.url}/_gateway/health`)).json()) as { backends: Array<{ name: string; breaker: string }> };
    expect(health.backends.find((b) => b.name === "b1")?.breaker).toBe("closed");

    // The lease went back: the one-slot backend serves the next request without a wait.
    const streaming = await fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-sim-fault": JSON.stringify({ paceMs: 100, chunks: 5 }) },
      body: streamBody,
      signal: AbortSignal.timeout(10_000),
    });
    expect(streaming.status).toBe(200);
    expect(Number(streaming.headers.get("x-sluice-queue-ms"))).toBeLessThan(150);
    // The reservation was settled at the tokens used: while this stream holds its own, another fits.
    expect(Number(streaming.headers.get("x-ratelimit-remaining-tokens"))).toBeGreaterThanOrEqual(estimate(plainBody));
    const [second, streamed] = await Promise.all([chat(gw.url), streaming.text()]);
    expect(second.status, second.text).toBe(200);
    expect(streamed).toContain("[DONE]");

    // One event per request, no more, on each sink.
    await sleep(500);
    expect(gw.events.of(gw.events.console, left.requestId)).toHaveLength(1);
    expect(gw.events.of(gw.events.queued, left.requestId)).toHaveLength(1);
    expect(sim.sim.stats().cancelled).toBe(1);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    const answered = metrics.split("\n").filter((l) => l.startsWith("sluice_requests_total{") && l.includes('backend="b1"'));
    expect(answered.reduce((n, l) => n + Number(l.split(" ").pop()), 0)).toBe(3);
  });

  it("left while queued: workerd does not tell the Worker; the answer's body is left untaken, and after SLUICE_CLIENT_STALL_MS the exchange settles as gone", async () => {
    const sim: RunningSimulator = await startSimulator({ name: "b1" });
    closers.push(() => sim.close());
    const gw = await startGateway(
      {
        backends: [{ name: "b1", url: sim.url, kind: "openai", models: [MODEL], maxConcurrency: 1, auth: { type: "none" } }],
        metering: { sinks: [{ type: "console" }] },
      },
      { SLUICE_CLIENT_STALL_MS: "1000" },
    );
    closers.push(() => gw.close());

    // The first request holds the one slot for ~2 s; the second waits behind it, and its client leaves after 300 ms.
    const holding = fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-sim-fault": JSON.stringify({ paceMs: 200, chunks: 10 }) },
      body: streamBody,
    }).then((r) => r.text());
    await until("the first request at the backend", () => sim.sim.stats().received === 1);
    const left = await leaveAfter(gw.url, { paceMs: 200, chunks: 10 }, "left-while-queued", 300);
    expect(left.status, "no response before the client left").toBe(0);
    await holding;
    const served = Date.now();
    // workerd's HTTP server saw nothing: the request was served when the slot came free, to a client long gone.
    const [event] = await until("the usage event of the request that left", () => gw.events.of(gw.events.console, left.requestId).length > 0 && gw.events.of(gw.events.console, left.requestId), 5000);
    expect(event).toMatchObject({ backend: "b1", truncated: true });
    expect(Date.now() - served).toBeLessThan(3000);
    await until("the simulator to see its response cancelled", () => sim.sim.stats().cancelled === 1, 5000);
    // The slot went back.
    const next = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: plainBody, signal: AbortSignal.timeout(5000) });
    expect(next.status).toBe(200);
    expect(Number(next.headers.get("x-sluice-queue-ms"))).toBeLessThan(150);
    await next.text();
    await sleep(300);
    expect(gw.events.of(gw.events.console, left.requestId)).toHaveLength(1);
  });
});

describe("Workers (miniflare): usage events to a Queue", () => {
  let closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    closers = [];
  });

  it("N requests, streamed and not, some concurrent: exactly N events reach the consumer, one per request id", async () => {
    const sim: RunningSimulator = await startSimulator({ name: "b1" });
    closers.push(() => sim.close());
    const gw = await startGateway({
      backends: [{ name: "b1", url: sim.url, kind: "openai", models: [MODEL], auth: { type: "none" } }],
      metering: { sinks: [{ type: "queue", binding: "USAGE" }] },
    });
    closers.push(() => gw.close());

    const N = 30;
    const ids: string[] = [];
    for (let round = 0; round < N / 5; round++) {
      const replies = await Promise.all([0, 1, 2, 3, 4].map((i) => chat(gw.url, (round + i) % 2 ? streamBody : plainBody)));
      for (const r of replies) {
        expect(r.status, r.text).toBe(200);
        ids.push(r.requestId);
      }
    }
    expect(new Set(ids).size).toBe(N);
    await until(`${N} events at the consumer`, () => gw.events.queued.length >= N, 10_000);
    await sleep(500);
    expect(gw.events.queued).toHaveLength(N);
    expect(new Set(gw.events.queued.map((e) => e.requestId))).toEqual(new Set(ids));
  });
});
