import { DurableObject } from "cloudflare:workers";
import { ConfigError, parseConfigText } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { BackendPool } from "../../src/routing/pool.ts";
import { schedulerOptions } from "../../src/runtime.ts";
import { InProcessScheduler } from "../../src/scheduling/in-process.ts";
import type { SchedulerStats, SlotDecision, SlotRelease, SlotRequest } from "../../src/scheduling/port.ts";
import { InProcessBackendStore } from "../../src/state/backend-state.ts";

export interface SchedulerEnv {
  /** The config JSON; other string bindings feed ${ENV} interpolation. */
  SLUICE_CONFIG?: string;
  [binding: string]: unknown;
}

/** The string bindings of a Worker's env: the values ${NAME} in the config is replaced from. */
export function stringBindings(env: SchedulerEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (typeof v === "string") out[k] = v;
  return out;
}

/** The config in SLUICE_CONFIG, as the Worker and the scheduler object both read it. */
export function configFromEnv(env: SchedulerEnv): SluiceConfig {
  const source = env.SLUICE_CONFIG ?? "";
  if (!source) throw new ConfigError(["SLUICE_CONFIG: not set (bind the config JSON as a var or secret)"]);
  return parseConfigText(source, stringBindings(env), "SLUICE_CONFIG");
}

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
 * for good. Longer than any attempt's headers timeout plus a long stream.
 */
const MAX_HOLD_MS = 15 * 60_000;

/**
 * The one queue of a backend pool on Workers: a Durable Object holding the same
 * InProcessScheduler the Node gateway runs, so that every isolate's requests wait in one
 * queue and every backend's state (in-flight count, cooldown, breaker, latency) is shared.
 * Workers reach it over JS RPC through DurableObjectScheduler.
 */
export class SchedulerObject extends DurableObject<SchedulerEnv> {
  /** The backends' live state: kept across config versions (a new SLUICE_CONFIG keeps cooldowns, breakers and leases). */
  private readonly store = new InProcessBackendStore();
  private scheduler: InProcessScheduler | undefined;
  private source: string | undefined;
  /** Acquires still waiting, by ticket. */
  private readonly pending = new Map<string, AbortController>();
  /** Slots granted and not yet released, by ticket. */
  private readonly held = new Map<string, { backend: string; decision: SlotDecision; since: number }>();
  /** Tickets cancelled before their acquire arrived (calls on different stubs are not ordered). */
  private readonly cancelledEarly = new Map<string, number>();
  private alarmArmed = false;

  /** Resolves when a slot is granted, or the request expires, is refused or cancelled. */
  async acquire(request: SlotRequest, ticket: string = crypto.randomUUID()): Promise<SlotDecision> {
    const scheduler = this.current();
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
    if (granted) return this.release(granted.backend, { verdict: "abandoned" }, ticket);
    const now = Date.now();
    for (const [t, until] of this.cancelledEarly) {
      if (until > now) break;
      this.cancelledEarly.delete(t);
    }
    this.cancelledEarly.set(ticket, now + TOMBSTONE_MS);
  }

  /** Ends an attempt: frees the slot the ticket holds and records the outcome for the backend's health. */
  release(backend: string, outcome: SlotRelease, ticket?: string): void {
    const scheduler = this.current();
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

  stats(): SchedulerStats | Promise<SchedulerStats> {
    return this.current().stats();
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
      this.release(h.backend, { verdict: "abandoned" }, ticket);
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

  /**
   * The queue, told of the current config's backends: a new SLUICE_CONFIG becomes a new pool
   * in the same queue and store, so waiters, leases, cooldowns and breakers carry over.
   */
  private current(): InProcessScheduler {
    const source = this.env.SLUICE_CONFIG ?? "";
    if (this.scheduler && this.source === source) return this.scheduler;
    const config = configFromEnv(this.env);
    const pool = new BackendPool(config, this.store);
    if (this.scheduler) this.scheduler.usePool(pool, schedulerOptions(config));
    else this.scheduler = new InProcessScheduler(this.store, pool, schedulerOptions(config));
    this.source = source;
    return this.scheduler;
  }
}
