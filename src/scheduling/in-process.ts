import type { ClientSignal } from "../types.ts";
import type { Backend } from "../routing/backend.ts";
import type { BackendPool } from "../routing/pool.ts";
import type { BackendStateStore } from "../state/backend-state.ts";
import { later, type Timer } from "../timers.ts";
import type { SlotBroker, Waiting } from "./broker.ts";
import { Heap } from "./heap.ts";
import type { LevelStats, QueuePlace, Scheduler, SchedulerStats, SlotDecision, SlotRelease, SlotRequest } from "./port.ts";

export interface SchedulerOptions {
  /** Requests waiting at once, all levels together. */
  maxQueue: number;
  /** Per-level limits, by level number. */
  maxQueuePerLevel: ReadonlyMap<number, number>;
  /** Share of dispatches a less urgent level gets while more urgent ones are waiting too. */
  reservedShare: number;
  latencyAlpha: number;
  /** Retry-After suggested when the queue is full. */
  queueFullRetryMs: number;
  now: () => number;
}

interface Waiter {
  heapIndex: number;
  req: SlotRequest;
  place: QueuePlace;
  /** When this call started waiting (a requeued request keeps its older place). */
  since: number;
  lane: Lane;
  level: Level;
  resolve: (decision: SlotDecision) => void;
  expiry?: Timer;
  /** Out of the heap until its own not-before (a requeue after S7PREQUEUE): it does not hold up those behind it. */
  parked?: Timer;
  onAbort?: () => void;
  signal?: ClientSignal;
  settled?: boolean;
}

/** One priority level of a lane: start-time fair queuing between callers, FIFO per caller. */
class Level {
  readonly heap = new Heap<Waiter>((a, b) => a.place.tag < b.place.tag || (a.place.tag === b.place.tag && a.place.seq < b.place.seq));
  /** Virtual time: the tag of the last request dispatched from this level. */
  virtualTime = 0;
  readonly lastFinish = new Map<string, number>();
  /** Reserved-share credit earned while more urgent levels were served. */
  credit = 0;

  constructor(readonly level: number) {}

  /** A new request's start tag: after the caller's previous one, never before virtual time. */
  tagFor(caller: string, cost: number): number {
    const start = Math.max(this.virtualTime, this.lastFinish.get(caller) ?? 0);
    this.lastFinish.set(caller, start + cost);
    if (this.lastFinish.size > 4096) {
      // Callers whose last finish is behind virtual time start fresh anyway.
      for (const [c, f] of this.lastFinish) if (f <= this.virtualTime) this.lastFinish.delete(c);
    }
    return start;
  }
}

/**
 * Requests that can go to the same backends (same eligible set, same backends already tried)
 * wait in one lane, so that when none of a lane's backends is free, none of its waiters is
 * looked at.
 */
class Lane {
  readonly levels = new Map<number, Level>();
  waiting = 0;

  constructor(
    readonly key: string,
    readonly eligible: readonly Backend[],
    readonly tried: ReadonlySet<Backend>,
  ) {}

  level(n: number): Level {
    let l = this.levels.get(n);
    if (!l) {
      l = new Level(n);
      this.levels.set(n, l);
    }
    return l;
  }

  /**
   * The level to serve next: the most urgent one with waiters, unless a less urgent one has
   * earned a turn through its reserved share.
   */
  nextLevel(): Level | undefined {
    let urgent: Level | undefined;
    let owed: Level | undefined;
    for (const l of this.levels.values()) {
      if (!l.heap.size) continue;
      if (!urgent || l.level < urgent.level) urgent = l;
      if (l.credit >= 1 && (!owed || l.credit > owed.credit)) owed = l;
    }
    return owed ?? urgent;
  }

  /** After serving `served`, every less urgent level with waiters earns its share. */
  accrue(served: Level, share: number): void {
    if (served.credit >= 1) {
      served.credit -= 1;
      return;
    }
    for (const l of this.levels.values()) if (l.level > served.level && l.heap.size) l.credit += share;
  }
}

const NOTHING_TRIED: ReadonlySet<Backend> = new Set();

const laneKey = (version: number, eligible: readonly string[], tried: readonly string[]) =>
  `${version}|${eligible.join(",")}|${tried.length ? [...tried].sort().join(",") : ""}`;

/**
 * The queue for one process (Node, Azure Functions; the Durable Object on Workers): every
 * operation O(log n) in the waiters of a level. It outlives config versions: `usePool` hands it
 * the newest version's backends, while requests already waiting keep the backends of the
 * version they arrived on; all of them lease through one backend-state store, so a release by
 * any version dispatches the next waiter of every version.
 */
export class InProcessScheduler implements Scheduler {
  private readonly lanes = new Map<string, Lane>();
  private readonly levelStats = new Map<number, LevelStats>();
  private waiting = 0;
  private seq = 0;
  private wakeAt = Number.POSITIVE_INFINITY;
  private wakeTimer: Timer | undefined;
  private dispatchSoon: Timer | undefined;
  private pool: BackendPool;
  private poolVersion = 0;
  private options: SchedulerOptions;
  private demandQueued = false;

  constructor(
    private readonly store: BackendStateStore,
    pool: BackendPool,
    options: SchedulerOptions,
    /** Shares the backends' slots with other replicas (Redis); without it they are all this process's. */
    private readonly broker?: SlotBroker,
  ) {
    this.pool = pool;
    this.options = options;
  }

  /** A new config version: its backends for new requests, its queue settings from now on. */
  usePool(pool: BackendPool, options: SchedulerOptions): void {
    if (pool !== this.pool) {
      this.pool = pool;
      this.poolVersion++;
    }
    this.options = options;
    this.dispatch();
  }

  acquire(req: SlotRequest, signal?: ClientSignal): Promise<SlotDecision> {
    const now = this.options.now();
    if (signal?.aborted) return Promise.resolve({ kind: "cancelled" });
    // Each decision reports the wait of this call only; the caller adds up its waits (a requeue waits again).
    const queuedSoFar = 0;
    if (now >= req.deadline) return Promise.resolve({ kind: "expired", queuedMs: queuedSoFar });

    const eligible = this.pool.resolve(req.eligible);
    // A first attempt has tried nothing: no set, no filtered copy.
    const tried = req.tried.length ? new Set(this.pool.resolve(req.tried, false)) : NOTHING_TRIED;
    const untried = tried.size ? eligible.filter((b) => !tried.has(b)) : eligible;
    if (!untried.length) return Promise.resolve({ kind: "unavailable", reason: "tried-all", retryAfterMs: this.coolingWait(eligible, now), queuedMs: queuedSoFar });

    // Nobody waits, so nobody can be overtaken: take a free backend at once (a failover keeps its place for later).
    if (!this.waiting && !(req.notBefore && req.notBefore > now)) {
      const free = this.pool.pick(eligible, tried, now, req.affinity);
      if (free?.acquire(now)) {
        const stat = this.levelStat(req.priority);
        stat.dispatched++;
        return Promise.resolve({ kind: "granted", backend: free.name, queuedMs: 0, place: req.place ?? { seq: ++this.seq, tag: 0, enqueuedAt: now } });
      }
    }

    const blocked = this.blockedVerdict(untried, req.deadline, now, queuedSoFar);
    if (blocked) return Promise.resolve(blocked);

    const level = req.priority;
    const levelCap = this.options.maxQueuePerLevel.get(level);
    if (!req.place && (this.waiting >= this.options.maxQueue || (levelCap !== undefined && this.levelStat(level).waiting >= levelCap))) {
      return Promise.resolve({ kind: "queue-full", retryAfterMs: this.options.queueFullRetryMs });
    }

    const key = laneKey(this.poolVersion, req.eligible, req.tried);
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = new Lane(key, eligible, tried);
      this.lanes.set(key, lane);
    }
    const lvl = lane.level(level);
    const place = req.place ?? { seq: ++this.seq, tag: lvl.tagFor(req.caller, Math.max(1, req.cost)), enqueuedAt: now };

    return new Promise<SlotDecision>((resolve) => {
      const w: Waiter = { heapIndex: -1, req, place, since: now, lane: lane!, level: lvl, resolve, signal };
      this.waiting++;
      lane!.waiting++;
      this.levelStat(level).waiting++;
      if (Number.isFinite(req.deadline)) {
        w.expiry = later(() => this.finish(w, { kind: "expired", queuedMs: this.options.now() - w.since }), req.deadline - now);
      }
      if (signal) {
        w.onAbort = () => this.finish(w, { kind: "cancelled" });
        signal.addEventListener("abort", w.onAbort, { once: true });
      }
      // A request waiting for a cooldown waits in its place like any other: the backend is not
      // free until it ends, and the wake at that moment serves the most urgent waiter first.
      if (req.notBefore !== undefined && req.notBefore > now) this.park(w, req.notBefore - now);
      else lvl.heap.push(w);
      this.dispatch();
    });
  }

  release(name: string, outcome: SlotRelease): void {
    // By name from the store: the backend may be gone from the newest version; its lease is not.
    const b = this.store.get(name);
    if (!b) return;
    const now = this.options.now();
    b.release(outcome.verdict, now, this.options.latencyAlpha, outcome.ttfbMs, outcome.cooldownUntil);
    // Before the local queue looks: the slot may belong to a more urgent waiter on another replica.
    this.broker?.released(name, this.nextFor(name));
    this.dispatch();
  }

  /**
   * What waits here for backends that have no slot free here, per backend: the waiter the
   * queue would serve next (level, arrival) and how many wait. Requests parked for a cooldown
   * are not counted: no slot would serve them now.
   */
  demand(): Map<string, Waiting> {
    const out = new Map<string, Waiting>();
    if (!this.waiting) return out;
    const now = this.options.now();
    for (const lane of this.lanes.values()) {
      const head = lane.waiting ? lane.nextLevel()?.heap.peek() : undefined;
      if (!head) continue;
      let queued = 0;
      for (const l of lane.levels.values()) queued += l.heap.size;
      for (const b of lane.eligible) {
        if (lane.tried.has(b) || b.unavailable(now) !== "busy" || !b.live.atLimit()) continue;
        const seen = out.get(b.name);
        const mine: Waiting = { level: head.level.level, since: head.place.enqueuedAt, count: queued };
        if (!seen) out.set(b.name, mine);
        else {
          if (head.level.level < seen.level || (head.level.level === seen.level && mine.since < seen.since)) {
            seen.level = mine.level;
            seen.since = mine.since;
          }
          seen.count += queued;
        }
      }
    }
    return out;
  }

  /** The local waiter a free slot on `name` would go to, if any. */
  private nextFor(name: string): Waiting | undefined {
    if (!this.waiting) return undefined;
    let best: Waiter | undefined;
    for (const lane of this.lanes.values()) {
      if (!lane.waiting) continue;
      const head = lane.nextLevel()?.heap.peek();
      if (!head || (best && (head.level.level > best.level.level || (head.level.level === best.level.level && head.place.enqueuedAt >= best.place.enqueuedAt)))) continue;
      if (lane.eligible.some((b) => b.name === name && !lane.tried.has(b))) best = head;
    }
    return best && { level: best.level.level, since: best.place.enqueuedAt, count: 1 };
  }

  /** Tells the broker what waits, once per turn of the event loop however many changes came. */
  private noteDemand(): void {
    if (!this.broker || this.demandQueued) return;
    this.demandQueued = true;
    queueMicrotask(() => {
      this.demandQueued = false;
      this.broker!.demand(this.demand());
    });
  }

  refresh(): void {
    this.dispatch();
  }

  stats(): SchedulerStats {
    const now = this.options.now();
    return {
      waiting: this.waiting,
      levels: [...this.levelStats.values()].sort((a, b) => a.level - b.level).map((l) => ({ ...l })),
      backends: this.pool.backends.map(({ name, group, live }) => ({
        name,
        group,
        inFlight: live.inFlight,
        breaker: live.breaker.state(now),
        coolingDownMs: Math.max(0, live.cooldownUntil - now),
        ttfbMs: live.ttfbMs === undefined ? null : Math.round(live.ttfbMs),
      })),
    };
  }

  private levelStat(level: number): LevelStats {
    let s = this.levelStats.get(level);
    if (!s) {
      s = { level, waiting: 0, dispatched: 0, waitedMs: 0 };
      this.levelStats.set(level, s);
    }
    return s;
  }

  /** Earliest end of a cooldown among these backends, as a wait from now. */
  private coolingWait(backends: readonly Backend[], now: number): number | undefined {
    let end = Number.POSITIVE_INFINITY;
    for (const { live } of backends) if (live.cooldownUntil > now && live.cooldownUntil < end) end = live.cooldownUntil;
    return Number.isFinite(end) ? end - now : undefined;
  }

  /**
   * When no untried backend can take the request before its deadline: every one cooling past
   * it, or every circuit open. A cooldown that ends in time is waited for in the queue.
   */
  private blockedVerdict(untried: readonly Backend[], deadline: number, now: number, queuedMs: number): SlotDecision | undefined {
    let coolingEnd = Number.POSITIVE_INFINITY;
    let open = 0;
    for (const b of untried) {
      const why = b.unavailable(now);
      if (why === undefined || why === "busy") return undefined;
      if (why === "open") open++;
      else if (b.live.cooldownUntil < coolingEnd) coolingEnd = b.live.cooldownUntil;
    }
    if (open === untried.length) {
      let reopen = Number.POSITIVE_INFINITY;
      for (const b of untried) reopen = Math.min(reopen, b.live.breaker.reopensAt());
      return { kind: "unavailable", reason: "circuit-open", retryAfterMs: Math.max(0, reopen - now), queuedMs };
    }
    if (coolingEnd >= deadline) return { kind: "cooling", retryAfterMs: coolingEnd - now, queuedMs };
    return undefined;
  }

  /** Holds a waiter out of its level's heap for `ms`, then puts it back in its old place. */
  private park(w: Waiter, ms: number): void {
    w.parked = later(() => {
      w.parked = undefined;
      w.level.heap.push(w);
      // Waiters unparked at the same moment all go back first; then the most urgent is served.
      this.dispatchSoon ??= later(() => {
        this.dispatchSoon = undefined;
        this.dispatch();
      }, 0);
    }, ms);
  }

  /**
   * Keeps one timer at the earliest moment a backend that waiters are blocked on becomes
   * available by itself — a cooldown's end, a breaker going half-open — or a waiter's own
   * not-before passes. A lease given back wakes the queue through `release`; everything else
   * that changes availability comes through here, so no waiter is left behind a change nobody
   * announced.
   */
  private armWake(now: number): void {
    let at = Number.POSITIVE_INFINITY;
    if (this.waiting) {
      for (const lane of this.lanes.values()) {
        if (!lane.waiting) continue;
        for (const b of lane.eligible) {
          if (lane.tried.has(b)) continue;
          const t = b.live.availableAt(now);
          if (t !== undefined && t < at) at = t;
        }
      }
    }
    if (at === this.wakeAt) return;
    this.wakeTimer?.clear();
    this.wakeTimer = undefined;
    this.wakeAt = at;
    if (!Number.isFinite(at)) return;
    this.wakeTimer = later(() => {
      this.wakeTimer = undefined;
      this.wakeAt = Number.POSITIVE_INFINITY;
      this.dispatch();
    }, at - now);
  }

  /**
   * Serves waiters while backends have room: among the lanes whose backends have a free slot,
   * the most urgent head (reserved share included), earliest arrival across lanes.
   */
  private dispatch(): void {
    const now = this.options.now();
    for (;;) {
      let best: Waiter | undefined;
      for (const lane of this.lanes.values()) {
        if (!lane.waiting) continue;
        const head = lane.nextLevel()?.heap.peek();
        if (!head) continue;
        if (best && (head.level.level > best.level.level || (head.level.level === best.level.level && head.place.seq > best.place.seq))) continue;
        if (this.pool.hasFree(lane.eligible, lane.tried, now)) best = head;
      }
      if (!best) break;
      const w = best;
      const backend = this.pool.pick(w.lane.eligible, w.lane.tried, now, w.req.affinity);
      // Free a moment ago but refused the lease (a half-open probe just claimed): wait for its answer.
      if (!backend || !backend.acquire(now)) break;
      w.level.heap.pop();
      w.level.virtualTime = Math.max(w.level.virtualTime, w.place.tag);
      w.lane.accrue(w.level, this.options.reservedShare);
      const stat = this.levelStat(w.level.level);
      const queuedMs = now - w.since;
      stat.dispatched++;
      stat.waitedMs += queuedMs;
      this.finish(w, { kind: "granted", backend: backend.name, queuedMs, place: w.place }, true);
    }
    this.armWake(now);
    this.noteDemand();
  }

  private finish(w: Waiter, decision: SlotDecision, alreadyPopped = false): void {
    if (w.settled) return;
    w.settled = true;
    w.expiry?.clear();
    if (w.onAbort) w.signal?.removeEventListener("abort", w.onAbort);
    if (w.parked) {
      w.parked.clear();
      w.parked = undefined;
    } else if (!alreadyPopped) w.level.heap.remove(w);
    this.waiting--;
    w.lane.waiting--;
    this.levelStat(w.level.level).waiting--;
    if (!w.lane.waiting) this.lanes.delete(w.lane.key);
    this.noteDemand();
    w.resolve(decision);
  }
}
