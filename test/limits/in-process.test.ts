/**
 * The in-process limiter: the conformance suite, then what needs a fake clock (`now` passed in)
 * or the limiter's own options: exact Retry-After, capped debt, absurd amounts, and the bound
 * on buckets per caller.
 */
import { describe, expect, it } from "vitest";
import { budgetHeaders, InProcessRateLimiter, MAX_RETRY_AFTER_MS, type Admission, type LimitScope, type LimitSpec } from "../../src/governance/limits.ts";
import { limiterConformance } from "./limiter-suite.ts";
import { rng } from "../harness/rng.ts";

limiterConformance("in-process", async () => ({ limiter: new InProcessRateLimiter(), close: async () => undefined }));

/** A limiter on a clock the test moves. */
function clocked(options?: ConstructorParameters<typeof InProcessRateLimiter>[1]) {
  const clock = { t: 1_000_000 };
  const limiter = new InProcessRateLimiter(() => clock.t, options);
  return { clock, limiter };
}

const scope = (key: string, spec: LimitSpec): LimitScope => ({ key, spec });

function refused(a: Admission): Extract<Admission, { ok: false }> {
  if (a.ok) throw new Error(`expected a refusal, got an admission of ${a.reservation.tokens}`);
  return a;
}

function admitted(a: Admission): Extract<Admission, { ok: true }> {
  if (!a.ok) throw new Error(`expected an admission, got a refusal (${a.limit}, ${a.retryAfterMs} ms)`);
  return a;
}

/** Every header of a view: plain whole digits (ms suffix on resets), never NaN, Infinity or an exponent. */
function expectWholeHeaders(a: Admission): void {
  for (const [name, v] of Object.entries(budgetHeaders(a.view))) {
    expect(v, name).toMatch(name.startsWith("x-ratelimit-reset-") ? /^\d+ms$/ : /^\d+$/);
  }
  if (!a.ok && !a.never) {
    expect(Number.isSafeInteger(a.retryAfterMs), `retryAfterMs ${a.retryAfterMs}`).toBe(true);
    expect(a.retryAfterMs).toBeGreaterThanOrEqual(1);
    expect(a.retryAfterMs).toBeLessThanOrEqual(MAX_RETRY_AFTER_MS);
  }
}


describe("in-process limiter: Retry-After on a fake clock", () => {
  it("a budget-sized reservation refused now is admitted exactly at the advertised wait, not a millisecond before", () => {
    const { clock, limiter } = clocked();
    const s = scope("caller:a", { tokensPerMinute: 200 });
    const first = admitted(limiter.reserve([s], 200));
    expect(first.view).toEqual({ limitTokens: 200, remainingTokens: 0, resetTokensMs: 60_000 });
    const r = refused(limiter.reserve([s], 200));
    expect(r.limit).toBe("tokens");
    expect(r.retryAfterMs).toBe(60_000);
    expect(r.view).toEqual({ limitTokens: 200, remainingTokens: 0, resetTokensMs: 60_000 });
    clock.t += 59_999;
    expect(refused(limiter.reserve([s], 200)).retryAfterMs).toBe(1);
    clock.t += 1;
    admitted(limiter.reserve([s], 200));
  });

  it("for random budgets, amounts and settlements, every refusal's wait is exact and consistent with its headers", () => {
    const rand = rng(11);
    for (let round = 0; round < 200; round++) {
      const { clock, limiter } = clocked();
      const tpm = 1 + Math.floor(rand() * 5000);
      const rpm = 1 + Math.floor(rand() * 50);
      const s = scope(`caller:r${round}`, { tokensPerMinute: tpm, requestsPerMinute: rpm });
      for (let step = 0; step < 40; step++) {
        const want = 1 + Math.floor(rand() * tpm);
        const a = limiter.reserve([s], want);
        expectWholeHeaders(a);
        if (a.ok) {
          expect(a.reservation.tokens).toBe(want);
          // Settle at some real usage, sometimes well over the reservation.
          if (rand() < 0.5) limiter.settle(a.reservation, Math.floor(rand() * want * 3));
          else if (rand() < 0.2) limiter.release(a.reservation);
        } else {
          expect(a.never).toBeUndefined();
          const v = a.view;
          // It names the limit that refused it, and that limit's headers say why.
          if (a.limit === "tokens") {
            expect(v.remainingTokens!).toBeLessThan(want);
            expect(v.resetTokensMs!).toBeGreaterThanOrEqual(a.retryAfterMs);
          } else {
            expect(a.limit).toBe("requests");
            expect(v.remainingRequests).toBe(0);
            expect(v.resetRequestsMs!).toBeGreaterThanOrEqual(a.retryAfterMs);
          }
          const wait = a.retryAfterMs;
          if (wait > 1) {
            clock.t += wait - 1;
            refused(limiter.reserve([s], want));
            clock.t += 1;
          } else clock.t += wait;
          admitted(limiter.reserve([s], want));
        }
        clock.t += Math.floor(rand() * 2000);
      }
    }
  });

  it("names requests when the request budget refuses, tokens when the token budget does, and the longer wait when both do", () => {
    const { clock, limiter } = clocked();
    const s = scope("caller:both", { tokensPerMinute: 600, requestsPerMinute: 2 });
    admitted(limiter.reserve([s], 500));
    admitted(limiter.reserve([s], 10));
    // Requests: none left, one back in 30 s. Tokens: 90 left, enough for this one.
    const byRequests = refused(limiter.reserve([s], 10));
    expect(byRequests.limit).toBe("requests");
    expect(byRequests.retryAfterMs).toBe(30_000);
    expect(byRequests.view).toEqual({ limitRequests: 2, remainingRequests: 0, resetRequestsMs: 60_000, limitTokens: 600, remainingTokens: 90, resetTokensMs: 51_000 });
    // Both: tokens 510 short (51 s at 10 per second) outlast the request wait.
    const both = refused(limiter.reserve([s], 600));
    expect(both.limit).toBe("tokens");
    expect(both.retryAfterMs).toBe(51_000);
    clock.t += 30_000;
    // A request is back, and 300 tokens: 500 is 110 short.
    const byTokens = refused(limiter.reserve([s], 500));
    expect(byTokens.limit).toBe("tokens");
    expect(byTokens.retryAfterMs).toBe(11_000);
    expect(byTokens.view).toMatchObject({ limitTokens: 600, remainingTokens: 390, resetTokensMs: 21_000, remainingRequests: 1 });
    clock.t += 11_000;
    admitted(limiter.reserve([s], 500));
  });

  it("several scopes: the refusing scope is the one shown, and the wait is the longest", () => {
    const { clock, limiter } = clocked();
    const roomy = scope("group:roomy", { tokensPerMinute: 6000 });
    const tight = scope("caller:tight", { tokensPerMinute: 600 });
    admitted(limiter.reserve([roomy, tight], 500));
    const r = refused(limiter.reserve([roomy, tight], 200));
    // tight has 100 left, 100 short at 10/s: 10 s; roomy has room.
    expect(r.limit).toBe("tokens");
    expect(r.retryAfterMs).toBe(10_000);
    expect(r.view).toMatchObject({ limitTokens: 600, remainingTokens: 100, resetTokensMs: 50_000 });
    clock.t += 10_000;
    const a = admitted(limiter.reserve([roomy, tight], 200));
    // The tightest budget after admission: tight, with nothing left.
    expect(a.view).toMatchObject({ limitTokens: 600, remainingTokens: 0 });
  });
});

describe("in-process limiter: amounts that cannot fit, absurd numbers", () => {
  it("a reservation above a whole token budget is refused as never admissible, taking nothing and keeping no bucket", () => {
    const { limiter } = clocked();
    const s = scope("caller:big", { tokensPerMinute: 200, requestsPerMinute: 5 });
    for (const tokens of [201, 276, 1e300, Number.POSITIVE_INFINITY, Number.MAX_VALUE]) {
      const r = refused(limiter.reserve([s], tokens));
      expect(r).toMatchObject({ never: true, limit: "tokens", retryAfterMs: 0, view: { limitTokens: 200 } });
    }
    expect(limiter.bucketCount).toBe(0);
    // Nothing was taken: the whole budget, and every request, are still there.
    const a = admitted(limiter.reserve([s], 200));
    expect(a.view).toMatchObject({ remainingTokens: 0, remainingRequests: 4 });
  });

  it("NaN, negative and fractional amounts are counted whole; every header stays a plain whole number", () => {
    const { clock, limiter } = clocked();
    const s = scope("caller:odd", { tokensPerMinute: 1000, requestsPerMinute: 100 });
    for (const [tokens, taken] of [
      [Number.NaN, 0],
      [-5, 0],
      [0.2, 1],
      [99.5, 100],
    ] as const) {
      const a = admitted(limiter.reserve([s], tokens));
      expect(a.reservation.tokens).toBe(taken);
      expectWholeHeaders(a);
      clock.t += 333.3;
    }
    const r = limiter.reserve([s], 999);
    expectWholeHeaders(r);
  });

  it("a usage report far beyond the reservation is charged up to MAX_DEBT_MINUTES of budget: the wait stays finite and ends", () => {
    const { clock, limiter } = clocked();
    const s = scope("caller:debt", { tokensPerMinute: 1000 });
    const a = admitted(limiter.reserve([s], 100));
    limiter.settle(a.reservation, 1e300);
    const r = refused(limiter.reserve([s], 1000));
    expectWholeHeaders(r);
    expect(r.retryAfterMs).toBe(MAX_RETRY_AFTER_MS);
    expect(r.view.resetTokensMs).toBe(MAX_RETRY_AFTER_MS);
    clock.t += r.retryAfterMs;
    admitted(limiter.reserve([s], 1000));
  });

  it("an unusable usage figure (NaN, Infinity, negative) charges what was reserved", () => {
    const { limiter } = clocked();
    const s = scope("caller:nan", { tokensPerMinute: 1000 });
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, -1]) {
      const a = admitted(limiter.reserve([s], 100));
      limiter.settle(a.reservation, bad);
    }
    const v = admitted(limiter.reserve([s], 1)).view;
    expect(v.remainingTokens).toBe(1000 - 300 - 1);
    expectWholeHeaders(limiter.reserve([s], 900));
  });

  it("budgetHeaders writes plain digits and leaves out a kind whose numbers are unusable", () => {
    expect(budgetHeaders({ limitTokens: 9e15, remainingTokens: 0, resetTokensMs: 1 })).toEqual({
      "x-ratelimit-limit-tokens": "9000000000000000",
      "x-ratelimit-remaining-tokens": "0",
      "x-ratelimit-reset-tokens": "1ms",
    });
    expect(budgetHeaders({ limitTokens: 1e21, remainingTokens: 5, resetTokensMs: 2 })["x-ratelimit-limit-tokens"]).toBe("1000000000000000000000");
    expect(budgetHeaders({ limitTokens: 100, remainingTokens: Number.NaN, resetTokensMs: 2, limitRequests: 5, remainingRequests: 1, resetRequestsMs: Number.POSITIVE_INFINITY })).toEqual({});
  });
});

describe("in-process limiter: buckets per caller are bounded", () => {
  it("drops buckets that are full again once the map passes its sweep mark", () => {
    const { clock, limiter } = clocked({ sweepAt: 100, maxBuckets: 1000 });
    let most = 0;
    // 20,000 minted callers, one small request each, 10 ms apart: each bucket is full 60 ms later.
    for (let i = 0; i < 20_000; i++) {
      admitted(limiter.reserve([scope(`caller:minted-${i}`, { tokensPerMinute: 1000, requestsPerMinute: 1000 })], 1));
      most = Math.max(most, limiter.bucketCount);
      clock.t += 10;
    }
    // Two kinds (tokens, requests), each past its mark of 100 only until a sweep.
    expect(most).toBeLessThanOrEqual(2 * 200);
    expect(limiter.bucketCount).toBeLessThanOrEqual(2 * 200);
  });

  it("keeps a caller's state through sweeps while it carries information (not full)", () => {
    const { clock, limiter } = clocked({ sweepAt: 50, maxBuckets: 1000 });
    const held = scope("caller:held", { tokensPerMinute: 1000 });
    admitted(limiter.reserve([held], 900));
    for (let i = 0; i < 5000; i++) {
      admitted(limiter.reserve([scope(`caller:m${i}`, { tokensPerMinute: 1000 })], 1));
      clock.t += 5;
    }
    // 25 s later, 900 reserved tokens have not refilled (417 came back): still refused, with the true wait.
    const r = refused(limiter.reserve([held], 900));
    expect(r.view.remainingTokens).toBe(100 + 416);
    expect(r.retryAfterMs).toBe(Math.ceil(((900 - (100 + (25_000 * 1000) / 60_000)) * 60_000) / 1000));
  });

  it("caps the map: past maxBuckets, the least recently used go first", () => {
    const { clock, limiter } = clocked({ sweepAt: 100, maxBuckets: 1000 });
    let most = 0;
    // None of these is ever full again within the test: nothing to drop but the least recently used.
    for (let i = 0; i < 10_000; i++) {
      admitted(limiter.reserve([scope(`caller:hog-${i}`, { tokensPerMinute: 1000 })], 1000));
      most = Math.max(most, limiter.bucketCount);
      if (i === 5000) clock.t += 1;
    }
    expect(most).toBeLessThanOrEqual(1000);
    // The most recent caller's spent budget is known; the first one's was forgotten (forgiven).
    refused(limiter.reserve([scope("caller:hog-9999", { tokensPerMinute: 1000 })], 1000));
    admitted(limiter.reserve([scope("caller:hog-0", { tokensPerMinute: 1000 })], 1000));
  });

  it("a caller in use is recent: it survives eviction while idle ones go", () => {
    const { limiter } = clocked({ sweepAt: 10, maxBuckets: 100 });
    const busy = scope("caller:busy", { tokensPerMinute: 1_000_000 });
    admitted(limiter.reserve([busy], 999_000));
    for (let i = 0; i < 1000; i++) {
      limiter.reserve([scope(`caller:idle-${i}`, { tokensPerMinute: 1000 })], 1000);
      if (i % 20 === 0) refused(limiter.reserve([busy], 999_000));
    }
    expect(limiter.bucketCount).toBeLessThanOrEqual(100);
    expect(refused(limiter.reserve([busy], 999_000)).view.remainingTokens).toBe(1000);
  });

  it("settling or releasing a reservation whose bucket was dropped does nothing (and makes no bucket)", () => {
    const { clock, limiter } = clocked({ sweepAt: 2, maxBuckets: 4 });
    const first = admitted(limiter.reserve([scope("caller:first", { tokensPerMinute: 100 })], 100));
    for (let i = 0; i < 10; i++) limiter.reserve([scope(`caller:x${i}`, { tokensPerMinute: 100 })], 100);
    clock.t += 1;
    const before = limiter.bucketCount;
    limiter.settle(first.reservation, 500);
    limiter.release(first.reservation);
    expect(limiter.bucketCount).toBe(before);
    admitted(limiter.reserve([scope("caller:first", { tokensPerMinute: 100 })], 100));
  });
});
