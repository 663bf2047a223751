/**
 * Cooldowns and breakers shared by every replica on one Redis (issue 13, CONTRACT §9); slots,
 * queue order and latency are shared by redis-slots.ts.
 *
 * - **Cooldowns.** A `retry-after` a backend gave one replica is honoured by all: the end time
 *   goes to `{prefix}cooldown:{backend}` (kept only if later than what is there, expiring with
 *   the cooldown) and is published on `{prefix}backends`.
 * - **Breakers.** A breaker that opens on one replica holds the others' open until its own
 *   reopening plus PROBE_GRACE_MS (`{prefix}breaker:{backend}`, expiring then): the replica that
 *   opened it sends the one half-open probe and publishes the result — closed: every replica
 *   closes; failed: the hold is renewed for the grown interval. A replica that never hears (the
 *   opener died, or has no traffic) probes itself once the hold ends.
 *
 * Every replica applies what it hears to its own backend state and looks at its queue again, and
 * on (re)connecting reads the keys, so a replica that started, or lost Redis, meanwhile learns of
 * them. Applying is local and synchronous: nothing on the request path waits for Redis. While
 * Redis is unreachable each replica keeps its own cooldowns and breakers (as without shared
 * state); what it saw in the meantime is not replayed to the others.
 */
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { GatewayRuntime } from "../../src/runtime.ts";
import type { BackendBreakerChange } from "../../src/state/backend-state.ts";
import type { RedisConnection } from "./redis.ts";

/** How long past its reopening a breaker that opened elsewhere stays open here: time for that replica's probe. */
export const PROBE_GRACE_MS = 5_000;

/** Stores an end time if later than the stored one (expiring with it), then publishes the message. */
const EXTEND_AND_PUBLISH = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local untilMs = tonumber(ARGV[1])
if untilMs > cur then redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1]) end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
`;
/** Forgets a breaker hold (the probe succeeded), then publishes the message. */
const CLEAR_AND_PUBLISH = `
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
`;

/** Keys read per SCAN step on (re)connect: one or two per backend at most. */
const SCAN_COUNT = 100;
const MAX_NAME = 256;

type Message = { type: "cooldown" | "open"; backend: string; until: number; from: string } | { type: "closed"; backend: string; from: string };

/** What the replica does with what it hears. */
export interface SharedBackendApply {
  cooldown(backend: string, until: number): void;
  /** `caughtUp`: read from the keys on (re)connect, so maybe this replica's own breaker: hold only one that is not open already. */
  holdOpen(backend: string, until: number, caughtUp: boolean): void;
  closed(backend: string): void;
}

export interface SharedBackendState {
  /** A cooldown an answer through this replica started. Never throws, never makes the caller wait. */
  cooldown(backend: string, until: number): void;
  /** A breaker change of this replica's (opened, or closed by its probe). */
  breaker(change: BackendBreakerChange, reopensAt: number): void;
  close(): Promise<void>;
}

export function shareBackendState(conn: RedisConnection, apply: SharedBackendApply, now: () => number = Date.now): SharedBackendState {
  const prefix = conn.keyPrefix;
  const channel = `${prefix}backends`;
  const me = randomUUID();
  const key = (kind: "cooldown" | "breaker", backend: string) => `${prefix}${kind}:${backend}`;

  const heard = (m: Partial<Message>, caughtUp = false) => {
    if (m.from === me || typeof m.backend !== "string" || m.backend.length > MAX_NAME) return;
    if (m.type === "closed") return apply.closed(m.backend);
    const until = (m as { until?: unknown }).until;
    if (typeof until !== "number" || !Number.isFinite(until) || until <= now()) return;
    if (m.type === "cooldown") apply.cooldown(m.backend, until);
    else if (m.type === "open") apply.holdOpen(m.backend, until, caughtUp);
  };

  // A subscribed connection can do nothing else: one of its own, as resilient as the main one.
  const sub: Redis = conn.client.duplicate();
  sub.on("error", () => undefined);
  sub.on("message", (_ch: string, text: string) => {
    try {
      heard(JSON.parse(text) as Partial<Message>);
    } catch {
      // Not ours.
    }
  });
  // On every (re)connect: subscribe, and catch up with what was set meanwhile.
  sub.on("ready", () => {
    void sub.subscribe(channel).catch(() => undefined);
    void catchUp();
  });

  async function catchUp(): Promise<void> {
    try {
      for (const kind of ["cooldown", "breaker"] as const) {
        let cursor = "0";
        do {
          const [next, keys] = await conn.client.scan(cursor, "MATCH", `${prefix}${kind}:*`, "COUNT", SCAN_COUNT);
          cursor = next;
          if (!keys.length) continue;
          const values = await conn.client.mget(...keys);
          keys.forEach((k, i) => heard({ type: kind === "cooldown" ? "cooldown" : "open", backend: k.slice(`${prefix}${kind}:`.length), until: Number(values[i]), from: "" }, true));
        } while (cursor !== "0");
      }
    } catch (err) {
      console.error(`sluice: shared backend state could not be read from Redis: ${(err as Error).message}`);
    }
  }

  const send = (what: string, run: () => Promise<unknown>) => {
    if (!conn.healthy) return;
    run().catch((err: Error) => console.error(`sluice: ${what} could not be shared through Redis: ${err.message}`));
  };
  const extend = (kind: "cooldown" | "breaker", type: "cooldown" | "open", backend: string, until: number) => {
    const at = Math.ceil(until);
    send(`the ${kind} of ${backend}`, () => conn.client.eval(EXTEND_AND_PUBLISH, 2, key(kind, backend), channel, String(at), JSON.stringify({ type, backend, until: at, from: me } satisfies Message)));
  };

  return {
    cooldown(backend, until) {
      if (backend.length <= MAX_NAME) extend("cooldown", "cooldown", backend, until);
    },
    breaker(change, reopensAt) {
      if (change.backend.length > MAX_NAME) return;
      // What came from other replicas is not sent back.
      if (change.reason === "shared-open" || change.reason === "shared-close") return;
      if (change.to === "open") extend("breaker", "open", change.backend, reopensAt + PROBE_GRACE_MS);
      else if (change.to === "closed") {
        send(`the breaker of ${change.backend}`, () => conn.client.eval(CLEAR_AND_PUBLISH, 2, key("breaker", change.backend), channel, JSON.stringify({ type: "closed", backend: change.backend, from: me } satisfies Message)));
      }
    },
    async close() {
      sub.disconnect(false);
    },
  };
}

/**
 * The runtime's side of it: the hooks for createRuntime (none without shared state), and what
 * is heard applied to `runtime()`'s backend state, its queue woken to look again.
 */
export function backendStateSharing(
  conn: RedisConnection | undefined,
  runtime: () => GatewayRuntime,
): { onCooldown?: (backend: string, until: number) => void; onBreakerChange?: (change: BackendBreakerChange) => void; close(): Promise<void> } {
  if (!conn) return { close: async () => undefined };
  const withLive = (backend: string, act: (live: NonNullable<ReturnType<GatewayRuntime["store"]["get"]>>, rt: GatewayRuntime) => void) => {
    const rt = runtime();
    const live = rt.store.get(backend);
    if (!live) return;
    act(live, rt);
    rt.scheduler.refresh?.();
  };
  const shared = shareBackendState(conn, {
    cooldown: (backend, until) => withLive(backend, (live) => live.coolDown(until)),
    holdOpen: (backend, until, caughtUp) =>
      withLive(backend, (live) => {
        const now = Date.now();
        if (!caughtUp || live.breaker.state(now) !== "open") live.breaker.holdOpen(until, now);
      }),
    closed: (backend) => withLive(backend, (live) => live.breaker.closeShared(Date.now())),
  });
  return {
    onCooldown: (backend, until) => shared.cooldown(backend, until),
    onBreakerChange: (change) => {
      const live = runtime().store.get(change.backend);
      if (live) shared.breaker(change, live.breaker.reopensAt());
    },
    close: () => shared.close(),
  };
}
