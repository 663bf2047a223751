import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { CircuitBreaker, MAX_BREAKER_MS, type BreakerChange, type BreakerOptions } from "../../src/resilience/breaker.ts";

// The breaker's options are exactly the parsed config block: this line fails tsc if they drift.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const optionsAreTheConfigBlock: Equal<SluiceConfig["resilience"]["breaker"], BreakerOptions> = true;

const DEFAULTS: BreakerOptions = {
  policy: "consecutive",
  failureThreshold: 5,
  openMs: 30_000,
  maxOpenMs: 300_000,
  backoffMultiplier: 2,
  failureRate: 0.5,
  windowMs: 60_000,
  minimumCalls: 20,
};

/** A fake clock: every call gets an explicit `now`; T0 is an ordinary epoch time. */
const T0 = Date.parse("2026-11-21T10:00:00Z");

function breaker(o: Partial<BreakerOptions> = {}, changes: BreakerChange[] = []): CircuitBreaker {
  return new CircuitBreaker({ ...DEFAULTS, ...o }, (c) => changes.push(c));
}

function fail(b: CircuitBreaker, times: number, now: number): void {
  for (let i = 0; i < times; i++) b.onFailure(now);
}
function succeed(b: CircuitBreaker, times: number, now: number): void {
  for (let i = 0; i < times; i++) b.onSuccess(now);
}

describe("CircuitBreaker, consecutive policy", () => {
  it("opens at the threshold and not before", () => {
    const b = breaker({ failureThreshold: 3 });
    fail(b, 2, T0);
    expect(b.state(T0)).toBe("closed");
    expect(b.canPass(T0)).toBe(true);
    b.onFailure(T0 + 1);
    expect(b.state(T0 + 1)).toBe("open");
    expect(b.canPass(T0 + 2)).toBe(false);
    expect(b.tryPass(T0 + 2)).toBe(false);
    expect(b.reopensAt()).toBe(T0 + 1 + 30_000);
  });

  it("a success resets the count", () => {
    const b = breaker({ failureThreshold: 3 });
    fail(b, 2, T0);
    b.onSuccess(T0 + 1);
    fail(b, 2, T0 + 2);
    expect(b.state(T0 + 2)).toBe("closed");
    b.onFailure(T0 + 3);
    expect(b.state(T0 + 3)).toBe("open");
  });

  it("stays open until reopensAt, then lets exactly one probe through", () => {
    const b = breaker({ failureThreshold: 1, openMs: 1_000 });
    b.onFailure(T0);
    expect(b.state(T0 + 999)).toBe("open");
    expect(b.tryPass(T0 + 999)).toBe(false);
    expect(b.state(T0 + 1_000)).toBe("half-open");
    // canPass does not claim the probe.
    expect(b.canPass(T0 + 1_000)).toBe(true);
    expect(b.canPass(T0 + 1_000)).toBe(true);
    expect(b.tryPass(T0 + 1_001)).toBe(true);
    expect(b.tryPass(T0 + 1_001)).toBe(false);
    expect(b.canPass(T0 + 1_002)).toBe(false);
    expect(b.tryPass(T0 + 5_000)).toBe(false);
    expect(b.state(T0 + 5_000)).toBe("half-open");
  });

  it("a successful probe closes the circuit", () => {
    const b = breaker({ failureThreshold: 2, openMs: 1_000 });
    fail(b, 2, T0);
    expect(b.tryPass(T0 + 1_000)).toBe(true);
    b.onSuccess(T0 + 1_100);
    expect(b.state(T0 + 1_100)).toBe("closed");
    expect(b.tryPass(T0 + 1_100)).toBe(true);
    expect(b.tryPass(T0 + 1_100)).toBe(true);
    // The count starts from zero again.
    b.onFailure(T0 + 1_200);
    expect(b.state(T0 + 1_200)).toBe("closed");
  });

  it("a failed probe reopens for a grown interval (30s, 60s, 120s ... capped at maxOpenMs), reset by a close", () => {
    const b = breaker({ failureThreshold: 1, openMs: 30_000, backoffMultiplier: 2, maxOpenMs: 300_000 });
    let now = T0;
    b.onFailure(now);
    const intervals: number[] = [];
    for (let i = 0; i < 7; i++) {
      const interval = b.reopensAt() - now;
      intervals.push(interval);
      expect(b.state(now + interval - 1)).toBe("open");
      now += interval;
      expect(b.tryPass(now)).toBe(true);
      b.onFailure(now + 5);
      now += 5;
    }
    expect(intervals).toEqual([30_000, 60_000, 120_000, 240_000, 300_000, 300_000, 300_000]);
    // A successful probe closes it and brings the interval back to openMs.
    now = b.reopensAt();
    expect(b.tryPass(now)).toBe(true);
    b.onSuccess(now);
    expect(b.state(now)).toBe("closed");
    b.onFailure(now + 10);
    expect(b.reopensAt()).toBe(now + 10 + 30_000);
  });

  it("ignores verdicts on attempts that were in flight when it opened", () => {
    const b = breaker({ failureThreshold: 2, openMs: 1_000 });
    fail(b, 2, T0);
    b.onFailure(T0 + 500); // a late failure does not extend the interval
    expect(b.reopensAt()).toBe(T0 + 1_000);
    b.onSuccess(T0 + 600); // nor does a late success close the circuit
    expect(b.state(T0 + 600)).toBe("open");
    expect(b.state(T0 + 1_000)).toBe("half-open");
  });

  it("onAbandon frees the probe for the next caller", () => {
    const b = breaker({ failureThreshold: 1, openMs: 1_000 });
    b.onFailure(T0);
    expect(b.tryPass(T0 + 1_000)).toBe(true);
    expect(b.tryPass(T0 + 1_000)).toBe(false);
    b.onAbandon();
    expect(b.state(T0 + 1_001)).toBe("half-open");
    expect(b.canPass(T0 + 1_001)).toBe(true);
    expect(b.tryPass(T0 + 1_001)).toBe(true);
    expect(b.tryPass(T0 + 1_001)).toBe(false);
    // Abandoning does not change the interval: the next failed probe grows it once.
    b.onFailure(T0 + 1_002);
    expect(b.reopensAt()).toBe(T0 + 1_002 + 2_000);
  });
});

describe("CircuitBreaker, failure-rate policy", () => {
  const rate = { policy: "failure-rate", failureRate: 0.5, minimumCalls: 10, windowMs: 10_000, failureThreshold: 1 } as const;

  it("never opens below minimumCalls, whatever the share", () => {
    const b = breaker(rate);
    fail(b, 9, T0); // 100% failures, but only 9 verdicts; failureThreshold 1 plays no part
    expect(b.state(T0)).toBe("closed");
    b.onFailure(T0 + 1);
    expect(b.state(T0 + 1)).toBe("open");
  });

  it("opens once the failure share reaches failureRate", () => {
    const b = breaker(rate);
    succeed(b, 6, T0);
    fail(b, 4, T0 + 100); // 4/10
    expect(b.state(T0 + 100)).toBe("closed");
    b.onFailure(T0 + 200); // 5/11
    expect(b.state(T0 + 200)).toBe("closed");
    b.onFailure(T0 + 300); // 6/12 = 0.5
    expect(b.state(T0 + 300)).toBe("open");
  });

  it("compares the share exactly (0.3 of 10 is 3 failures)", () => {
    const b = breaker({ ...rate, failureRate: 0.3 });
    succeed(b, 7, T0);
    fail(b, 2, T0);
    expect(b.state(T0)).toBe("closed");
    b.onFailure(T0);
    expect(b.state(T0)).toBe("open");
  });

  it("forgets buckets that slid out of the window: a burst two windows ago does not count", () => {
    const b = breaker({ ...rate, minimumCalls: 20 });
    fail(b, 19, T0); // below minimumCalls
    const later = T0 + 2 * 10_000;
    succeed(b, 10, later);
    fail(b, 9, later); // counted with the burst this would be 28/38 and open at once
    expect(b.state(later)).toBe("closed");
    b.onFailure(later); // 10/20 in the window
    expect(b.state(later)).toBe("open");
  });

  it("slides bucket by bucket: the window is the current bucket and the nine before it", () => {
    const b = breaker({ ...rate, minimumCalls: 2 });
    const start = Math.ceil(T0 / 1_000) * 1_000; // a bucket boundary (windowMs / 10 = 1 s buckets)
    succeed(b, 1, start);
    b.onSuccess(start + 9_999); // still in the window with the first
    b.onFailure(start + 9_999); // 1/3
    expect(b.state(start + 9_999)).toBe("closed");
    const c = breaker({ ...rate, minimumCalls: 2 });
    succeed(c, 1, start);
    c.onSuccess(start + 10_000); // the first bucket has slid out
    c.onFailure(start + 10_000); // 1/2
    expect(c.state(start + 10_000)).toBe("open");
  });

  it("survives time jumps forward and a clock stepping back", () => {
    const b = breaker({ ...rate, minimumCalls: 3 });
    b.onSuccess(T0);
    b.onFailure(T0 + 1e12); // a huge jump clears everything
    b.onSuccess(T0 - 5_000); // a step back counts in the newest bucket
    expect(b.state(T0 + 1e12)).toBe("closed");
    b.onFailure(T0 + 1e12); // 2/3
    expect(b.state(T0 + 1e12)).toBe("open");
  });

  it("starts with an empty window after a close", () => {
    const b = breaker({ ...rate, openMs: 1_000 });
    fail(b, 10, T0);
    expect(b.tryPass(T0 + 1_000)).toBe(true);
    b.onSuccess(T0 + 1_000);
    fail(b, 9, T0 + 1_001);
    expect(b.state(T0 + 1_001)).toBe("closed");
    b.onFailure(T0 + 1_002);
    expect(b.state(T0 + 1_002)).toBe("open");
  });
});

describe("CircuitBreaker, change events", () => {
  it("reports every transition with its reason, once, in order", () => {
    const changes: BreakerChange[] = [];
    const b = breaker({ failureThreshold: 2, openMs: 1_000, backoffMultiplier: 2 }, changes);
    b.onFailure(T0);
    b.onFailure(T0 + 10);
    expect(b.state(T0 + 500)).toBe("open");
    expect(b.tryPass(T0 + 1_010)).toBe(true);
    expect(b.canPass(T0 + 1_011)).toBe(false); // no second event for an observed state
    b.onFailure(T0 + 1_020);
    expect(b.tryPass(T0 + 3_019)).toBe(false);
    expect(b.tryPass(T0 + 3_020)).toBe(true);
    b.onSuccess(T0 + 3_030);
    b.onSuccess(T0 + 3_040);
    expect(changes).toEqual([
      { from: "closed", to: "open", at: T0 + 10, reason: "consecutive-failures" },
      { from: "open", to: "half-open", at: T0 + 1_010, reason: "open-elapsed" },
      { from: "half-open", to: "open", at: T0 + 1_020, reason: "probe-failed" },
      { from: "open", to: "half-open", at: T0 + 3_020, reason: "open-elapsed" },
      { from: "half-open", to: "closed", at: T0 + 3_030, reason: "probe-succeeded" },
    ]);
  });

  it("names the failure-rate policy as the reason, and a verdict observes the elapsed interval", () => {
    const changes: BreakerChange[] = [];
    const b = breaker({ policy: "failure-rate", minimumCalls: 2, failureRate: 1, openMs: 1_000 }, changes);
    fail(b, 2, T0);
    b.onFailure(T0 + 2_000); // no call observed half-open before this verdict
    expect(changes.map((c) => [c.from, c.to, c.reason])).toEqual([
      ["closed", "open", "failure-rate"],
      ["open", "half-open", "open-elapsed"],
      ["half-open", "open", "probe-failed"],
    ]);
  });

  it("the listener sees the breaker already in its new state", () => {
    const seen: string[] = [];
    const b: CircuitBreaker = new CircuitBreaker({ ...DEFAULTS, failureThreshold: 1, openMs: 1_000 }, (c) => {
      seen.push(`${c.to}:${b.state(c.at)}:${b.reopensAt()}`);
    });
    b.onFailure(T0);
    expect(seen).toEqual([`open:open:${T0 + 1_000}`]);
  });
});

describe("CircuitBreaker.configure", () => {
  it("keeps an open circuit open, on the new interval from the same start", () => {
    const changes: BreakerChange[] = [];
    const b = breaker({ failureThreshold: 1, openMs: 30_000 }, changes);
    b.onFailure(T0);
    b.configure({ ...DEFAULTS, failureThreshold: 1, openMs: 10_000 });
    expect(b.state(T0 + 9_999)).toBe("open");
    expect(b.reopensAt()).toBe(T0 + 10_000);
    expect(b.state(T0 + 10_000)).toBe("half-open");
    expect(changes.map((c) => c.to)).toEqual(["open", "half-open"]);
  });

  it("keeps the claimed probe, the count of failed probes and the failure count", () => {
    const b = breaker({ failureThreshold: 1, openMs: 1_000 });
    b.onFailure(T0);
    expect(b.tryPass(T0 + 1_000)).toBe(true);
    b.onFailure(T0 + 1_000); // one failed probe: 2 s
    expect(b.tryPass(T0 + 3_000)).toBe(true);
    b.configure({ ...DEFAULTS, failureThreshold: 1, openMs: 1_000, backoffMultiplier: 3 });
    expect(b.tryPass(T0 + 3_000)).toBe(false); // the probe is still out
    b.onFailure(T0 + 3_000); // two failed probes: 1 s × 3²
    expect(b.reopensAt()).toBe(T0 + 3_000 + 9_000);

    const c = breaker({ failureThreshold: 5 });
    fail(c, 3, T0);
    c.configure({ ...DEFAULTS, failureThreshold: 4 });
    expect(c.state(T0)).toBe("closed");
    c.onFailure(T0);
    expect(c.state(T0)).toBe("open");
  });

  it("keeps the failure-rate window when only the share changes", () => {
    const b = breaker({ policy: "failure-rate", minimumCalls: 4, failureRate: 0.9 });
    succeed(b, 2, T0);
    fail(b, 2, T0); // 2/4 < 0.9
    expect(b.state(T0)).toBe("closed");
    b.configure({ ...DEFAULTS, policy: "failure-rate", minimumCalls: 4, failureRate: 0.5 });
    b.onFailure(T0); // 3/5
    expect(b.state(T0)).toBe("open");
  });
});

describe("CircuitBreaker, bounds", () => {
  it("clamps every interval to a valid setTimeout delay", () => {
    const huge = { ...DEFAULTS, failureThreshold: 1, openMs: 1e15, maxOpenMs: Number.POSITIVE_INFINITY, backoffMultiplier: 1e9 };
    const b = new CircuitBreaker(huge);
    b.onFailure(T0);
    expect(b.reopensAt() - T0).toBe(MAX_BREAKER_MS);
    let now = T0;
    for (let i = 0; i < 2_000; i++) {
      now = b.reopensAt();
      expect(b.tryPass(now)).toBe(true);
      b.onFailure(now);
      expect(b.reopensAt() - now).toBeLessThanOrEqual(2 ** 31 - 1);
    }
    expect(Number.isFinite(new Date(b.reopensAt()).getTime())).toBe(true);
  });

  it("a maxOpenMs below openMs means no growth", () => {
    const b = breaker({ failureThreshold: 1, openMs: 10_000, maxOpenMs: 1_000 });
    b.onFailure(T0);
    expect(b.reopensAt()).toBe(T0 + 10_000);
    expect(b.tryPass(T0 + 10_000)).toBe(true);
    b.onFailure(T0 + 10_000);
    expect(b.reopensAt()).toBe(T0 + 20_000);
  });

  it("a breaker from hand-built options that lack the new fields behaves as before: no growth", () => {
    const b = new CircuitBreaker({ failureThreshold: 1, openMs: 100 } as BreakerOptions);
    b.onFailure(T0);
    expect(b.tryPass(T0 + 100)).toBe(true);
    b.onFailure(T0 + 100);
    expect(b.reopensAt()).toBe(T0 + 200);
  });
});

describe("resilience.breaker config", () => {
  const minimal = { backends: [{ name: "a", url: "http://127.0.0.1:1" }] };
  const withBreaker = (breaker: Record<string, unknown>) => () => parseConfig({ ...minimal, resilience: { breaker } });

  it("fills the defaults, and the parsed block builds a breaker", () => {
    expect(optionsAreTheConfigBlock).toBe(true);
    const cfg = parseConfig(minimal);
    expect(cfg.resilience.breaker).toEqual(DEFAULTS);
    const b = new CircuitBreaker(cfg.resilience.breaker);
    fail(b, 5, T0);
    expect(b.reopensAt()).toBe(T0 + 30_000);
  });

  it("refuses absurd values, naming the field", () => {
    expect(withBreaker({ openMs: 1e12 })).toThrow(/resilience\.breaker\.openMs: at most 24 h/);
    expect(withBreaker({ maxOpenMs: 1e12 })).toThrow(/resilience\.breaker\.maxOpenMs/);
    expect(withBreaker({ windowMs: 86_400_001 })).toThrow(/resilience\.breaker\.windowMs/);
    expect(withBreaker({ failureThreshold: 0 })).toThrow(/resilience\.breaker\.failureThreshold/);
    expect(withBreaker({ minimumCalls: 1e9 })).toThrow(/resilience\.breaker\.minimumCalls/);
    expect(withBreaker({ failureRate: 0 })).toThrow(/resilience\.breaker\.failureRate/);
    expect(withBreaker({ failureRate: 1.5 })).toThrow(/resilience\.breaker\.failureRate/);
    expect(withBreaker({ backoffMultiplier: 0.5 })).toThrow(/resilience\.breaker\.backoffMultiplier/);
    expect(withBreaker({ policy: "sometimes" })).toThrow(/resilience\.breaker\.policy/);
    expect(withBreaker({ openMs: 86_400_000, maxOpenMs: 86_400_000, failureRate: 1, backoffMultiplier: 1 })).not.toThrow();
  });
});

describe("circuit breaker: state shared by another replica", () => {
  it("holdOpen opens a closed breaker until then (a probe only after it), and extends its own interval when later", () => {
    const changes: BreakerChange[] = [];
    const b = breaker({ openMs: 1000 }, changes);
    b.holdOpen(T0 + 6000, T0);
    expect(b.state(T0)).toBe("open");
    expect(changes.at(-1)).toMatchObject({ from: "closed", to: "open", reason: "shared-open" });
    // Its own interval (1 s) has passed, the hold (6 s) has not: still open, nothing passes.
    expect(b.tryPass(T0 + 1500)).toBe(false);
    expect(b.reopensAt()).toBe(T0 + 6000);
    expect(b.state(T0 + 6000)).toBe("half-open");
    expect(b.tryPass(T0 + 6000)).toBe(true);
    expect(b.tryPass(T0 + 6000)).toBe(false);
    // A hold in the past changes nothing.
    const fresh = breaker({ openMs: 1000 });
    fresh.holdOpen(T0 - 1, T0);
    expect(fresh.state(T0)).toBe("closed");
  });

  it("closeShared closes an open or half-open breaker with fresh counts, and does nothing to a closed one", () => {
    const changes: BreakerChange[] = [];
    const b = breaker({ failureThreshold: 2, openMs: 1000 }, changes);
    fail(b, 2, T0);
    expect(b.state(T0)).toBe("open");
    b.closeShared(T0 + 10);
    expect(b.state(T0 + 10)).toBe("closed");
    expect(changes.at(-1)).toMatchObject({ from: "open", to: "closed", reason: "shared-close" });
    // Counts start over: one failure does not reopen it.
    b.onFailure(T0 + 20);
    expect(b.state(T0 + 20)).toBe("closed");
    const n = changes.length;
    b.closeShared(T0 + 30);
    expect(changes).toHaveLength(n);
  });
});
