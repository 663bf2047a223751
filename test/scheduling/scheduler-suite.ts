/**
 * The scheduler conformance suite: the same behaviour from every Scheduler implementation
 * (in-process; the Durable Object on Workers). It drives the port directly — acquire,
 * release — and asserts the order in which slots are granted.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { Scheduler, SlotDecision, SlotRequest } from "../../src/scheduling/port.ts";

export interface SchedulerUnderTest {
  scheduler: Scheduler;
  close(): Promise<void>;
}
export type MakeScheduler = (config: SluiceConfigInput) => Promise<SchedulerUnderTest>;

const HIGH = 1;
const LOW = 3;

function config(maxConcurrency: number, extra: Partial<SluiceConfigInput> = {}): SluiceConfigInput {
  return {
    backends: [{ name: "b1", url: "http://127.0.0.1:9", models: ["gpt-4o"], maxConcurrency }],
    ...extra,
  };
}

let seq = 0;
function slot(over: Partial<SlotRequest> = {}): SlotRequest {
  return { id: `r${++seq}`, priority: 2, caller: "a", cost: 100, deadline: Date.now() + 60_000, eligible: ["b1"], tried: [], ...over };
}

/** A pending acquire whose grant order is recorded. */
function track(p: Promise<SlotDecision>, label: string, order: string[]): Promise<SlotDecision> {
  return p.then((d) => {
    if (d.kind === "granted") order.push(label);
    return d;
  });
}

const tick = () => new Promise((r) => setTimeout(r, 0));

async function settle(order: string[], n: number): Promise<void> {
  for (let i = 0; i < 200 && order.length < n; i++) await new Promise((r) => setTimeout(r, 5));
}

export function schedulerConformance(name: string, make: MakeScheduler): void {
  describe(`scheduler conformance [${name}]`, () => {
    let current: SchedulerUnderTest | undefined;
    afterEach(async () => {
      await current?.close();
      current = undefined;
    });
    const start = async (cfg: SluiceConfigInput) => (current = await make(cfg)).scheduler;

    it("grants a free slot at once, queues when the backend is full, and dispatches on release", async () => {
      const s = await start(config(2));
      expect((await s.acquire(slot())).kind).toBe("granted");
      expect((await s.acquire(slot())).kind).toBe("granted");
      const order: string[] = [];
      const third = track(s.acquire(slot()), "third", order);
      await tick();
      expect(order).toEqual([]);
      s.release("b1", { verdict: "success", ttfbMs: 5 });
      const d = await third;
      expect(d.kind).toBe("granted");
      expect(d.kind === "granted" && d.queuedMs).toBeGreaterThanOrEqual(0);
    });

    it("serves every urgent request before the less urgent ones already queued", async () => {
      const s = await start(config(2, { scheduling: { reservedShare: 0 } }));
      await s.acquire(slot());
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 40; i++) pending.push(track(s.acquire(slot({ priority: LOW, caller: `low${i % 4}` })), "low", order));
      await tick();
      for (let i = 0; i < 5; i++) pending.push(track(s.acquire(slot({ priority: HIGH, caller: "high" })), "high", order));
      await tick();
      for (let i = 0; i < 45; i++) {
        s.release("b1", { verdict: "success" });
        await settle(order, i + 1);
      }
      await Promise.all(pending);
      expect(order.slice(0, 5)).toEqual(["high", "high", "high", "high", "high"]);
      expect(order.filter((o) => o === "low")).toHaveLength(40);
    });

    it("shares fairly between callers: a light caller is not stuck behind a heavy one's backlog", async () => {
      const s = await start(config(1, { scheduling: { reservedShare: 0 } }));
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 50; i++) pending.push(track(s.acquire(slot({ caller: "A" })), "A", order));
      await tick();
      for (let i = 0; i < 10; i++) pending.push(track(s.acquire(slot({ caller: "B" })), "B", order));
      await tick();
      for (let i = 0; i < 60; i++) {
        s.release("b1", { verdict: "success" });
        await settle(order, i + 1);
      }
      await Promise.all(pending);
      const bPositions = order.flatMap((o, i) => (o === "B" ? [i] : []));
      // Equal costs: B alternates with A, so its k-th request is served by dispatch 2k+1 at the latest.
      bPositions.forEach((pos, k) => expect(pos).toBeLessThanOrEqual(2 * k + 2));
    });

    it("weighs fair share by estimated tokens: a caller of small requests gets more of them through", async () => {
      const s = await start(config(1, { scheduling: { reservedShare: 0 } }));
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 20; i++) pending.push(track(s.acquire(slot({ caller: "big", cost: 1000 })), "big", order));
      await tick();
      for (let i = 0; i < 10; i++) pending.push(track(s.acquire(slot({ caller: "small", cost: 100 })), "small", order));
      await tick();
      for (let i = 0; i < 30; i++) {
        s.release("b1", { verdict: "success" });
        await settle(order, i + 1);
      }
      await Promise.all(pending);
      // All ten small requests (1,000 tokens in all) fit in the time of one or two big ones.
      expect(order.slice(0, 12).filter((o) => o === "small")).toHaveLength(10);
    });

    it("keeps a less urgent level moving at its reserved share under sustained urgent load", async () => {
      const s = await start(config(1, { scheduling: { reservedShare: 0.25 } }));
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 20; i++) pending.push(track(s.acquire(slot({ priority: LOW, caller: "batch" })), "low", order));
      for (let i = 0; i < 80; i++) pending.push(track(s.acquire(slot({ priority: HIGH, caller: `u${i % 5}` })), "high", order));
      await tick();
      for (let i = 0; i < 100; i++) {
        s.release("b1", { verdict: "success" });
        await settle(order, i + 1);
      }
      await Promise.all(pending);
      const firstFifty = order.slice(0, 50);
      // 0.25 per urgent dispatch: one low in every five while both wait.
      expect(firstFifty.filter((o) => o === "low").length).toBeGreaterThanOrEqual(9);
      expect(firstFifty.filter((o) => o === "low").length).toBeLessThanOrEqual(11);
    });

    it("expires a waiting request at its deadline without granting it", async () => {
      const s = await start(config(1));
      await s.acquire(slot());
      const started = Date.now();
      const d = await s.acquire(slot({ deadline: Date.now() + 150 }));
      expect(d.kind).toBe("expired");
      expect(Date.now() - started).toBeGreaterThanOrEqual(140);
      expect(d.kind === "expired" && d.queuedMs).toBeGreaterThanOrEqual(140);
      // The slot it never got is still the first holder's: release, and a new request is granted.
      s.release("b1", { verdict: "success" });
      expect((await s.acquire(slot())).kind).toBe("granted");
    });

    it("refuses a request when the queue is full", async () => {
      const s = await start(config(1, { scheduling: { maxQueue: 2, queueFullRetryMs: 1500 } }));
      await s.acquire(slot());
      const waiting = [s.acquire(slot()), s.acquire(slot())];
      await tick();
      const refused = await s.acquire(slot());
      expect(refused).toEqual({ kind: "queue-full", retryAfterMs: 1500 });
      s.release("b1", { verdict: "success" });
      s.release("b1", { verdict: "success" });
      expect((await Promise.all(waiting)).map((d) => d.kind)).toEqual(["granted", "granted"]);
    });

    it("after a cooldown, waits until it ends within the TTL, or answers cooling when it ends after", async () => {
      const s = await start(config(4));
      const first = await s.acquire(slot());
      expect(first.kind).toBe("granted");
      const until = Date.now() + 300;
      s.release("b1", { verdict: "throttled", cooldownUntil: until });
      const late = await s.acquire(slot({ deadline: Date.now() + 100 }));
      expect(late.kind).toBe("cooling");
      expect(late.kind === "cooling" && late.retryAfterMs).toBeGreaterThan(150);
      const d = await s.acquire(slot());
      expect(d.kind).toBe("granted");
      expect(Date.now()).toBeGreaterThanOrEqual(until - 5);
    });

    it("a requeued request waits for notBefore, then goes ahead of requests that arrived after it", async () => {
      const s = await start(config(1));
      const first = await s.acquire(slot({ caller: "x" }));
      if (first.kind !== "granted") throw new Error("expected a grant");
      s.release("b1", { verdict: "throttled" });
      const blocker = await s.acquire(slot({ caller: "y" }));
      expect(blocker.kind).toBe("granted");
      const order: string[] = [];
      const requeuedAt = Date.now();
      const back = track(s.acquire(slot({ caller: "x", place: first.place, notBefore: requeuedAt + 100 })), "requeued", order);
      const newer = track(s.acquire(slot({ caller: "x" })), "newer", order);
      await new Promise((r) => setTimeout(r, 150));
      expect(order).toEqual([]);
      s.release("b1", { verdict: "success" });
      await settle(order, 1);
      s.release("b1", { verdict: "success" });
      await Promise.all([back, newer]);
      expect(order).toEqual(["requeued", "newer"]);
    });

    it("a requeued request parked for a cooldown does not hold up the queue", async () => {
      const s = await start(config(1));
      const first = await s.acquire(slot());
      if (first.kind !== "granted") throw new Error("expected a grant");
      s.release("b1", { verdict: "throttled" });
      const order: string[] = [];
      const back = track(s.acquire(slot({ place: first.place, notBefore: Date.now() + 200 })), "requeued", order);
      const other = track(s.acquire(slot({ caller: "z" })), "other", order);
      await settle(order, 1);
      expect(order).toEqual(["other"]);
      s.release("b1", { verdict: "success" });
      await Promise.all([back, other]);
      expect(order).toEqual(["other", "requeued"]);
    });

    it("answers unavailable when every eligible backend was tried, and cancels a waiter whose client left", async () => {
      const s = await start(config(1));
      expect((await s.acquire(slot({ tried: ["b1"] }))).kind).toBe("unavailable");
      await s.acquire(slot());
      const controller = new AbortController();
      const pending = s.acquire(slot(), controller.signal);
      await tick();
      controller.abort();
      expect((await pending).kind).toBe("cancelled");
      s.release("b1", { verdict: "success" });
      expect((await s.acquire(slot())).kind).toBe("granted");
    });

    it("reports queue depth per level", async () => {
      const s = await start(config(1));
      await s.acquire(slot());
      const waiting = [s.acquire(slot({ priority: HIGH })), s.acquire(slot({ priority: LOW })), s.acquire(slot({ priority: LOW }))];
      await tick();
      const stats = await Promise.resolve(s.stats());
      expect(stats.waiting).toBe(3);
      expect(stats.levels.find((l) => l.level === LOW)?.waiting).toBe(2);
      for (let i = 0; i < 3; i++) s.release("b1", { verdict: "success" });
      await Promise.all(waiting);
    });
  });
}
