/**
 * Cooldowns shared through Redis (CONTRACT §9): two Node gateways — two replicas, each with its
 * own backend state — on one Redis, in front of the same two simulator backends. A 429 with
 * `retry-after-ms` seen through replica A keeps replica B away from that backend until the
 * cooldown ends (counted at the backend), and a replica started during a cooldown learns of it.
 */
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { chatBody, closeAfterEach, eventedGateway, post, sim } from "../harness/e2e.ts";
import { useRedis } from "../harness/redis.ts";
import { until } from "../harness/until.ts";

closeAfterEach();
const redis = useRedis();

const CHAT = "/v1/chat/completions";

function replicaConfig(ptu: string, payg: string, keyPrefix: string): SluiceConfigInput {
  return {
    state: { redis: { url: redis().url, keyPrefix } },
    backends: [
      { name: "ptu", url: ptu, kind: "openai", group: 1, models: ["gpt-4o"] },
      { name: "payg", url: payg, kind: "openai", group: 2, models: ["gpt-4o"] },
    ],
  };
}

describe("cooldowns shared between replicas through Redis", () => {
  it("a retry-after-ms: 3000 seen through replica A: replica B sends that backend nothing until it ends, then uses it again", async () => {
    const ptu = await sim("ptu");
    const payg = await sim("payg");
    const prefix = `t${Date.now().toString(36)}:`;
    const a = await eventedGateway(replicaConfig(ptu.url, payg.url, prefix));
    const b = await eventedGateway(replicaConfig(ptu.url, payg.url, prefix));
    // Both replicas use ptu first while it is well.
    for (const gw of [a, b]) expect(((await post(gw.url + CHAT, chatBody())).headers.get("x-sluice-backend"))).toBe("ptu");
    ptu.sim.reset();

    ptu.sim.script([{ status: 429, headers: { "retry-after-ms": "3000" } }]);
    const t0 = Date.now();
    const throttled = await post(a.url + CHAT, chatBody());
    expect(throttled.status).toBe(200);
    expect(throttled.headers.get("x-sluice-backend")).toBe("payg");
    expect(ptu.sim.stats().received).toBe(1);

    // Replica B: payg only, for as long as the cooldown lasts (B never saw the 429 itself).
    let served = 0;
    while (Date.now() - t0 < 2500) {
      const r = await post(b.url + CHAT, chatBody());
      expect(r.status).toBe(200);
      expect(r.headers.get("x-sluice-backend"), `${Date.now() - t0} ms after the 429`).toBe("payg");
      served++;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(served).toBeGreaterThan(5);
    expect(ptu.sim.stats().received).toBe(1);
    // After it: B goes back to ptu.
    await until("replica B using ptu again", async () => (await post(b.url + CHAT, chatBody())).headers.get("x-sluice-backend") === "ptu", 3000, 100);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(3000);
  });

  it("a replica started during a cooldown reads it from Redis and keeps away too", async () => {
    const ptu = await sim("ptu");
    const payg = await sim("payg");
    const prefix = `t${Date.now().toString(36)}b:`;
    const a = await eventedGateway(replicaConfig(ptu.url, payg.url, prefix));
    ptu.sim.script([{ status: 429, headers: { "retry-after-ms": "4000" } }]);
    expect((await post(a.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("payg");
    const late = await eventedGateway(replicaConfig(ptu.url, payg.url, prefix));
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 5; i++) expect((await post(late.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("payg");
    expect(ptu.sim.stats().received).toBe(1);
  });

  it("Redis stopped: both replicas keep answering, each with its own cooldowns; Redis back: cooldowns are shared again", async () => {
    const ptu = await sim("ptu");
    const payg = await sim("payg");
    const prefix = `t${Date.now().toString(36)}c:`;
    const a = await eventedGateway(replicaConfig(ptu.url, payg.url, prefix));
    const b = await eventedGateway(replicaConfig(ptu.url, payg.url, prefix));
    const health = async (url: string) => (await (await fetch(`${url}/_gateway/health`)).json()) as { status: string; sharedState: { store: string; reachable: boolean; shares: string[] } };
    expect(await health(a.url)).toMatchObject({ status: "ok", sharedState: { store: "redis", reachable: true, shares: ["budgets", "cooldowns", "breakers", "slots", "queue order", "latency"] } });
    await redis().stop();
    try {
      // Degraded, still serving: health and /metrics say so.
      await until("replica A seeing Redis gone", async () => (await health(a.url)).sharedState.reachable === false, 3000, 50);
      expect((await health(a.url)).status).toBe("degraded");
      expect(await (await fetch(`${a.url}/metrics`)).text()).toMatch(/^sluice_shared_state_up 0$/m);
      ptu.sim.script([{ status: 429, headers: { "retry-after-ms": "1000" } }]);
      expect((await post(a.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("payg");
      // B never heard of it: it still uses ptu (each replica on its own while Redis is down).
      const fromB = await post(b.url + CHAT, chatBody());
      expect(fromB.status).toBe(200);
      expect(fromB.headers.get("x-sluice-backend")).toBe("ptu");
    } finally {
      await redis().restart();
    }
    // Both reconnect (the backoff is at most 2 s; A's own 1 s cooldown is over by then); then a new cooldown through B reaches A.
    await new Promise((r) => setTimeout(r, 3000));
    expect((await health(b.url)).sharedState.reachable).toBe(true);
    expect(await (await fetch(`${b.url}/metrics`)).text()).toMatch(/^sluice_shared_state_up 1$/m);
    expect((await post(a.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("ptu");
    ptu.sim.reset();
    ptu.sim.script([{ status: 429, headers: { "retry-after-ms": "3000" } }]);
    expect((await post(b.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("payg");
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 3; i++) expect((await post(a.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("payg");
    expect(ptu.sim.stats().received).toBe(1);
  });

  it("without state.redis each replica keeps its own cooldowns (as documented)", async () => {
    const ptu = await sim("ptu");
    const payg = await sim("payg");
    const backends: SluiceConfigInput["backends"] = [
      { name: "ptu", url: ptu.url, kind: "openai", group: 1, models: ["gpt-4o"] },
      { name: "payg", url: payg.url, kind: "openai", group: 2, models: ["gpt-4o"] },
    ];
    const a = await eventedGateway({ backends });
    const b = await eventedGateway({ backends });
    ptu.sim.script([{ status: 429, headers: { "retry-after-ms": "3000" } }]);
    expect((await post(a.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("payg");
    expect((await post(b.url + CHAT, chatBody())).headers.get("x-sluice-backend")).toBe("ptu");
  });
});
