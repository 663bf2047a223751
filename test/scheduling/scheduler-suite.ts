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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls (every ms, bounded) until `order` holds `n` grants; fails naming what was granted. */
async function granted(order: string[], n: number, timeoutMs = 2_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (order.length < n) {
    if (Date.now() > end) throw new Error(`timed out waiting for grant #${n}; granted so far: ${order.join(", ") || "none"}`);
    await sleep(1);
  }
}

/** Polls the scheduler's own stats (bounded) until `n` requests wait: they are queued, not granted. */
async function waiting(s: Scheduler, n: number, timeoutMs = 2_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const now = (await s.stats()).waiting;
    if (now === n) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${n} queued requests; the scheduler reports ${now}`);
    await sleep(1);
  }
}

/** Asserts a grant on b1 and returns it. */
function grant(d: SlotDecision): Extract<SlotDecision, { kind: "granted" }> {
  expect(d).toMatchObject({ kind: "granted", backend: "b1" });
  return d as Extract<SlotDecision, { kind: "granted" }>;
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
      expect(grant(await s.acquire(slot())).queuedMs).toBe(0);
      expect(grant(await s.acquire(slot())).queuedMs).toBe(0);
      const order: string[] = [];
      const askedAt = Date.now();
      const third = track(s.acquire(slot()), "third", order);
      await waiting(s, 1);
      const waitingSeenAt = Date.now();
      expect(order, "granted beyond the backend's concurrency").toEqual([]);
      // Let it wait a measurable time, then free a slot.
      await sleep(30);
      const releasedAt = Date.now();
      s.release("b1", { verdict: "success", ttfbMs: 5 });
      const d = grant(await third);
      const grantedAt = Date.now();
      // queuedMs is the time from its arrival to the release that freed its slot.
      expect(d.queuedMs).toBeGreaterThanOrEqual(releasedAt - waitingSeenAt - 2);
      expect(d.queuedMs).toBeLessThanOrEqual(grantedAt - askedAt + 2);
      expect((await s.stats()).waiting).toBe(0);
    });

    it("serves every urgent request before the less urgent ones already queued", async () => {
      const s = await start(config(2, { scheduling: { reservedShare: 0 } }));
      await s.acquire(slot());
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 40; i++) pending.push(track(s.acquire(slot({ priority: LOW, caller: `low${i % 4}` })), "low", order));
      await waiting(s, 40);
      for (let i = 0; i < 5; i++) pending.push(track(s.acquire(slot({ priority: HIGH, caller: "high" })), "high", order));
      await waiting(s, 45);
      expect(order).toEqual([]);
      for (let i = 0; i < 45; i++) {
        s.release("b1", { verdict: "success" });
        await granted(order, i + 1);
      }
      await Promise.all(pending);
      expect(order).toEqual([...Array<string>(5).fill("high"), ...Array<string>(40).fill("low")]);
    });

    it("shares fairly between callers: a light caller is not stuck behind a heavy one's backlog", async () => {
      const s = await start(config(1, { scheduling: { reservedShare: 0 } }));
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 50; i++) pending.push(track(s.acquire(slot({ caller: "A" })), "A", order));
      await waiting(s, 50);
      for (let i = 0; i < 10; i++) pending.push(track(s.acquire(slot({ caller: "B" })), "B", order));
      await waiting(s, 60);
      for (let i = 0; i < 60; i++) {
        s.release("b1", { verdict: "success" });
        await granted(order, i + 1);
      }
      await Promise.all(pending);
      expect(order).toHaveLength(60);
      const bPositions = order.flatMap((o, i) => (o === "B" ? [i] : []));
      expect(bPositions).toHaveLength(10);
      // Equal costs: B alternates with A, so its k-th request is served by dispatch 2k+1 at the latest.
      bPositions.forEach((pos, k) => expect(pos, `B's request #${k} (order: ${order.join("")})`).toBeLessThanOrEqual(2 * k + 1));
    });

    it("weighs fair share by estimated tokens: a caller of small requests gets more of them through", async () => {
      const s = await start(config(1, { scheduling: { reservedShare: 0 } }));
      await s.acquire(slot());
      const order: string[] = [];
      const pending: Promise<SlotDecision>[] = [];
      for (let i = 0; i < 20; i++) pending.push(track(s.acquire(slot({ caller: "big", cost: 1000 })), "big", order));
      await waiting(s, 20);
      for (let i = 0; i < 10; i++) pending.push(track(s.acquire(slot({ caller: "small", cost: 100 })), "small", order));
      await waiting(s, 30);
      for (let i = 0; i < 30; i++) {
        s.release("b1", { verdict: "success" });
        await granted(order, i + 1);
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
      await waiting(s, 100);
      for (let i = 0; i < 100; i++) {
        s.release("b1", { verdict: "success" });
        await granted(order, i + 1);
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
      const elapsed = Date.now() - started;
      expect(d.kind).toBe("expired");
      // At its deadline: not before (less a margin for a Durable Object's clock, which only
      // advances with its own I/O), and not long after.
      expect(elapsed).toBeGreaterThanOrEqual(120);
      expect(elapsed).toBeLessThan(150 + 400);
      const queuedMs = (d as Extract<SlotDecision, { kind: "expired" }>).queuedMs;
      expect(queuedMs).toBeGreaterThanOrEqual(120);
      expect(queuedMs).toBeLessThanOrEqual(elapsed + 2);
      expect((await s.stats()).waiting).toBe(0);
      // The slot it never got is still the first holder's: release, and a new request is granted.
      s.release("b1", { verdict: "success" });
      expect((await s.acquire(slot())).kind).toBe("granted");
    });

    it("refuses a request when the queue is full", async () => {
      const s = await start(config(1, { scheduling: { maxQueue: 2, queueFullRetryMs: 1500 } }));
      await s.acquire(slot());
      const queued = [s.acquire(slot()), s.acquire(slot())];
      await waiting(s, 2);
      const refused = await s.acquire(slot());
      expect(refused).toEqual({ kind: "queue-full", retryAfterMs: 1500 });
      // The refused request took no place in the queue.
      expect((await s.stats()).waiting).toBe(2);
      s.release("b1", { verdict: "success" });
      s.release("b1", { verdict: "success" });
      expect((await Promise.all(queued)).map((d) => d.kind)).toEqual(["granted", "granted"]);
    });

    it("after a cooldown, waits until it ends within the TTL, or answers cooling when it ends after", async () => {
      const s = await start(config(4));
      grant(await s.acquire(slot()));
      const until = Date.now() + 300;
      s.release("b1", { verdict: "throttled", cooldownUntil: until });
      const late = await s.acquire(slot({ deadline: Date.now() + 100 }));
      const answeredAt = Date.now();
      expect(late.kind).toBe("cooling");
      // The wait it is told is what is left of the cooldown.
      const retryAfterMs = (late as Extract<SlotDecision, { kind: "cooling" }>).retryAfterMs;
      expect(retryAfterMs).toBeLessThanOrEqual(300);
      expect(retryAfterMs).toBeGreaterThanOrEqual(until - answeredAt - 2);
      grant(await s.acquire(slot()));
      // Granted when the cooldown ended: not before, and not long after.
      expect(Date.now()).toBeGreaterThanOrEqual(until - 5);
      expect(Date.now()).toBeLessThan(until + 300);
    });

    it("a requeued request waits for notBefore, then goes ahead of requests that arrived after it", async () => {
      const s = await start(config(1));
      const first = await s.acquire(slot({ caller: "x" }));
      if (first.kind !== "granted") throw new Error("expected a grant");
      s.release("b1", { verdict: "throttled" });
      const blocker = await s.acquire(slot({ caller: "y" }));
      expect(blocker.kind).toBe("granted");
      const order: string[] = [];
      const notBefore = Date.now() + 50;
      const back = track(s.acquire(slot({ caller: "x", place: first.place, notBefore })), "requeued", order);
      const newer = track(s.acquire(slot({ caller: "x" })), "newer", order);
      await waiting(s, 2);
      // The slot is the blocker's until it is released, after notBefore has passed.
      await sleep(Math.max(0, notBefore + 10 - Date.now()));
      expect(order).toEqual([]);
      s.release("b1", { verdict: "success" });
      await granted(order, 1);
      expect(order).toEqual(["requeued"]);
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
      const notBefore = Date.now() + 150;
      const back = track(s.acquire(slot({ place: first.place, notBefore })), "requeued", order);
      const backAt = back.then(() => Date.now());
      const other = track(s.acquire(slot({ caller: "z" })), "other", order);
      await granted(order, 1);
      expect(order).toEqual(["other"]);
      // The slot is free again before notBefore; the parked request still waits for notBefore.
      s.release("b1", { verdict: "success" });
      await Promise.all([back, other]);
      expect(order).toEqual(["other", "requeued"]);
      expect(await backAt, "granted before notBefore").toBeGreaterThanOrEqual(notBefore - 2);
    });

    it("answers unavailable when every eligible backend was tried, and cancels a waiter whose client left", async () => {
      const s = await start(config(1));
      expect((await s.acquire(slot({ tried: ["b1"] }))).kind).toBe("unavailable");
      grant(await s.acquire(slot()));
      const controller = new AbortController();
      const pending = s.acquire(slot(), controller.signal);
      await waiting(s, 1);
      controller.abort();
      expect(await pending).toEqual({ kind: "cancelled" });
      await waiting(s, 0);
      // The slot freed next goes to a new request, not to the one that left.
      s.release("b1", { verdict: "success" });
      grant(await s.acquire(slot()));
    });

    it("reports queue depth per level", async () => {
      const s = await start(config(1));
      await s.acquire(slot());
      const queued = [s.acquire(slot({ priority: HIGH })), s.acquire(slot({ priority: LOW })), s.acquire(slot({ priority: LOW }))];
      await waiting(s, 3);
      const stats = await s.stats();
      expect(stats.waiting).toBe(3);
      expect(stats.levels.find((l) => l.level === HIGH)?.waiting).toBe(1);
      expect(stats.levels.find((l) => l.level === LOW)?.waiting).toBe(2);
      for (let i = 0; i < 3; i++) s.release("b1", { verdict: "success" });
      expect((await Promise.all(queued)).map((d) => d.kind)).toEqual(["granted", "granted", "granted"]);
      const after = await s.stats();
      expect(after.waiting).toBe(0);
      expect(after.levels.find((l) => l.level === LOW)).toMatchObject({ waiting: 0, dispatched: 2 });
    });

    describe("under throttling: every change of availability wakes the queue", () => {
      it("at a cooldown's end the most urgent waiter goes alone as the probe; the others follow its answer", async () => {
        const s = await start(config(1));
        grant(await s.acquire(slot()));
        s.release("b1", { verdict: "throttled", cooldownUntil: Date.now() + 200 });
        const order: string[] = [];
        const low1 = track(s.acquire(slot({ priority: LOW, caller: "l1" })), "low-1", order);
        await waiting(s, 1);
        const low2 = track(s.acquire(slot({ priority: LOW, caller: "l2" })), "low-2", order);
        await waiting(s, 2);
        const high = track(s.acquire(slot({ priority: HIGH, caller: "h" })), "high", order);
        await waiting(s, 3);
        await granted(order, 1);
        expect(order).toEqual(["high"]);
        s.release("b1", { verdict: "success" });
        await granted(order, 2);
        s.release("b1", { verdict: "success" });
        await Promise.all([low1, low2, high]);
        expect(order).toEqual(["high", "low-1", "low-2"]);
      });

      it("a renewed cooldown: one probe per end, the rest keep waiting, and all are served once it stops throttling", async () => {
        const s = await start(config(2));
        grant(await s.acquire(slot()));
        s.release("b1", { verdict: "throttled", cooldownUntil: Date.now() + 150 });
        const order: string[] = [];
        const pending = Array.from({ length: 5 }, (_, i) => track(s.acquire(slot({ caller: `c${i}` })), `r${i}`, order));
        await waiting(s, 5);
        await granted(order, 1);
        // The probe is alone, though the backend takes two at once.
        expect((await s.stats()).waiting).toBe(4);
        s.release("b1", { verdict: "throttled", cooldownUntil: Date.now() + 150 });
        await granted(order, 2);
        expect((await s.stats()).waiting).toBe(3);
        s.release("b1", { verdict: "success" });
        // Recovered: two at once again.
        await granted(order, 4);
        s.release("b1", { verdict: "success" });
        s.release("b1", { verdict: "success" });
        await granted(order, 5);
        await Promise.all(pending);
        expect((await s.stats()).waiting).toBe(0);
      });

      it("a waiter blocked by a cooldown and then an open breaker is woken when the breaker goes half-open", async () => {
        const s = await start(config(1, { resilience: { breaker: { failureThreshold: 1, openMs: 300 } } }));
        grant(await s.acquire(slot()));
        const openedAt = Date.now();
        s.release("b1", { verdict: "failure", cooldownUntil: openedAt + 100 });
        const d = grant(await s.acquire(slot()));
        expect(Date.now() - openedAt).toBeGreaterThanOrEqual(280);
        expect(d.queuedMs).toBeGreaterThanOrEqual(250);
        expect((await s.stats()).backends[0]!.breaker).toBe("half-open");
      });
    });
  });
}
