/**
 * Backend slots and queue order shared through Redis (CONTRACT §9): several Node gateways — each
 * a replica with its own queue and backend state — on one Redis, in front of one simulator
 * backend with `maxConcurrency: 2`. What the backend sees is counted at the backend: the most
 * response bodies it had open at once, and the order it received requests in.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { chatBody, closeAfterEach, eventedGateway, onClose, post, sim } from "../harness/e2e.ts";
import { freePort, gatewayProcess, processCwd } from "../harness/node.ts";
import { useRedis } from "../harness/redis.ts";
import { until } from "../harness/until.ts";

closeAfterEach();
const redis = useRedis();

const CHAT = "/v1/chat/completions";
/** Streamed: each answer's body stays open at the backend for its chunks × paceMs. */
const streamed = () => chatBody("gpt-4o", { stream: true });
let prefixes = 0;
const freshPrefix = () => `s${Date.now().toString(36)}${++prefixes}:`;

function replicaConfig(backendUrl: string, keyPrefix: string, extra: Partial<SluiceConfigInput> = {}): SluiceConfigInput {
  return {
    state: { redis: { url: redis().url, keyPrefix, leaseMs: 2000 } },
    backends: [{ name: "b", url: backendUrl, kind: "openai", models: ["gpt-4o"], maxConcurrency: 2 }],
    ...extra,
  };
}

interface Health {
  queue: { waiting: number };
  sharedState?: { reachable: boolean; backends?: { backend: string; inFlight: number; slotsHeld: number; slotsHere: number; replicas: number }[] };
}
const health = async (url: string) => (await (await fetch(`${url}/_gateway/health`)).json()) as Health;

/** `n` chat requests spread round-robin over the replicas; every status and the replica each went to. */
async function spread(urls: string[], n: number): Promise<number[]> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const r = await post(urls[i % urls.length]! + CHAT, streamed(), { "x-test-id": `r${i}` });
      await r.arrayBuffer();
      return r.status;
    }),
  );
}

describe("backend slots shared between replicas through Redis", () => {
  for (const replicas of [2, 3]) {
    it(`${replicas} replicas, maxConcurrency 2: under 60 concurrent requests the backend never has more than 2 at once, and all are answered`, async () => {
      const b = await sim("b");
      // Each answer streams for about 80 ms, so requests overlap at the backend unless held back.
      b.sim.setAlways({ paceMs: 10 });
      const prefix = freshPrefix();
      const gws = [];
      for (let i = 0; i < replicas; i++) gws.push(await eventedGateway(replicaConfig(b.url, prefix)));
      const statuses = await spread(
        gws.map((g) => g.url),
        60,
      );
      expect(statuses.filter((s) => s === 200)).toHaveLength(60);
      const stats = b.sim.stats();
      expect(stats.received).toBe(60);
      expect(stats.peakOpen).toBe(2);
      // Every replica served some: the slots moved between them.
      for (const g of gws) expect(g.events().filter((e) => e.status === 200).length, "requests answered by one replica").toBeGreaterThan(0);
    });
  }

  it("with the backend full, 20 low requests queued on replica A, then 1 high on replica B: the high one is served next", async () => {
    const b = await sim("b");
    const prefix = freshPrefix();
    const a = await eventedGateway(replicaConfig(b.url, prefix));
    const bb = await eventedGateway(replicaConfig(b.url, prefix));
    // Two answers through A stall after their first chunk: both slots stay held until their clients leave.
    b.sim.script([{ stallAfter: 1 }, { stallAfter: 1 }]);
    const clients = [new AbortController(), new AbortController()];
    const holds = clients.map((c, i) => post(a.url + CHAT, streamed(), { "x-test-id": `hold-${i}` }, c.signal).then((r) => r.text()).catch(() => "left"));
    await until("both slots busy at the backend", () => b.sim.stats().open === 2, 5_000, 5);
    b.sim.setAlways({ paceMs: 5 });
    const lows = Array.from({ length: 20 }, (_, i) => post(a.url + CHAT, streamed(), { "x-priority": "low", "x-test-id": `low-${i}` }).then((r) => r.status));
    await until("20 low requests queued on A", async () => (await health(a.url)).queue.waiting === 20, 5_000, 10);
    const high = post(bb.url + CHAT, streamed(), { "x-priority": "high", "x-test-id": "high" }).then((r) => r.status);
    await until("the high request queued on B", async () => (await health(bb.url)).queue.waiting === 1, 5_000, 5);
    expect(b.sim.stats().received, "nothing else reached the backend while both slots were held").toBe(2);

    // One slot frees on A: it goes to B's high request, not to A's own lows that waited longer.
    clients[0]!.abort();
    await until("a third request at the backend", () => b.sim.stats().received === 3, 5_000, 5);
    expect(b.sim.stats().requests[2]!.headers["x-test-id"]).toBe("high");
    clients[1]!.abort();
    expect(await high).toBe(200);
    expect((await Promise.all(lows)).every((s) => s === 200)).toBe(true);
    await Promise.all(holds);
    const order = b.sim.stats().requests.map((r) => r.headers["x-test-id"]);
    expect(order.slice(3)).toEqual(Array.from({ length: 20 }, (_, i) => `low-${i}`));
  });

  it("health and metrics show the backend's slots across replicas", async () => {
    const b = await sim("b");
    const prefix = freshPrefix();
    const a = await eventedGateway(replicaConfig(b.url, prefix));
    const bb = await eventedGateway(replicaConfig(b.url, prefix));
    b.sim.setAlways({ paceMs: 100 });
    const busy = [post(a.url + CHAT, streamed()), post(bb.url + CHAT, streamed())];
    // Renewals every quarter of the 2 s lease report what each replica has in flight.
    await until(
      "both requests in flight, seen from A",
      async () => {
        const s = (await health(a.url)).sharedState?.backends?.find((x) => x.backend === "b");
        return s?.inFlight === 2 && s.replicas === 2;
      },
      5_000,
      50,
    );
    const shared = (await health(a.url)).sharedState!.backends!.find((x) => x.backend === "b")!;
    expect(shared).toMatchObject({ maxConcurrency: 2, slotsHeld: 2, inFlight: 2, replicas: 2 });
    const metrics = await (await fetch(`${a.url}/metrics`)).text();
    expect(metrics).toMatch(/sluice_backend_in_flight_all_replicas\{backend="b"\} 2/);
    await Promise.all(busy.map(async (r) => (await r).text()));
  });

  it("a replica killed with SIGKILL while holding both slots: the other gets them back within the lease time", async () => {
    const b = await sim("b");
    const prefix = freshPrefix();
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "sluice-slots-"));
    const cwd = processCwd();
    onClose(async () => {
      rmSync(dir, { recursive: true, force: true });
      rmSync(cwd, { recursive: true, force: true });
    });
    const file = join(dir, "config.json");
    writeFileSync(file, JSON.stringify({ ...replicaConfig(b.url, prefix), server: { host: "127.0.0.1", port }, metering: { sinks: [] } }));
    const victim = await gatewayProcess(file, cwd);
    onClose(victim.kill);
    const survivor = await eventedGateway(replicaConfig(b.url, prefix));

    // The victim's two requests hang at the backend: it holds both slots until it dies.
    b.sim.script([{ hang: true }, { hang: true }]);
    const hung = [0, 1].map(() => post(`http://127.0.0.1:${port}${CHAT}`, streamed()).catch(() => "gone"));
    await until("both hung requests at the backend", () => b.sim.stats().received === 2, 5_000, 5);

    const waiting = post(survivor.url + CHAT, streamed(), { "x-test-id": "after" });
    await until("the survivor's request queued", async () => (await health(survivor.url)).queue.waiting === 1, 5_000, 10);
    expect(b.sim.stats().received).toBe(2);

    victim.child.kill("SIGKILL");
    const killedAt = Date.now();
    await victim.exited;
    const r = await waiting;
    expect(r.status).toBe(200);
    const servedAfter = b.sim.stats().requests.find((x) => x.headers["x-test-id"] === "after")!.at - killedAt;
    // leaseMs is 2000: the dead replica's slots are free within it (and not before its renewal lapses).
    expect(servedAfter).toBeLessThanOrEqual(2000);
    expect(servedAfter).toBeGreaterThan(200);
    await Promise.all(hung);
  });

  it("Redis stopped mid-run: replicas keep answering (each on its own slots); Redis back: the limit holds across replicas again", async () => {
    const b = await sim("b");
    b.sim.setAlways({ paceMs: 10 });
    const prefix = freshPrefix();
    const a = await eventedGateway(replicaConfig(b.url, prefix));
    const bb = await eventedGateway(replicaConfig(b.url, prefix));
    const urls = [a.url, bb.url];
    expect((await spread(urls, 20)).every((s) => s === 200)).toBe(true);
    expect(b.sim.stats().peakOpen).toBe(2);

    await redis().stop();
    await until("both replicas degraded", async () => (await Promise.all(urls.map(health))).every((h) => h.sharedState?.reachable === false), 5_000, 50);
    b.sim.reset();
    b.sim.setAlways({ paceMs: 10 });
    const during = await spread(urls, 20);
    expect(during.every((s) => s === 200)).toBe(true);
    // Documented: without Redis each replica may use all of maxConcurrency.
    expect(b.sim.stats().peakOpen).toBeLessThanOrEqual(4);

    await redis().restart();
    await until("both replicas on shared state again", async () => (await Promise.all(urls.map(health))).every((h) => h.sharedState?.reachable === true && (h.sharedState.backends?.length ?? 0) > 0), 10_000, 50);
    b.sim.reset();
    b.sim.setAlways({ paceMs: 10 });
    expect((await spread(urls, 40)).every((s) => s === 200)).toBe(true);
    expect(b.sim.stats().peakOpen).toBe(2);
  });
});
