/**
 * The backend-state conformance suite: what every replica of one gateway must see of a backend,
 * whichever store shares it (CONTRACT §9). It drives the replicas' schedulers directly — acquire
 * and release, as the pipeline does — and asserts what each replica grants:
 * `maxConcurrency` across replicas, the freed slot going to the most urgent waiter of all
 * replicas, a cooldown and an open breaker seen through one replica holding on the others, and
 * the slots of a replica that died coming back within the lease time.
 *
 * In process, every "replica" is the one process's scheduler (nothing to share, so everything
 * holds trivially); on Redis each is a runtime of its own on its own connection.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { Scheduler, SlotDecision, SlotRequest } from "../../src/scheduling/port.ts";
import type { BackendStateStore } from "../../src/state/backend-state.ts";
import { until } from "../harness/until.ts";

export interface Replica {
  scheduler: Scheduler;
  store: BackendStateStore;
}

export interface ReplicasUnderTest {
  replicas: Replica[];
  /** The lease time after which a dead replica's slots are free (shared stores only). */
  leaseMs?: number;
  /** Ends replica `i` as a crash would: no goodbye to the others (shared stores only). */
  crash?(i: number): Promise<void>;
  close(): Promise<void>;
}

export type MakeReplicas = (config: SluiceConfigInput, count: number) => Promise<ReplicasUnderTest>;

const HIGH = 1;
const LOW = 3;

function config(maxConcurrency: number): SluiceConfigInput {
  return {
    resilience: { breaker: { failureThreshold: 1, openMs: 60_000 } },
    backends: [{ name: "b1", url: "http://127.0.0.1:9", models: ["gpt-4o"], maxConcurrency }],
  };
}

let seq = 0;
const slot = (over: Partial<SlotRequest> = {}): SlotRequest => ({ id: `s${++seq}`, priority: 2, caller: "a", cost: 100, deadline: Date.now() + 30_000, eligible: ["b1"], tried: [], ...over });

/** A pending acquire, with whether (and in what order) it was granted. */
function pending(p: Promise<SlotDecision>, label: string, order: string[]) {
  let decision: SlotDecision | undefined;
  const done = p.then((d) => {
    decision = d;
    if (d.kind === "granted") order.push(label);
    return d;
  });
  return { done, get decision() {
    return decision;
  } };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function backendStateConformance(name: string, make: MakeReplicas): void {
  describe(`backend-state conformance [${name}]`, () => {
    let current: ReplicasUnderTest | undefined;
    afterEach(async () => {
      await current?.close();
      current = undefined;
    });
    const start = async (cfg: SluiceConfigInput, n = 2) => (current = await make(cfg, n));

    it("maxConcurrency holds across replicas: a third request waits on the other replica until a slot frees", async () => {
      const { replicas } = await start(config(2));
      const [r0, r1] = replicas as [Replica, Replica];
      const order: string[] = [];
      const a = pending(r0.scheduler.acquire(slot()), "a", order);
      const b = pending(r0.scheduler.acquire(slot()), "b", order);
      await until("two grants on replica 0", () => order.length === 2, 3_000, 2);
      const c = pending(r1.scheduler.acquire(slot()), "c", order);
      await sleep(300);
      expect(c.decision, "the third request is not granted while both slots are held").toBeUndefined();
      r0.scheduler.release("b1", { verdict: "success" });
      expect(await c.done).toMatchObject({ kind: "granted", backend: "b1" });
      await Promise.all([a.done, b.done]);
      r0.scheduler.release("b1", { verdict: "success" });
      r1.scheduler.release("b1", { verdict: "success" });
    });

    it("a freed slot goes to the most urgent waiter of all replicas, before older less urgent ones", async () => {
      const { replicas } = await start(config(1));
      const [r0, r1] = replicas as [Replica, Replica];
      const order: string[] = [];
      const held = pending(r0.scheduler.acquire(slot()), "held", order);
      await held.done;
      const lows = [0, 1, 2].map((i) => pending(r0.scheduler.acquire(slot({ priority: LOW, caller: `l${i}` })), `low-${i}`, order));
      await sleep(100);
      const high = pending(r1.scheduler.acquire(slot({ priority: HIGH, caller: "h" })), "high", order);
      await sleep(200);
      expect(order).toEqual(["held"]);
      r0.scheduler.release("b1", { verdict: "success" });
      await until("the next grant", () => order.length === 2, 3_000, 2);
      expect(order).toEqual(["held", "high"]);
      r1.scheduler.release("b1", { verdict: "success" });
      for (let i = 0; i < 3; i++) {
        await until(`low-${i} granted`, () => order.length === 3 + i, 3_000, 2);
        r0.scheduler.release("b1", { verdict: "success" });
      }
      await Promise.all([high.done, ...lows.map((l) => l.done)]);
      expect(order).toEqual(["held", "high", "low-0", "low-1", "low-2"]);
    });

    it("a cooldown seen through one replica holds on the others: nothing is granted there until it ends", async () => {
      const { replicas } = await start(config(4));
      const [r0, r1] = replicas as [Replica, Replica];
      expect(await r0.scheduler.acquire(slot())).toMatchObject({ kind: "granted" });
      const until_ = Date.now() + 600;
      r0.scheduler.release("b1", { verdict: "throttled", cooldownUntil: until_ });
      await until("the cooldown on replica 1", () => r1.store.get("b1")?.unavailable(Date.now()) === "cooling", 3_000, 2);
      const d = await r1.scheduler.acquire(slot());
      expect(d).toMatchObject({ kind: "granted" });
      expect(Date.now()).toBeGreaterThanOrEqual(until_);
      r1.scheduler.release("b1", { verdict: "success" });
    });

    it("a breaker opened through one replica is open on the others", async () => {
      const { replicas } = await start(config(4));
      const [r0, r1] = replicas as [Replica, Replica];
      expect(await r0.scheduler.acquire(slot())).toMatchObject({ kind: "granted" });
      r0.scheduler.release("b1", { verdict: "failure" });
      await until("the breaker open on replica 1", () => r1.store.get("b1")?.breaker.state(Date.now()) === "open", 3_000, 2);
      expect(await r1.scheduler.acquire(slot())).toMatchObject({ kind: "unavailable", reason: "circuit-open" });
    });

    it("the slots of a replica that died come back to the others within the lease time", async (ctx) => {
      const under = await start(config(2));
      if (!under.crash || under.leaseMs === undefined) return ctx.skip();
      const [r0, r1] = under.replicas as [Replica, Replica];
      const order: string[] = [];
      pending(r0.scheduler.acquire(slot()), "a", order);
      pending(r0.scheduler.acquire(slot()), "b", order);
      await until("both slots on replica 0", () => order.length === 2, 3_000, 2);
      const c = pending(r1.scheduler.acquire(slot()), "c", order);
      await sleep(100);
      expect(c.decision).toBeUndefined();
      await under.crash(0);
      const diedAt = Date.now();
      expect(await c.done).toMatchObject({ kind: "granted" });
      expect(Date.now() - diedAt).toBeLessThanOrEqual(under.leaseMs);
    });
  });
}
