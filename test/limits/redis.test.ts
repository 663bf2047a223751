/**
 * The Redis rate limiter against a real redis-server on loopback: the limiter conformance suite,
 * the same admissions and views as the in-process limiter on one fake clock (randomised), keys
 * under the prefix that expire, and the fallback while Redis is unreachable.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Redis } from "ioredis";
import { openRedis, type RedisConnection } from "../../adapters/node/redis.ts";
import { RedisRateLimiter } from "../../adapters/node/redis-limiter.ts";
import { parseConfig } from "../../src/config/load.ts";
import { InProcessRateLimiter, type Admission, type LimitScope, type Reservation } from "../../src/governance/limits.ts";
import { startRedis, type RunningRedis } from "../harness/redis.ts";
import { rng } from "../harness/rng.ts";
import { limiterConformance } from "./limiter-suite.ts";

let redis: RunningRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

const connections: RedisConnection[] = [];
afterEach(async () => {
  for (const c of connections.splice(0)) await c.close();
});

async function connection(keyPrefix = "sluice:"): Promise<RedisConnection> {
  const c = await openRedis({ url: redis.url, keyPrefix });
  connections.push(c);
  expect(await c.ready(5_000)).toBe(true);
  return c;
}

limiterConformance("redis", async () => {
  const c = await openRedis({ url: redis.url, keyPrefix: "suite:" });
  await c.ready(5_000);
  const limiter = new RedisRateLimiter(c);
  return { limiter, close: async () => (limiter.close(), c.close()) };
});

const scope = (key: string, spec: LimitScope["spec"]): LimitScope => ({ key, spec });

describe("redis limiter: the same budgets as the in-process limiter", () => {
  it("on one fake clock, a random mix of reserve, settle and release gives the same admissions, waits and views", async () => {
    const clock = { t: 5_000_000 };
    const now = () => clock.t;
    const mem = new InProcessRateLimiter(now);
    const conn = await connection(`parity${Date.now()}:`);
    const red = new RedisRateLimiter(conn, { now });
    const random = rng(20240613);
    const specs: LimitScope["spec"][] = [{ tokensPerMinute: 1000 }, { requestsPerMinute: 3 }, { tokensPerMinute: 250, requestsPerMinute: 5 }, { tokensPerMinute: 7_777 }];
    const scopes = specs.map((spec, i) => scope(`caller:p${i}`, spec));
    const open: { mem: Reservation; red: Reservation }[] = [];
    const outcomes = { admitted: 0, refused: 0 };
    for (let step = 0; step < 400; step++) {
      clock.t += Math.floor(random() * 4_000);
      const op = random();
      if (op < 0.6 || open.length === 0) {
        const picked = scopes.filter(() => random() < 0.5);
        const ss = picked.length ? picked : [scopes[Math.floor(random() * scopes.length)]!];
        const tokens = random() < 0.1 ? random() * 2_000 : Math.floor(random() * 400);
        const a = mem.reserve(ss, tokens);
        const b = await red.reserve(ss, tokens);
        expect(b, `step ${step}`).toEqual(a);
        outcomes[a.ok ? "admitted" : "refused"]++;
        if (a.ok && b.ok) open.push({ mem: a.reservation, red: b.reservation });
      } else {
        const i = Math.floor(random() * open.length);
        const [r] = open.splice(i, 1);
        if (op < 0.85) {
          const used = random() < 0.1 ? r!.mem.tokens * 5 + 3 : Math.floor(random() * (r!.mem.tokens + 1));
          mem.settle(r!.mem, used);
          red.settle(r!.red, used);
        } else {
          mem.release(r!.mem);
          red.release(r!.red);
        }
      }
    }
    expect(red.shared).toBe(true);
    // Both sides of the budget were exercised.
    expect(outcomes.admitted).toBeGreaterThan(30);
    expect(outcomes.refused).toBeGreaterThan(30);
  });

  it("a budget-sized reservation refused now is admitted exactly at the advertised wait, not a millisecond before", async () => {
    const clock = { t: 1_000_000 };
    const red = new RedisRateLimiter(await connection(`exact${Date.now()}:`), { now: () => clock.t });
    const s = scope("caller:a", { tokensPerMinute: 200 });
    const first = await red.reserve([s], 200);
    expect(first).toMatchObject({ ok: true, view: { limitTokens: 200, remainingTokens: 0, resetTokensMs: 60_000 } });
    const r = await red.reserve([s], 200);
    expect(r).toMatchObject({ ok: false, limit: "tokens", retryAfterMs: 60_000 });
    clock.t += 59_999;
    expect(await red.reserve([s], 200)).toMatchObject({ ok: false, retryAfterMs: 1 });
    clock.t += 1;
    expect((await red.reserve([s], 200)).ok).toBe(true);
  });

  it("two limiters on two connections (two replicas) share one budget, admitted in one atomic step", async () => {
    const a = new RedisRateLimiter(await connection("shared:"));
    const b = new RedisRateLimiter(await connection("shared:"));
    const s = scope("caller:both", { tokensPerMinute: 1000, requestsPerMinute: 10 });
    const results = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).reserve([s], 10)));
    expect(results.filter((r) => r.ok)).toHaveLength(10);
    const tokens = scope("caller:tokens", { tokensPerMinute: 1000 });
    const t = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).reserve([tokens], 300)));
    expect(t.filter((r) => r.ok)).toHaveLength(3);
  });

  it("keys carry the prefix and expire", async () => {
    const prefix = `ttl${Date.now()}:`;
    const red = new RedisRateLimiter(await connection(prefix));
    await red.reserve([scope("caller:x", { tokensPerMinute: 600, requestsPerMinute: 5 })], 60);
    const raw = new Redis(redis.url);
    try {
      const keys = (await raw.keys("*")).filter((k) => k.includes("caller:x"));
      expect(keys.sort()).toEqual([`${prefix}{limits}:r:caller:x`, `${prefix}{limits}:t:caller:x`]);
      for (const k of keys) {
        const ttl = await raw.pttl(k);
        // Full again within 12 s (tokens) or 12 s (one request of 5 per minute), then a minute's grace.
        expect(ttl).toBeGreaterThan(60_000);
        expect(ttl).toBeLessThanOrEqual(72_100);
      }
    } finally {
      raw.disconnect();
    }
  });

  it("parses the state section: redis:// and rediss:// URLs, a bounded prefix, nothing else", () => {
    const backends = [{ name: "b", url: "http://127.0.0.1:1", kind: "openai" as const, models: ["m"] }];
    expect(parseConfig({ backends, state: { redis: { url: "rediss://:secret@cache.example:6380" } } }).state?.redis).toEqual({ url: "rediss://:secret@cache.example:6380", keyPrefix: "sluice:", leaseMs: 10_000 });
    expect(parseConfig({ backends }).state).toBeUndefined();
    expect(() => parseConfig({ backends, state: { redis: { url: "http://cache.example" } } })).toThrow(/redis/);
    expect(() => parseConfig({ backends, state: { redis: { url: "redis://x", keyPrefix: "a".repeat(65) } } })).toThrow();
    expect(() => parseConfig({ backends, state: { redis: { url: "redis://x", other: 1 } } } as never)).toThrow();
    expect(() => parseConfig({ backends, state: { redis: { url: "redis://x", leaseMs: 500 } } })).toThrow(/leaseMs/);
  });

  it("server.workers above 1 needs state.redis and no directory job store", () => {
    const backends = [{ name: "b", url: "http://127.0.0.1:1", kind: "openai" as const, models: ["m"] }];
    expect(() => parseConfig({ backends, server: { workers: 2 } })).toThrow(/more than one worker needs state\.redis/);
    expect(() => parseConfig({ backends, server: { workers: 2 }, state: { redis: { url: "redis://x" } }, jobs: { store: { type: "directory" } } })).toThrow(/directory job store/);
    expect(parseConfig({ backends, server: { workers: 2 }, state: { redis: { url: "redis://x" } } }).server.workers).toBe(2);
    expect(parseConfig({ backends }).server.workers).toBe(1);
    expect(() => parseConfig({ backends, server: { workers: 0 } })).toThrow();
  });
});

describe("redis limiter: Redis unreachable", () => {
  it("falls back to in-process budgets at once, warns once per outage and again when shared state resumes", async () => {
    const own = await startRedis();
    const warnings: string[] = [];
    const conn = await openRedis({ url: own.url, keyPrefix: "outage:" }, { maxBackoffMs: 200 });
    connections.push(conn);
    try {
      expect(await conn.ready(5_000)).toBe(true);
      const red = new RedisRateLimiter(conn, { warn: (m) => warnings.push(m), retryMs: 100 });
      const s = scope("caller:o", { requestsPerMinute: 3 });
      expect((await red.reserve([s], 1)).ok).toBe(true);
      expect(red.shared).toBe(true);
      await own.stop();
      // Down: every call answers from the fallback, quickly, and the warning comes once.
      const during: Admission[] = [];
      for (let i = 0; i < 5; i++) during.push(await red.reserve([s], 1));
      expect(during.map((a) => a.ok)).toEqual([true, true, true, false, false]);
      for (const a of during) if (a.ok) red.settle(a.reservation, 1);
      expect(red.shared).toBe(false);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/WARNING shared budgets unavailable/);
      await own.restart();
      expect(await conn.ready(10_000)).toBe(true);
      // Back: the first call that reaches Redis ends the outage; the restarted Redis is empty, so the budget is whole.
      let back: Admission | undefined;
      for (let i = 0; i < 50 && !red.shared; i++) {
        back = await red.reserve([scope(`caller:probe${i}`, { requestsPerMinute: 100 })], 1);
        if (!red.shared) await new Promise((r) => setTimeout(r, 50));
      }
      expect(back?.ok).toBe(true);
      expect(red.shared).toBe(true);
      expect(warnings).toHaveLength(2);
      expect(warnings[1]).toMatch(/shared between replicas again/);
      const after = [await red.reserve([s], 1), await red.reserve([s], 1), await red.reserve([s], 1), await red.reserve([s], 1)];
      expect(after.map((a) => a.ok)).toEqual([true, true, true, false]);
    } finally {
      await own.stop();
    }
  });

  it("a Redis that takes commands but answers nothing: the command times out and the fallback answers", async () => {
    const own = await startRedis();
    const warnings: string[] = [];
    const conn = await openRedis({ url: own.url, keyPrefix: "frozen:" }, { commandTimeoutMs: 250 });
    connections.push(conn);
    try {
      expect(await conn.ready(5_000)).toBe(true);
      const red = new RedisRateLimiter(conn, { warn: (m) => warnings.push(m) });
      const s = scope("caller:f", { requestsPerMinute: 5 });
      expect((await red.reserve([s], 1)).ok).toBe(true);
      own.pause();
      const a = await red.reserve([s], 1);
      expect(a.ok).toBe(true);
      expect(red.shared).toBe(false);
      // The next ones go straight to the fallback (no second wait), warned about once.
      const b = await red.reserve([s], 1);
      expect(b.ok).toBe(true);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/timed out/i);
    } finally {
      own.resume();
      await own.stop();
    }
  });

  it("a Redis that never answered: start is not held up, reservations come from the fallback", async () => {
    const own = await startRedis();
    const url = own.url;
    await own.stop();
    const warnings: string[] = [];
    const conn = await openRedis({ url, keyPrefix: "never:" }, { maxBackoffMs: 200 });
    connections.push(conn);
    expect(await conn.ready(300)).toBe(false);
    const red = new RedisRateLimiter(conn, { warn: (m) => warnings.push(m) });
    const s = scope("caller:n", { requestsPerMinute: 1 });
    expect((await red.reserve([s], 1)).ok).toBe(true);
    const refused = await red.reserve([s], 1);
    expect(refused).toMatchObject({ ok: false, limit: "requests" });
    expect(red.shared).toBe(false);
    expect(warnings.length).toBeGreaterThanOrEqual(1);
    expect(warnings.length).toBeLessThanOrEqual(1);
  });
});
