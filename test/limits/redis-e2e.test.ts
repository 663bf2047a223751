/**
 * Shared budgets end to end (issue 13, item 3): two Node gateways on 127.0.0.1, one redis-server
 * and one simulator backend, real sockets, the global `fetch` as the client. A caller's requests
 * spread over both replicas get exactly the admissions one replica would give, counted at the
 * backend; with Redis stopped each replica answers from its own budgets (the documented
 * fallback) and nothing hangs; with Redis back the budgets are shared again.
 */
import { randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { startGatewayServer, type RunningGateway } from "../../adapters/node/server.ts";
import { RedisRateLimiter } from "../../adapters/node/redis-limiter.ts";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { startRedis, type RunningRedis } from "../harness/redis.ts";

const MODEL = "gpt-4o";
const CALLERS = ["team-a", "team-b", "team-c", "team-d", "probe"] as const;
type Caller = (typeof CALLERS)[number];

const hash = async (k: string) => `sha256:${Buffer.from(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(k))).toString("hex")}`;

let closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  closers = [];
});

interface Setup {
  redis: RunningRedis;
  backend: RunningSimulator;
  a: RunningGateway;
  b: RunningGateway;
}

async function setup(limits: Partial<Record<Caller, { requestsPerMinute?: number; tokensPerMinute?: number }>>): Promise<Setup> {
  const redis = await startRedis();
  closers.push(() => redis.stop());
  const backend = await startSimulator({ name: "b1" });
  closers.push(() => backend.close());
  const config: SluiceConfigInput = {
    metering: { sinks: [] },
    resilience: { timeoutMs: 10_000 },
    auth: { apiKeys: await Promise.all(CALLERS.map(async (c) => ({ hash: await hash(`key-${c}`), caller: c }))) },
    limits: { callers: limits },
    state: { redis: { url: redis.url, keyPrefix: `e2e${randomUUID().slice(0, 8)}:` } },
    backends: [{ name: "b1", url: backend.url, kind: "openai", models: [MODEL] }],
  };
  const start = async () => {
    const g = await startGatewayServer(parseConfig(config), { host: "127.0.0.1", port: 0 });
    closers.push(() => g.close(0));
    return g;
  };
  const a = await start();
  const b = await start();
  return { redis, backend, a, b };
}

const limiterOf = (g: RunningGateway): RedisRateLimiter => {
  const l = g.gateway.runtime.limiter;
  if (!(l instanceof RedisRateLimiter)) throw new Error("the gateway's limiter is not the Redis one");
  return l;
};

interface Reply {
  status: number;
  headers: Headers;
}

async function send(g: RunningGateway, caller: Caller, run: string, extra: Record<string, unknown> = {}, fault: Record<string, unknown> = {}): Promise<Reply> {
  const res = await fetch(`${g.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", "api-key": `key-${caller}`, "x-test-run": run, "x-sim-fault": JSON.stringify({ chunks: 4, ...fault }) },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 8, ...extra }),
    // Nothing may hang: a request still unanswered after this long fails the test.
    signal: AbortSignal.timeout(15_000),
  });
  await res.arrayBuffer();
  return { status: res.status, headers: res.headers };
}

const receivedFor = (s: RunningSimulator, run: string) => s.sim.stats().requests.filter((r) => r.headers["x-test-run"] === run).length;

/** `n` requests of one caller, alternating between the two gateways, all sent at once. */
function alternating(s: Setup, n: number, caller: Caller, run: string, extra?: Record<string, unknown>, fault?: Record<string, unknown>): Promise<Reply[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => send(i % 2 === 0 ? s.a : s.b, caller, run, extra, fault)));
}

function expectExactlyTen(replies: Reply[], s: Setup, run: string): void {
  const ok = replies.filter((r) => r.status === 200);
  const refused = replies.filter((r) => r.status === 429);
  expect(ok).toHaveLength(10);
  expect(refused).toHaveLength(20);
  for (const r of refused) {
    expect(Number(r.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(r.headers.get("retry-after-ms")).toMatch(/^\d+$/);
    expect(r.headers.get("x-ratelimit-remaining-requests")).toBe("0");
  }
  expect(receivedFor(s.backend, run)).toBe(10);
}

describe("shared budgets on Redis: two gateways, one Redis, one backend", () => {
  it("requestsPerMinute 10, 30 requests alternating between the replicas: exactly 10 admitted, counted at the backend", async () => {
    const s = await setup({ "team-a": { requestsPerMinute: 10 } });
    expect([limiterOf(s.a).shared, limiterOf(s.b).shared]).toEqual([true, true]);
    const run = randomUUID();
    expectExactlyTen(await alternating(s, 30, "team-a", run), s, run);
  });

  it("a token budget is one budget across replicas: reserved at admission, settled with the real usage", async () => {
    const s = await setup({ "team-b": { tokensPerMinute: 1000 } });
    const run = randomUUID();
    // Each request reserves its prompt estimate + 300; the backend holds the answers a moment so
    // every reservation is made before any is settled: 3 fit in 1000, wherever they arrive.
    const replies = await alternating(s, 12, "team-b", run, { max_tokens: 300 }, { firstByteDelayMs: 500 });
    expect(replies.filter((r) => r.status === 200)).toHaveLength(3);
    expect(replies.filter((r) => r.status === 429)).toHaveLength(9);
    for (const r of replies.filter((x) => x.status === 429)) expect(r.headers.get("x-ratelimit-limit-tokens")).toBe("1000");
    expect(receivedFor(s.backend, run)).toBe(3);
    // Settled with real usage (a few tokens each): the unused reservations came back. Now a
    // reservation held on B (its answer delayed) counts on A: A sees B's 300 taken, one budget.
    const held = randomUUID();
    const onB = send(s.b, "team-b", held, { max_tokens: 300 }, { firstByteDelayMs: 1_000 });
    for (let i = 0; i < 200 && receivedFor(s.backend, held) === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(receivedFor(s.backend, held)).toBe(1);
    const fromA = await send(s.a, "team-b", held, { max_tokens: 300 });
    const fromB = await onB;
    expect([fromB.status, fromA.status]).toEqual([200, 200]);
    const afterB = Number(fromB.headers.get("x-ratelimit-remaining-tokens"));
    const afterA = Number(fromA.headers.get("x-ratelimit-remaining-tokens"));
    // Both reservations (≥ 300 each) out of what the first round left: A's view is B's less its own (and a few tokens of refill).
    expect(afterA).toBeLessThanOrEqual(afterB - 300 + 30);
    expect(afterB).toBeGreaterThan(300);
  });

  it("Redis stopped mid-run: every request is answered from per-replica budgets; restarted: shared again", async () => {
    const s = await setup({ "team-c": { requestsPerMinute: 2 }, "team-d": { requestsPerMinute: 10 }, probe: { requestsPerMinute: 100_000 } });
    const warn = console.warn;
    const warnings: string[] = [];
    console.warn = (...args: unknown[]) => void warnings.push(args.map(String).join(" "));
    closers.push(async () => (console.warn = warn));

    const before = randomUUID();
    expect((await send(s.a, "team-c", before)).status).toBe(200);
    await s.redis.stop();
    // Sequential, alternating: each replica now enforces team-c's 2 per minute on its own.
    const during = randomUUID();
    const replies: Reply[] = [];
    for (let i = 0; i < 8; i++) replies.push(await send(i % 2 === 0 ? s.a : s.b, "team-c", during));
    expect(replies.every((r) => r.status === 200 || r.status === 429)).toBe(true);
    expect(replies.filter((r) => r.status === 200)).toHaveLength(4);
    expect(receivedFor(s.backend, during)).toBe(4);
    expect([limiterOf(s.a).shared, limiterOf(s.b).shared]).toEqual([false, false]);
    expect(warnings.filter((w) => /WARNING shared budgets unavailable/.test(w))).toHaveLength(2);

    await s.redis.restart();
    // Probe until both replicas have reached Redis again (reconnect backoff is at most 2 s).
    const probe = randomUUID();
    for (let i = 0; i < 100 && !(limiterOf(s.a).shared && limiterOf(s.b).shared); i++) {
      await Promise.all([send(s.a, "probe", probe), send(s.b, "probe", probe)]);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect([limiterOf(s.a).shared, limiterOf(s.b).shared]).toEqual([true, true]);
    expect(warnings.filter((w) => /shared between replicas again/.test(w))).toHaveLength(2);
    // A second cross-replica admission check: one budget again.
    const after = randomUUID();
    expectExactlyTen(await alternating(s, 30, "team-d", after), s, after);
  });
});
