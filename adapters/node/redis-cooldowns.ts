/**
 * Cooldowns shared by every replica on one Redis (issue 13, CONTRACT §9): a `retry-after` a
 * backend gave one replica is honoured by all. The replica that saw it writes the end time to
 * `{prefix}cooldown:{backend}` (kept only if later than what is there, expiring with the
 * cooldown) and publishes it on `{prefix}cooldowns`; every replica applies what it hears to its
 * own backend state and looks at its queue again, and on (re)connecting reads the keys, so a
 * replica that started, or lost Redis, during a cooldown learns of it too.
 *
 * Applying is local and synchronous: nothing on the request path waits for Redis. While Redis is
 * unreachable each replica keeps its own cooldowns (as without shared state); what it saw in the
 * meantime is not replayed to the others.
 */
import type { Redis } from "ioredis";
import type { GatewayRuntime } from "../../src/runtime.ts";
import type { RedisConnection } from "./redis.ts";

/** Sets the cooldown's end if later than the stored one (expiring with it), then publishes it. */
const ANNOUNCE = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local untilMs = tonumber(ARGV[1])
if untilMs > cur then redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1]) end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
`;

/** Keys read per SCAN step on (re)connect: cooldowns are few (one per backend at most). */
const SCAN_COUNT = 100;
/** Backend names kept in a key are bounded like everything else. */
const MAX_NAME = 256;

export interface SharedCooldowns {
  /** A cooldown an answer through this replica started: tell the others. Never throws, never waits the caller. */
  announce(backend: string, until: number): void;
  close(): Promise<void>;
}

/**
 * Shares cooldowns through `conn`; `apply(backend, until)` is called for each one heard (from
 * other replicas, and this one's own, which is harmless: applying is idempotent).
 */
export function shareCooldowns(conn: RedisConnection, apply: (backend: string, until: number) => void, now: () => number = Date.now): SharedCooldowns {
  const prefix = conn.keyPrefix;
  const channel = `${prefix}cooldowns`;
  const keyOf = (backend: string) => `${prefix}cooldown:${backend}`;
  const heard = (backend: unknown, until: unknown) => {
    if (typeof backend !== "string" || backend.length > MAX_NAME || typeof until !== "number" || !Number.isFinite(until)) return;
    if (until > now()) apply(backend, until);
  };

  // A subscribed connection can do nothing else: one of its own, as resilient as the main one.
  const sub: Redis = conn.client.duplicate();
  sub.on("error", () => undefined);
  sub.on("message", (_ch: string, text: string) => {
    try {
      const m = JSON.parse(text) as { backend?: unknown; until?: unknown };
      heard(m.backend, m.until);
    } catch {
      // Not ours.
    }
  });
  // On every (re)connect: subscribe, and catch up with cooldowns set meanwhile.
  sub.on("ready", () => {
    void sub.subscribe(channel).catch(() => undefined);
    void catchUp();
  });

  async function catchUp(): Promise<void> {
    try {
      let cursor = "0";
      do {
        const [next, keys] = await conn.client.scan(cursor, "MATCH", `${prefix}cooldown:*`, "COUNT", SCAN_COUNT);
        cursor = next;
        if (!keys.length) continue;
        const values = await conn.client.mget(...keys);
        keys.forEach((k, i) => heard(k.slice(`${prefix}cooldown:`.length), Number(values[i])));
      } while (cursor !== "0");
    } catch (err) {
      console.error(`sluice: shared cooldowns could not be read from Redis: ${(err as Error).message}`);
    }
  }

  return {
    announce(backend, until) {
      if (!conn.healthy || backend.length > MAX_NAME) return;
      conn.client
        .eval(ANNOUNCE, 2, keyOf(backend), channel, String(Math.ceil(until)), JSON.stringify({ backend, until: Math.ceil(until) }))
        .catch((err: Error) => console.error(`sluice: the cooldown of ${backend} could not be shared through Redis: ${err.message}`));
    },
    async close() {
      sub.disconnect(false);
    },
  };
}

/**
 * The runtime's side of it: `onCooldown` for createRuntime (undefined without shared state), and
 * what is heard applied to `runtime()`'s backend state, its queue woken to look again.
 */
export function cooldownSharing(conn: RedisConnection | undefined, runtime: () => GatewayRuntime): { onCooldown?: (backend: string, until: number) => void; close(): Promise<void> } {
  if (!conn) return { close: async () => undefined };
  const shared = shareCooldowns(conn, (backend, until) => {
    const rt = runtime();
    const live = rt.store.get(backend);
    if (!live) return;
    live.coolDown(until);
    rt.scheduler.refresh?.();
  });
  return { onCooldown: (backend, until) => shared.announce(backend, until), close: () => shared.close() };
}
