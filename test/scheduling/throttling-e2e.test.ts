/**
 * The queue keeps its promise under throttling (issue 10), on Node over real sockets against
 * simulator backends: requests whose attempts drew 429s wait for the earliest cooldown within
 * their TTL; every change of a backend's availability (a cooldown's end, a breaker going
 * half-open) wakes the queue; a backend coming back gets one probe first; priority order holds
 * at a cooldown's end; queue time is counted once. What is asserted is counted at the backend.
 */
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { closeAfterEach, eventedGateway, sim } from "../harness/e2e.ts";
import { until } from "../harness/until.ts";

closeAfterEach();

async function gateway(input: SluiceConfigInput) {
  const { running, events } = await eventedGateway(input);
  const chat = async (headers: Record<string, string> = {}) => {
    const started = Date.now();
    const r = await fetch(`${running.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }], max_tokens: 4 }),
    });
    await r.arrayBuffer();
    return { status: r.status, backend: r.headers.get("x-sluice-backend"), ms: Date.now() - started, queueMs: Number(r.headers.get("x-sluice-queue-ms")) };
  };
  const health = async () => (await (await fetch(`${running.url}/_gateway/health`)).json()) as { queue: { waiting: number } };
  return { url: running.url, events, chat, health };
}

const backend = (name: string, url: string, extra: Record<string, unknown> = {}) => ({ name, url, models: ["gpt-4o"], ...extra });
const quietBreaker = { breaker: { failureThreshold: 1_000, openMs: 30_000 } };

describe("the queue under throttling", () => {
  it("a request whose own attempts drew 429s waits for the earliest cooldown within its TTL, then is served", async () => {
    const b1 = await sim("b1");
    const b2 = await sim("b2");
    b1.sim.script([{ status: 429, headers: { "retry-after-ms": "1000" } }]);
    b2.sim.script([{ status: 429, headers: { "retry-after-ms": "3000" } }]);
    const gw = await gateway({ resilience: quietBreaker, backends: [backend("b1", b1.url, { group: 1 }), backend("b2", b2.url, { group: 2 })] });
    const r = await gw.chat();
    expect(r.status).toBe(200);
    expect(r.backend).toBe("b1");
    expect(r.ms).toBeGreaterThanOrEqual(950);
    expect(r.ms).toBeLessThan(2500);
    expect(b1.sim.stats().requests).toHaveLength(2);
    expect(b2.sim.stats().requests).toHaveLength(1);
  });

  it("the single-backend case: 429 then waits for its own cooldown, instead of passing the 429 through", async () => {
    const b = await sim("b");
    b.sim.script([{ status: 429, headers: { "retry-after-ms": "600" } }]);
    const gw = await gateway({ resilience: quietBreaker, backends: [backend("b", b.url)] });
    const r = await gw.chat();
    expect(r.status).toBe(200);
    expect(r.ms).toBeGreaterThanOrEqual(550);
  });

  it("requests left waiting after a renewed cooldown are all sent once the backend stops throttling", async () => {
    const b = await sim("b");
    b.sim.script([
      { status: 429, headers: { "retry-after": "1" } },
      { status: 429, headers: { "retry-after": "1" } },
      { status: 429, headers: { "retry-after": "1" } },
    ]);
    const gw = await gateway({ scheduling: { defaultTtlMs: 15_000 }, resilience: quietBreaker, backends: [backend("b", b.url, { maxConcurrency: 2 })] });
    const first = gw.chat();
    await until("the first 429", () => b.sim.stats().requests.length >= 1);
    const rest = Array.from({ length: 5 }, () => gw.chat());
    const all = await Promise.all([first, ...rest]);
    expect(all.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    // Three 429s, then each of the six served once.
    expect(b.sim.stats().requests).toHaveLength(9);
    expect((await gw.health()).queue.waiting).toBe(0);
  }, 20_000);

  it("requests waiting when the breaker goes half-open are sent: the probe first, then the other", async () => {
    const b = await sim("b");
    b.sim.script([{ status: 503, headers: { "retry-after-ms": "300" } }]);
    const gw = await gateway({ scheduling: { defaultTtlMs: 6_000 }, resilience: { breaker: { failureThreshold: 1, openMs: 1_200 } }, backends: [backend("b", b.url)] });
    // The 503 opens the breaker (threshold 1) and cools the backend for 300 ms: the request that
    // drew it waits for the backend to come back, and so does one arriving right after.
    const first = gw.chat();
    await until("the 503", () => b.sim.stats().requests.length >= 1);
    const second = gw.chat();
    const [r1, r2] = await Promise.all([first, second]);
    expect([r1.status, r2.status]).toEqual([200, 200]);
    const at = b.sim.stats().requests.map((r) => r.at);
    expect(at).toHaveLength(3);
    // Nothing before the breaker let its probe through (1.2 s after it opened).
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(1_150);
  });

  it("a backend that keeps throttling gets exactly one request at each cooldown's end, not the whole queue", async () => {
    const b = await sim("b");
    const cycles = 3;
    b.sim.script(Array.from({ length: cycles + 1 }, () => ({ status: 429, headers: { "retry-after-ms": "400" } })));
    const gw = await gateway({ scheduling: { defaultTtlMs: 10_000 }, resilience: quietBreaker, backends: [backend("b", b.url, { maxConcurrency: 10 })] });
    const first = gw.chat();
    await until("the first 429", () => b.sim.stats().requests.length >= 1);
    const queued = Array.from({ length: 8 }, () => gw.chat());
    const all = await Promise.all([first, ...queued]);
    expect(all.every((r) => r.status === 200)).toBe(true);
    const at = b.sim.stats().requests.map((r) => r.at);
    // The 429s came one per cooldown end: each throttled request arrived ≥ ~400 ms after the one before.
    for (let i = 1; i <= cycles; i++) expect(at[i]! - at[i - 1]!).toBeGreaterThanOrEqual(350);
    // Then the probe succeeded and the others followed.
    expect(at).toHaveLength(cycles + 1 + 9);
  }, 20_000);

  it("priority order holds at a cooldown's end: high before the two lows that queued first", async () => {
    const b = await sim("b");
    b.sim.script([{ status: 429, headers: { "retry-after-ms": "500" } }]);
    const gw = await gateway({ resilience: quietBreaker, backends: [backend("b", b.url, { maxConcurrency: 1 })] });
    const first = gw.chat({ "x-test-id": "first" });
    await until("the 429", () => b.sim.stats().requests.length >= 1);
    const low1 = gw.chat({ "x-priority": "low", "x-test-id": "low-1" });
    await until("low-1 queued", async () => (await gw.health()).queue.waiting >= 1);
    const low2 = gw.chat({ "x-priority": "low", "x-test-id": "low-2" });
    await until("low-2 queued", async () => (await gw.health()).queue.waiting >= 2);
    const high = gw.chat({ "x-priority": "high", "x-test-id": "high" });
    await until("high queued", async () => (await gw.health()).queue.waiting >= 3);
    await Promise.all([first, low1, low2, high]);
    const order = b.sim.stats().requests.map((r) => r.headers["x-test-id"]);
    // At the cooldown's end the most urgent waiter goes first (high, as the one probe), then the
    // request that drew the 429 (normal, queued before the lows), then the lows in their order.
    expect(order).toEqual(["first", "high", "first", "low-1", "low-2"]);
  });

  it("queue time is counted once: queueMs never exceeds totalMs, even after waiting for a cooldown and failing", async () => {
    const b = await sim("b");
    b.sim.script([{ status: 429, headers: { "retry-after-ms": "700" } }, { status: 500 }]);
    const gw = await gateway({ resilience: quietBreaker, backends: [backend("b", b.url, { maxConcurrency: 1 })] });
    const a = gw.chat();
    await until("the 429", () => b.sim.stats().requests.length >= 1);
    const c = gw.chat();
    const results = await Promise.all([a, c]);
    await until("two events", () => gw.events().length === 2);
    for (const e of gw.events()) expect(e.queueMs).toBeLessThanOrEqual(e.totalMs);
    for (const r of results) expect(r.queueMs).toBeLessThanOrEqual(r.ms);
  });

  it("the latency strategy shares between two equally fast backends (each 35–65 % of 200 requests)", async () => {
    const b1 = await sim("b1");
    const b2 = await sim("b2");
    const gw = await gateway({ backends: [backend("b1", b1.url), backend("b2", b2.url)] });
    for (let i = 0; i < 200; i++) await gw.chat();
    const n1 = b1.sim.stats().requests.length;
    expect(n1 + b2.sim.stats().requests.length).toBe(200);
    expect(n1).toBeGreaterThanOrEqual(70);
    expect(n1).toBeLessThanOrEqual(130);
  });
});
