import { DurableObject } from "cloudflare:workers";
import { ConfigError } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { BackendPool } from "../../src/routing/pool.ts";
import { schedulerOptions } from "../../src/runtime.ts";
import { InProcessScheduler } from "../../src/scheduling/in-process.ts";
import type { SchedulerStats, SlotDecision, SlotRelease, SlotRequest } from "../../src/scheduling/port.ts";
import { InProcessBackendStore } from "../../src/state/backend-state.ts";
import { ConfigVersions, type ConfigEnv } from "./config-source.ts";
import { poolKey } from "./scheduler-client.ts";

/** The object's bindings: the Worker's own (it is defined in the same script), the config read from them as the Worker reads it. */
export type SchedulerEnv = ConfigEnv;

/**
 * What a Worker calls on the scheduler object (every call a Promise across the RPC boundary).
 * A `ticket` names one acquire call: unique per call, unlike the request id, which a client
 * may send twice. It lets a cancel find its waiter and ties a release to the slot it frees.
 */
export interface SchedulerRpc {
  acquire(request: SlotRequest, ticket: string): Promise<SlotDecision>;
  cancel(ticket: string): Promise<void>;
  release(backend: string, outcome: SlotRelease, ticket?: string): Promise<void>;
  stats(): Promise<SchedulerStats>;
}

/** While slots are held, an alarm this often keeps the object in memory (idle objects are evicted after 70-140 s). */
const KEEPALIVE_MS = 30_000;
/** How long a cancel that arrived before its acquire is remembered. */
const TOMBSTONE_MS = 60_000;
/**
 * A slot not released after this long is taken back: its holder is presumed gone (an isolate
 * killed mid-request never releases), and a lost slot would lower the backend's concurrency
 * for good. Longer than any attempt's headers timeout plus a long stream, and than the longest
 * job run (CONTRACT §7: a job may run for at least 30 minutes, and a job's attempt holds its
 * slot for all of it): 60 minutes, twice that, so a slot is never taken from a job still
 * running. The cost of a longer hold is only that a slot lost to a dead isolate comes back later.
 */
const MAX_HOLD_MS = 60 * 60_000;

/**
 * The one queue of a backend pool on Workers: a Durable Object holding the same
 * InProcessScheduler the Node gateway runs, so that every isolate's requests wait in one
 * queue and every backend's state (in-flight count, cooldown, breaker, latency) is shared.
 * Workers reach it over JS RPC through DurableObjectScheduler.
 */
export class SchedulerObject extends DurableObject<SchedulerEnv> {
  /** The backends' live state: kept across config versions (a new version keeps cooldowns, breakers and leases). */
  private readonly store = new InProcessBackendStore();
  private scheduler: InProcessScheduler | undefined;
  /** The config versions, read from the same bindings and in the same way as the Worker reads them (config-source.ts). */
  private readonly versions = new ConfigVersions<InProcessScheduler, SchedulerEnv>((config) => this.adopt(config), "scheduler object: ");
  /** Acquires still waiting, by ticket. */
  private readonly pending = new Map<string, AbortController>();
  /** Slots granted and not yet released, by ticket. */
  private readonly held = new Map<string, { backend: string; decision: SlotDecision; since: number }>();
  /** Tickets cancelled before their acquire arrived (calls on different stubs are not ordered). */
  private readonly cancelledEarly = new Map<string, number>();
  private alarmArmed = false;

  /** Resolves when a slot is granted, or the request expires, is refused or cancelled. */
  async acquire(request: SlotRequest, ticket: string = crypto.randomUUID()): Promise<SlotDecision> {
    const scheduler = this.scheduler ? this.refresh(this.scheduler) : await this.versions.get(this.env);
    if (this.cancelledEarly.delete(ticket)) return { kind: "cancelled" };
    // A retried call whose first answer was lost: the same grant again.
    const granted = this.held.get(ticket);
    if (granted) return granted.decision;
    this.pending.get(ticket)?.abort();
    const controller = new AbortController();
    this.pending.set(ticket, controller);
    try {
      // A new config while it waits changes nothing for it: the queue and the backends' state outlive versions.
      const decision = await scheduler.acquire(request, controller.signal);
      if (decision.kind === "granted") {
        this.held.set(ticket, { backend: decision.backend, decision, since: Date.now() });
        this.keepAlive();
      }
      return decision;
    } finally {
      if (this.pending.get(ticket) === controller) this.pending.delete(ticket);
    }
  }

  /** The caller went away: a waiting acquire resolves `cancelled`; a slot already granted to it is freed. */
  cancel(ticket: string): void {
    const waiting = this.pending.get(ticket);
    if (waiting) return waiting.abort();
    const granted = this.held.get(ticket);
    // A slot is held only once a version is in use: the scheduler exists.
    if (granted) return this.releaseOn(this.scheduler!, granted.backend, { verdict: "abandoned" }, ticket);
    const now = Date.now();
    for (const [t, until] of this.cancelledEarly) {
      if (until > now) break;
      this.cancelledEarly.delete(t);
    }
    this.cancelledEarly.set(ticket, now + TOMBSTONE_MS);
  }

  /** Ends an attempt: frees the slot the ticket holds and records the outcome for the backend's health. */
  release(backend: string, outcome: SlotRelease, ticket?: string): void | Promise<void> {
    // A new object (evicted since the grant) learns the backends first; a release never waits on KV otherwise.
    if (!this.scheduler) return this.versions.get(this.env).then((scheduler) => this.releaseOn(scheduler, backend, outcome, ticket));
    this.releaseOn(this.scheduler, backend, outcome, ticket);
  }

  stats(): SchedulerStats | Promise<SchedulerStats> {
    if (!this.scheduler) return this.versions.get(this.env).then((scheduler) => scheduler.stats());
    return this.refresh(this.scheduler).stats();
  }

  /**
   * Re-arms itself while slots are held, so the in-flight counts are not lost to an idle
   * eviction; takes back slots held past MAX_HOLD_MS.
   */
  alarm(): void {
    this.alarmArmed = false;
    const stale = Date.now() - MAX_HOLD_MS;
    for (const [ticket, h] of this.held) {
      if (h.since > stale) continue;
      console.warn(`sluice: a slot on ${h.backend} held for over ${MAX_HOLD_MS / 60_000} min was taken back (its request is presumed gone)`);
      this.releaseOn(this.scheduler!, h.backend, { verdict: "abandoned" }, ticket);
    }
    if (this.held.size) this.keepAlive();
  }

  private keepAlive(): void {
    if (this.alarmArmed) return;
    this.alarmArmed = true;
    this.ctx.storage.setAlarm(Date.now() + KEEPALIVE_MS, { allowUnconfirmed: true }).catch((err: unknown) => {
      this.alarmArmed = false;
      console.error("sluice: scheduler keep-alive alarm not set", err);
    });
  }

  private releaseOn(scheduler: InProcessScheduler, backend: string, outcome: SlotRelease, ticket: string | undefined): void {
    const b = this.store.get(backend);
    if (!b) return;
    let counted: boolean;
    if (ticket === undefined) counted = b.inFlight > 0;
    else {
      counted = this.held.get(ticket)?.backend === backend;
      if (counted) this.held.delete(ticket);
    }
    if (!counted) {
      // A slot this instance does not hold (granted before an eviction, or already freed by a
      // cancel): nothing to free, but a health verdict still counts.
      if (outcome.verdict === "abandoned") return;
      b.inFlight++;
    }
    scheduler.release(backend, outcome);
  }

  /**
   * The queue in use, and a look at the config in the background: a version read since
   * (SLUICE_CONFIG_KV is re-read at most every SLUICE_CONFIG_KV_TTL_MS, as by the Worker) is
   * adopted when the read answers, so no call waits on KV once the object has a version.
   */
  private refresh(scheduler: InProcessScheduler): InProcessScheduler {
    this.versions.get(this.env).catch((err: unknown) => console.error("sluice: scheduler object: reading the config failed", err));
    return scheduler;
  }

  /**
   * A new config version: its backends become a new pool in the same queue and store, so
   * waiters, leases, cooldowns and breakers carry over. A version naming other backends than
   * the pool this object is named for belongs to another pool's object (the Workers that read
   * it call that one): it is refused, and the version in use keeps serving the Workers that
   * have not read it yet.
   */
  private adopt(config: SluiceConfig): InProcessScheduler {
    const own = this.ctx.id?.name;
    const named = poolKey(config);
    if (own?.startsWith("pool:") && own !== named) {
      throw new ConfigError([`backends: this version names the pool "${named}"; this object queues for "${own}" (Workers that read this version use that pool's object)`]);
    }
    const pool = new BackendPool(config, this.store);
    if (this.scheduler) this.scheduler.usePool(pool, schedulerOptions(config));
    else this.scheduler = new InProcessScheduler(this.store, pool, schedulerOptions(config));
    return this.scheduler;
  }
}
