/**
 * The rate-limiter conformance suite: the same budgets from every RateLimiter implementation
 * (in-process; the Durable Object on Workers).
 */
import { afterEach, describe, expect, it } from "vitest";
import type { LimitScope, RateLimiter } from "../../src/governance/limits.ts";

export interface LimiterUnderTest {
  limiter: RateLimiter;
  close(): Promise<void>;
}
export type MakeLimiter = () => Promise<LimiterUnderTest>;

let n = 0;
const caller = (spec: LimitScope["spec"]): LimitScope => ({ key: `caller:test${++n}`, spec });

export function limiterConformance(name: string, make: MakeLimiter): void {
  describe(`rate limiter conformance [${name}]`, () => {
    let current: LimiterUnderTest | undefined;
    afterEach(async () => {
      await current?.close();
      current = undefined;
    });
    const start = async () => (current = await make()).limiter;

    it("admits until the token budget is reserved, then refuses with the wait and the budget", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000 });
      const a = await l.reserve([scope], 310);
      const b = await l.reserve([scope], 310);
      const c = await l.reserve([scope], 310);
      expect([a.ok, b.ok, c.ok]).toEqual([true, true, true]);
      expect(c.view).toMatchObject({ limitTokens: 1000, remainingTokens: 70 });
      const d = await l.reserve([scope], 310);
      if (d.ok) throw new Error("a fourth reservation of 310 was admitted against a budget of 1000");
      // 240 tokens short at 1000 per minute: 14.4 s.
      expect(d.retryAfterMs).toBeGreaterThan(14_000);
      expect(d.retryAfterMs).toBeLessThanOrEqual(14_500);
      expect(d.view).toMatchObject({ limitTokens: 1000, remainingTokens: 70 });
    });

    it("settles with real usage: unused tokens come back, extra ones are charged", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000 });
      const a = await l.reserve([scope], 600);
      if (!a.ok) throw new Error("expected admission");
      l.settle(a.reservation, 100);
      const b = await l.reserve([scope], 850);
      if (!b.ok) throw new Error("the 500 unused tokens of the first reservation did not come back");
      l.settle(b.reservation, 1000);
      const c = await l.reserve([scope], 10);
      expect(c.ok).toBe(false);
    });

    it("gives the whole reservation back when the request got no answer", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000 });
      const a = await l.reserve([scope], 900);
      if (!a.ok) throw new Error("expected admission");
      expect((await l.reserve([scope], 900)).ok).toBe(false);
      l.release(a.reservation);
      expect((await l.reserve([scope], 900)).ok).toBe(true);
    });

    it("counts requests per minute, and keeps callers apart", async () => {
      const l = await start();
      const one = caller({ requestsPerMinute: 2 });
      const two = caller({ requestsPerMinute: 2 });
      expect((await l.reserve([one], 1)).ok).toBe(true);
      expect((await l.reserve([one], 1)).ok).toBe(true);
      const refused = await l.reserve([one], 1);
      expect(refused.ok).toBe(false);
      expect(refused.view).toMatchObject({ limitRequests: 2, remainingRequests: 0 });
      expect((await l.reserve([two], 1)).ok).toBe(true);
    });

    it("refuses when any one of several scopes is exhausted, taking from none", async () => {
      const l = await start();
      const roomy = caller({ tokensPerMinute: 10_000 });
      const tight = caller({ tokensPerMinute: 100 });
      expect((await l.reserve([roomy, tight], 150)).ok).toBe(false);
      // Neither scope was charged for the refused request: each still has its whole budget.
      expect((await l.reserve([roomy], 10_000)).ok).toBe(true);
      expect((await l.reserve([tight], 100)).ok).toBe(true);
    });

    it("never admits more than the budget to concurrent reservations", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000 });
      const results = await Promise.all(Array.from({ length: 10 }, () => l.reserve([scope], 300)));
      expect(results.filter((r) => r.ok)).toHaveLength(3);
    });
  });
}
