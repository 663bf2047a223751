/**
 * The rate-limiter conformance suite: the same budgets from every RateLimiter implementation
 * (in-process; the Durable Object on Workers).
 */
import { afterEach, describe, expect, it } from "vitest";
import { budgetHeaders, MAX_RETRY_AFTER_MS, type Admission, type LimitScope, type RateLimiter } from "../../src/governance/limits.ts";

export interface LimiterUnderTest {
  limiter: RateLimiter;
  close(): Promise<void>;
}
export type MakeLimiter = () => Promise<LimiterUnderTest>;

let n = 0;
const caller = (spec: LimitScope["spec"]): LimitScope => ({ key: `caller:test${++n}`, spec });

/** A refusal whose wait is usable: a whole number of ms, at least 1, finite, and its headers plain whole numbers. */
function usableRefusal(a: Admission): Extract<Admission, { ok: false }> {
  if (a.ok) throw new Error(`expected a refusal, got an admission of ${a.reservation.tokens} tokens`);
  expect(Number.isSafeInteger(a.retryAfterMs), `retryAfterMs ${a.retryAfterMs}`).toBe(true);
  if (!a.never) {
    expect(a.retryAfterMs).toBeGreaterThanOrEqual(1);
    expect(a.retryAfterMs).toBeLessThanOrEqual(MAX_RETRY_AFTER_MS);
  }
  for (const [name, v] of Object.entries(budgetHeaders(a.view))) expect(v, name).toMatch(name.startsWith("x-ratelimit-reset-") ? /^\d+ms$/ : /^\d+$/);
  return a;
}

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

    it("a refusal names the limit that refused it, and its wait is no longer than that budget's reset", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000, requestsPerMinute: 3 });
      expect((await l.reserve([scope], 900)).ok).toBe(true);
      const byTokens = usableRefusal(await l.reserve([scope], 500));
      expect(byTokens.limit).toBe("tokens");
      expect(byTokens.view.remainingTokens!).toBeLessThan(500);
      expect(byTokens.view.resetTokensMs!).toBeGreaterThanOrEqual(byTokens.retryAfterMs);
      // 400 short at 1000 per minute: 24 s.
      expect(byTokens.retryAfterMs).toBeGreaterThan(23_500);
      expect(byTokens.retryAfterMs).toBeLessThanOrEqual(24_000);
      expect((await l.reserve([scope], 10)).ok).toBe(true);
      expect((await l.reserve([scope], 10)).ok).toBe(true);
      const byRequests = usableRefusal(await l.reserve([scope], 10));
      expect(byRequests.limit).toBe("requests");
      expect(byRequests.view).toMatchObject({ limitRequests: 3, remainingRequests: 0 });
      expect(byRequests.view.resetRequestsMs!).toBeGreaterThanOrEqual(byRequests.retryAfterMs);
      // One request back at 3 per minute: 20 s.
      expect(byRequests.retryAfterMs).toBeGreaterThan(19_500);
      expect(byRequests.retryAfterMs).toBeLessThanOrEqual(20_000);
    });

    it("a reservation above the whole token budget is refused as never admissible and takes nothing", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 200, requestsPerMinute: 5 });
      const big = usableRefusal(await l.reserve([scope], 276));
      expect(big).toMatchObject({ never: true, limit: "tokens", retryAfterMs: 0 });
      expect(big.view.limitTokens).toBe(200);
      // Exactly the budget fits, and the refused request took neither tokens nor a request.
      const whole = await l.reserve([scope], 200);
      if (!whole.ok) throw new Error("a reservation of the whole budget was refused");
      expect(whole.view).toMatchObject({ limitTokens: 200, remainingTokens: 0, limitRequests: 5, remainingRequests: 4 });
      // Now it waits for the budget to be full again: about a minute, never more.
      const again = usableRefusal(await l.reserve([scope], 200));
      expect(again.limit).toBe("tokens");
      expect(again.never).toBeUndefined();
      expect(again.retryAfterMs).toBeGreaterThan(59_000);
      expect(again.retryAfterMs).toBeLessThanOrEqual(60_000);
      expect(again.view.resetTokensMs!).toBeGreaterThanOrEqual(again.retryAfterMs);
    });

    it("a usage report far beyond the reservation leaves a finite, whole wait", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000 });
      const a = await l.reserve([scope], 100);
      if (!a.ok) throw new Error("expected admission");
      l.settle(a.reservation, 1e300);
      const r = usableRefusal(await l.reserve([scope], 1000));
      expect(r.limit).toBe("tokens");
      expect(r.view).toMatchObject({ limitTokens: 1000, remainingTokens: 0 });
      expect(r.retryAfterMs).toBeGreaterThan(60 * 60_000);
    });

    it("once the advertised wait is over, the refused reservation is admitted", async () => {
      const l = await start();
      // 1000 tokens a second: a refusal waits a fraction of a second.
      const scope = caller({ tokensPerMinute: 60_000 });
      expect((await l.reserve([scope], 60_000)).ok).toBe(true);
      const r = usableRefusal(await l.reserve([scope], 150));
      expect(r.limit).toBe("tokens");
      expect(r.retryAfterMs).toBeLessThanOrEqual(150);
      await new Promise((resolve) => setTimeout(resolve, r.retryAfterMs));
      const a = await l.reserve([scope], 150);
      expect(a.ok, a.ok ? "" : `refused again: ${a.retryAfterMs} ms`).toBe(true);
    });

    it("never admits more than the budget to concurrent reservations", async () => {
      const l = await start();
      const scope = caller({ tokensPerMinute: 1000 });
      const results = await Promise.all(Array.from({ length: 10 }, () => l.reserve([scope], 300)));
      expect(results.filter((r) => r.ok)).toHaveLength(3);
    });
  });
}
