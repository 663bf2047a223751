/**
 * The Durable Object scheduler on workerd (miniflare): the scheduler conformance suite against
 * SchedulerObject, and two Worker isolates whose requests are ordered by its one queue.
 */
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";
import { DriverConnection, startDriver as startDoDriver } from "../harness/do-driver.ts";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { ClientSignal } from "../../src/proxy/attempt.ts";
import type { Scheduler, SchedulerStats, SlotDecision, SlotRelease, SlotRequest } from "../../src/scheduling/port.ts";
import { bundleForWorkers, bundleWorker, gatewayScript, SCHEDULER_CLASS } from "../harness/workers.ts";
import { schedulerConformance } from "./scheduler-suite.ts";

/**
 * A test-only Worker that drives the real DurableObjectScheduler for the Node test process. A
 * Node AbortSignal cannot cross into workerd, and separate HTTP calls from Node may reach the
 * object in any order; so calls travel in order over one WebSocket, and an abort is a message
 * that aborts the signal this Worker passed to acquire (the client turns that into `cancel`).
 * One connection is one request, so it keeps one stub: calls on one stub arrive in order.
 */
const DRIVER_SOURCE = `
import { DurableObjectScheduler } from "./scheduler-client.ts";
export default {
  fetch(request, env) {
    if (request.headers.get("upgrade") !== "websocket") return new Response("websocket only", { status: 426 });
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    const stub = env.SCHEDULER.get(env.SCHEDULER.idFromName("suite"));
    const scheduler = new DurableObjectScheduler(() => stub);
    const controllers = new Map();
    const reply = (n, body) => server.send(JSON.stringify({ n, ...body }));
    server.addEventListener("message", (event) => {
      const m = JSON.parse(event.data);
      if (m.op === "acquire") {
        const controller = new AbortController();
        controllers.set(m.n, controller);
        scheduler.acquire(m.request, controller.signal).then(
          (result) => { controllers.delete(m.n); reply(m.n, { result }); },
          (err) => reply(m.n, { error: String(err) }),
        );
      } else if (m.op === "abort") controllers.get(m.target)?.abort();
      else if (m.op === "release") scheduler.release(m.backend, m.outcome);
      else if (m.op === "stats") scheduler.stats().then((result) => reply(m.n, { result }), (err) => reply(m.n, { error: String(err) }));
      // The object's RPC methods as they are, tickets chosen by the test.
      else if (m.op === "raw") Promise.resolve(stub[m.method](...m.args)).then((result) => reply(m.n, { result: result ?? null }), (err) => reply(m.n, { error: String(err) }));
    });
    return new Response(null, { status: 101, webSocket: client });
  },
};
`;

let driverBundle: Promise<string> | undefined;
const bundleDriver = () =>
  (driverBundle ??= bundleForWorkers({ source: DRIVER_SOURCE, resolveDir: fileURLToPath(new URL("../../adapters/cloudflare/", import.meta.url)) }));

/** The Scheduler port in the Node test process, every call going to the Durable Object through the driver. */
class RemoteScheduler implements Scheduler {
  constructor(private readonly driver: DriverConnection) {}

  /** Calls a SchedulerObject RPC method directly (no client in between). */
  async raw<T>(method: "acquire" | "cancel" | "release" | "stats", ...args: unknown[]): Promise<T> {
    return (await this.driver.ask({ op: "raw", method, args }).answer).result as T;
  }

  acquire(request: SlotRequest, signal?: ClientSignal): Promise<SlotDecision> {
    if (signal?.aborted) return Promise.resolve({ kind: "cancelled" });
    const { n, answer } = this.driver.ask({ op: "acquire", request });
    signal?.addEventListener("abort", () => this.driver.tell({ op: "abort", target: n }), { once: true });
    return answer.then((a) => a.result as SlotDecision);
  }

  release(backend: string, outcome: SlotRelease): void {
    this.driver.tell({ op: "release", backend, outcome });
  }

  async stats(): Promise<SchedulerStats> {
    return (await this.driver.ask({ op: "stats" }).answer).result as SchedulerStats;
  }
}

async function startDriver(input: SluiceConfigInput): Promise<{ scheduler: RemoteScheduler; close(): Promise<void> }> {
  const { connection, close } = await startDoDriver({ driver: await bundleDriver(), binding: "SCHEDULER", objectClass: SCHEDULER_CLASS, bindings: { SLUICE_CONFIG: JSON.stringify(input) } });
  return { scheduler: new RemoteScheduler(connection), close };
}

schedulerConformance("durable object (miniflare)", startDriver);

describe("durable object scheduler: tickets across the RPC boundary", () => {
  let current: Awaited<ReturnType<typeof startDriver>> | undefined;
  afterEach(async () => {
    await current?.close();
    current = undefined;
  });
  const one = { backends: [{ name: "b1", url: "http://127.0.0.1:9", models: ["gpt-4o"], maxConcurrency: 1 }] };
  const slot = (id: string): SlotRequest => ({ id, priority: 2, caller: "a", cost: 1, deadline: Date.now() + 60_000, eligible: ["b1"], tried: [] });

  it("a cancel that overtakes its acquire still cancels it", async () => {
    const s = (current = await startDriver(one)).scheduler;
    expect((await s.raw<SlotDecision>("acquire", slot("r1"), "t1")).kind).toBe("granted");
    await s.raw("cancel", "t2");
    expect(await s.raw<SlotDecision>("acquire", slot("r2"), "t2")).toEqual({ kind: "cancelled" });
  });

  it("a cancel that arrives after the grant frees the slot; a release of a ticket it does not hold frees nothing", async () => {
    const s = (current = await startDriver(one)).scheduler;
    expect((await s.raw<SlotDecision>("acquire", slot("r1"), "t1")).kind).toBe("granted");
    // Granted, but the caller had already gone: its cancel frees the slot.
    await s.raw("cancel", "t1");
    expect((await s.raw<SlotDecision>("acquire", slot("r2"), "t2")).kind).toBe("granted");
    // A second free of t1, and a ticket never granted: the slot stays t2's.
    await s.raw("release", "b1", { verdict: "success" }, "t1");
    await s.raw("release", "b1", { verdict: "success" }, "nope");
    const waiting = s.raw<SlotDecision>("acquire", slot("r3"), "t3");
    const stats = await s.raw<SchedulerStats>("stats");
    expect(stats.waiting).toBe(1);
    await s.raw("release", "b1", { verdict: "success" }, "t2");
    expect((await waiting).kind).toBe("granted");
  });

  it("an acquire retried with the same ticket after a lost answer gets the same grant, not a second slot", async () => {
    const s = (current = await startDriver({ backends: [{ ...one.backends[0]!, maxConcurrency: 2 }] })).scheduler;
    const first = await s.raw<SlotDecision>("acquire", slot("r1"), "t1");
    expect(await s.raw<SlotDecision>("acquire", slot("r1"), "t1")).toEqual(first);
    // One slot taken, one free.
    expect((await s.raw<SlotDecision>("acquire", slot("r2"), "t2")).kind).toBe("granted");
  });
});

describe("durable object scheduler: one queue for every isolate", () => {
  let mf: Miniflare | undefined;
  let sim: RunningSimulator | undefined;
  afterEach(async () => {
    await mf?.dispose();
    await sim?.close();
    mf = sim = undefined;
  });

  it("urgent requests through worker B are served before less urgent ones already queued through worker A", async () => {
    sim = await startSimulator({ name: "b1" });
    // The first request holds b1 long enough for both workers' requests to queue behind it.
    sim.sim.script([{ firstByteDelayMs: 1_000 }]);
    sim.sim.setAlways({ firstByteDelayMs: 200 });
    const config: SluiceConfigInput = {
      backends: [{ name: "b1", url: sim.url, kind: "openai", models: ["gpt-4o"], maxConcurrency: 1, auth: { type: "none" } }],
      scheduling: { reservedShare: 0 },
    };
    const contents = await bundleWorker();
    const worker = (name: string, objectsIn?: string) => gatewayScript(contents, name, objectsIn, { bindings: { SLUICE_CONFIG: JSON.stringify(config) } });
    // Two Worker scripts: two isolates, each with its own gateway, one SchedulerObject (in "a").
    mf = new Miniflare({ workers: [worker("a"), worker("b", "a")] });
    const [a, b] = await Promise.all([mf.getWorker("a"), mf.getWorker("b")]);
    const send = (via: typeof a, label: string, priority: "low" | "high") =>
      via
        .fetch("http://gateway.local/v1/chat/completions", {
          method: "POST",
          headers: { "content-type": "application/json", "x-priority": priority },
          body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: label }] }),
        })
        .then(async (r) => ({ label, status: r.status, queueMs: Number(r.headers.get("x-sluice-queue-ms")), text: await r.text() }));
    const queued = async (n: number) => {
      for (let i = 0; i < 200; i++) {
        const health = (await (await a.fetch("http://gateway.local/_gateway/health")).json()) as { queue: SchedulerStats };
        if (health.queue.waiting === n) return;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`the queue never reached ${n} waiting`);
    };

    const lows = [send(a, "low-0", "low")];
    for (let i = 0; i < 200 && sim.sim.stats().received < 1; i++) await new Promise((r) => setTimeout(r, 10));
    for (let i = 1; i <= 3; i++) lows.push(send(a, `low-${i}`, "low"));
    await queued(3);
    const highs = [1, 2, 3].map((i) => send(b, `high-${i}`, "high"));
    await queued(6);
    const replies = await Promise.all([...lows, ...highs]);
    for (const r of replies) expect(r.status, `${r.label}: ${r.text.slice(0, 200)}`).toBe(200);

    const requests = sim.sim.stats().requests;
    const served = requests.map((q) => (JSON.parse(q.body) as { messages: Array<{ content: string }> }).messages[0]!.content);
    expect(served[0]).toBe("low-0");
    expect(served.slice(1, 4).sort()).toEqual(["high-1", "high-2", "high-3"]);
    expect(served.slice(4).sort()).toEqual(["low-1", "low-2", "low-3"]);
    // maxConcurrency 1 held across both isolates: each request reached b1 after the previous one's 200 ms.
    for (let i = 1; i < requests.length; i++) expect(requests[i]!.at - requests[i - 1]!.at).toBeGreaterThanOrEqual(190);
    const waitedHigh = Math.max(...replies.filter((r) => r.label.startsWith("high")).map((r) => r.queueMs));
    const waitedLow = Math.max(...replies.filter((r) => r.label.startsWith("low")).map((r) => r.queueMs));
    expect(waitedLow).toBeGreaterThan(waitedHigh);
  });

  it("with the config only in KV (and a KV profiles document), the object reads it as the Worker does: two isolates share one queue", async () => {
    sim = await startSimulator({ name: "b1" });
    // Each answer streams for ~300 ms: long enough that a second request let through at once would overlap it.
    sim.sim.setAlways({ paceMs: 100, chunks: 3 });
    const config = {
      metering: { sinks: [] },
      // Valid only with the profiles document: a reader that ignored it would refuse this config.
      auth: { defaultProfile: "std" },
      backends: [{ name: "b1", url: sim.url, kind: "openai", models: ["gpt-4o"], maxConcurrency: 1, auth: { type: "none" } }],
      scheduling: { reservedShare: 0 },
    };
    const contents = await bundleWorker();
    // No SLUICE_CONFIG: the config is in the namespace both scripts bind.
    const worker = (name: string, objectsIn?: string) => gatewayScript(contents, name, objectsIn, { kvNamespaces: ["SLUICE_CONFIG_KV"], bindings: { SLUICE_CONFIG_KV_TTL_MS: "200" } });
    // Two Worker scripts: two isolates, each with its own gateway, one SchedulerObject (in "a").
    mf = new Miniflare({ workers: [worker("a"), worker("b", "a")] });
    const kv = await mf.getKVNamespace("SLUICE_CONFIG_KV", "a");
    await kv.put("config", JSON.stringify(config));
    await kv.put("profiles", JSON.stringify({ profiles: { std: { models: ["gpt-4o"] } } }));
    const [a, b] = await Promise.all([mf.getWorker("a"), mf.getWorker("b")]);

    let maxOpen = 0;
    const sampler = setInterval(() => (maxOpen = Math.max(maxOpen, sim!.sim.stats().open)), 2);
    try {
      const send = (via: typeof a, label: string) =>
        via
          .fetch("http://gateway.local/v1/chat/completions", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: label }] }),
          })
          .then(async (r) => ({ label, status: r.status, text: await r.text() }));
      const replies = await Promise.all([send(a, "a-1"), send(b, "b-1"), send(a, "a-2"), send(b, "b-2")]);
      for (const r of replies) expect(r.status, `${r.label}: ${r.text.slice(0, 300)}`).toBe(200);
    } finally {
      clearInterval(sampler);
    }
    const requests = sim.sim.stats().requests;
    expect(requests).toHaveLength(4);
    // maxConcurrency 1 held across both isolates, counted at the backend.
    expect(maxOpen).toBe(1);
    for (let i = 1; i < requests.length; i++) expect(requests[i]!.at - requests[i - 1]!.at).toBeGreaterThanOrEqual(190);

    // Both isolates report the one queue's view of b1, from the object.
    const health = (await (await b.fetch("http://gateway.local/_gateway/health")).json()) as { backends: Array<{ name: string; inFlight: number }>; config: { version: string } };
    expect(health.backends.map((x) => [x.name, x.inFlight])).toEqual([["b1", 0]]);
  });

  it("a new KV version naming other backends goes to another pool's object: the old pool's object keeps serving the isolates still on the old version", async () => {
    sim = await startSimulator({ name: "b1" });
    const version = (backend: string) =>
      JSON.stringify({ metering: { sinks: [] }, backends: [{ name: backend, url: sim!.url, kind: "openai", models: ["gpt-4o"], maxConcurrency: 1, auth: { type: "none" } }] });
    const contents = await bundleWorker();
    const worker = (name: string, ttlMs: number, objectsIn?: string) =>
      gatewayScript(contents, name, objectsIn, { kvNamespaces: ["SLUICE_CONFIG_KV"], bindings: { SLUICE_CONFIG_KV_TTL_MS: String(ttlMs) } });
    // The objects live in "a" and re-read KV every 100 ms; isolate "b" keeps what it read for a minute.
    mf = new Miniflare({ workers: [worker("a", 100), worker("b", 60_000, "a")] });
    const kv = await mf.getKVNamespace("SLUICE_CONFIG_KV", "a");
    await kv.put("config", version("old"));
    const [a, b] = await Promise.all([mf.getWorker("a"), mf.getWorker("b")]);
    const send = async (via: typeof a) => {
      const r = await via.fetch("http://gateway.local/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }),
      });
      return { status: r.status, backend: r.headers.get("x-sluice-backend"), text: await r.text() };
    };
    expect(await send(b)).toMatchObject({ status: 200, backend: "old" });

    await kv.put("config", version("new"));
    await new Promise((r) => setTimeout(r, 300));
    // "a" reads the new version: the new pool's object serves it.
    expect(await send(a)).toMatchObject({ status: 200, backend: "new" });
    // "b" is still on the old version; the old pool's object has read the new one by now and refused it.
    for (let i = 0; i < 3; i++) {
      const r = await send(b);
      expect(r, r.text.slice(0, 300)).toMatchObject({ status: 200, backend: "old" });
      await new Promise((r) => setTimeout(r, 150));
    }
  });
});
