/**
 * Breakers shared through Redis (CONTRACT §9): two Node gateways — two replicas — on one Redis,
 * in front of one simulator backend. The breaker opened through replica A is open on B (B sends
 * the backend nothing), and after the open interval exactly one half-open probe reaches the
 * backend across both: A's; its success closes the circuit on B too.
 */
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { chatBody, closeAfterEach, eventedGateway, post, sim } from "../harness/e2e.ts";
import { useRedis } from "../harness/redis.ts";
import { until } from "../harness/until.ts";

closeAfterEach();
const redis = useRedis();

const CHAT = "/v1/chat/completions";
const health = async (url: string) => ((await (await fetch(`${url}/_gateway/health`)).json()) as { backends: { name: string; breaker: string }[] }).backends[0]!.breaker;

describe("breakers shared between replicas through Redis", () => {
  it("opened through replica A, open on B; after the interval one probe in all, and its success closes B too", async () => {
    const b = await sim("b");
    const config: SluiceConfigInput = {
      state: { redis: { url: redis().url, keyPrefix: `t${Date.now().toString(36)}:` } },
      resilience: { breaker: { failureThreshold: 2, openMs: 1000 } },
      backends: [{ name: "b", url: b.url, kind: "openai", models: ["gpt-4o"] }],
    };
    const a = await eventedGateway(config);
    const other = await eventedGateway(config);
    b.sim.setAlways({ status: 500 });
    for (let i = 0; i < 2; i++) expect((await post(a.url + CHAT, chatBody())).status).toBe(500);
    expect(b.sim.stats().received).toBe(2);
    expect(await health(a.url)).toBe("open");
    await until("the breaker open on replica B", async () => (await health(other.url)) === "open", 2000, 20);
    // B refuses at once: the circuit is open there too, nothing reaches the backend.
    const refused = await post(other.url + CHAT, chatBody());
    expect(refused.status).toBe(503);
    expect(b.sim.stats().received).toBe(2);

    b.sim.setAlways(null);
    await new Promise((r) => setTimeout(r, 1100));
    // Past A's interval: B still holds (A probes), A sends the one probe.
    expect((await post(other.url + CHAT, chatBody())).status).toBe(503);
    expect(b.sim.stats().received).toBe(2);
    const probe = await post(a.url + CHAT, chatBody());
    expect(probe.status).toBe(200);
    expect(b.sim.stats().received).toBe(3);
    await until("the breaker closed on replica B", async () => (await health(other.url)) === "closed", 2000, 20);
    expect((await post(other.url + CHAT, chatBody())).status).toBe(200);
    expect(b.sim.stats().received).toBe(4);
  });

  it("a replica whose opener never probes probes itself once the hold ends", async () => {
    const b = await sim("b");
    const config: SluiceConfigInput = {
      state: { redis: { url: redis().url, keyPrefix: `t${Date.now().toString(36)}x:` } },
      resilience: { breaker: { failureThreshold: 1, openMs: 500 } },
      backends: [{ name: "b", url: b.url, kind: "openai", models: ["gpt-4o"] }],
    };
    const a = await eventedGateway(config);
    const other = await eventedGateway(config);
    b.sim.script([{ status: 500 }]);
    expect((await post(a.url + CHAT, chatBody())).status).toBe(500);
    await until("the breaker open on replica B", async () => (await health(other.url)) === "open", 2000, 20);
    await a.running.close(0);
    // A is gone: B waits out A's interval plus the probe grace (5 s), then probes itself.
    await until("replica B probing by itself", async () => (await post(other.url + CHAT, chatBody())).status === 200, 8000, 250);
    expect(await health(other.url)).toBe("closed");
  }, 15_000);
});
