/**
 * Backend slots shared by every replica on one Redis (issue 13, CONTRACT §9): `maxConcurrency`
 * holds across replicas, and a freed slot goes to the most urgent waiter of all replicas.
 *
 * Each replica holds a number of each backend's slots, recorded in `{p}slots:{backend}`
 * (replica → count; the counts of live replicas never add up to more than `maxConcurrency`), and
 * leases locally against them (`BackendLive.share`): the queue and the request path stay in
 * process and synchronous, and a replica that keeps its slots busy never asks Redis. Slots move:
 *
 * - **Wanting.** When requests wait here for a backend whose slots here are all taken, the
 *   replica records what waits (`{p}want:{backend}`: the most urgent level, the arrival of the
 *   request first in line there, how many) and is given free slots at once, if there are any.
 * - **Giving.** A slot freed here stays here unless another replica wants it for a request
 *   that goes first — a more urgent level, or the same level and an earlier arrival; then it is
 *   given back and handed, in the same script, to the most urgent want of all. A replica with
 *   idle slots gives them up as soon as another replica says it wants them.
 * - **Leases.** Each replica renews its presence (`{p}replicas`) every quarter of
 *   `state.redis.leaseMs`; one not heard from for three quarters of it is dead, and the next
 *   script any replica runs hands its slots to the wants (so within `leaseMs` of its last
 *   renewal, SIGKILL included). A graceful stop hands them over at once.
 *
 * Every decision is one Lua script on Redis's clock. A replica learns of slots given to it from a
 * message on `{p}slots` and then asks Redis for its count: local counts only ever come from
 * script replies, which arrive in order, minus slots given back and not yet confirmed — so a
 * replica never counts a slot Redis has not recorded as its.
 *
 * While Redis is unreachable each replica uses every slot of `maxConcurrency` itself, as without
 * shared state (so N replicas may send N × maxConcurrency), with a warning; once it is back, the
 * replica records the slots it is actually using, and replicas holding more than there are give
 * the surplus back as their requests finish.
 */
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { goesBefore, type SlotBroker, type Waiting } from "../../src/scheduling/broker.ts";
import type { GatewayRuntime } from "../../src/runtime.ts";
import type { BackendLive } from "../../src/state/backend-state.ts";
import type { RedisConnection } from "./redis.ts";

/** Shared by every script: ARGV[1] key prefix, ARGV[2] this replica, ARGV[3] how long a renewal keeps it alive (ms). */
const PRELUDE = `
local P, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replicas, chan = P .. 'replicas', P .. 'slots'
local keep = ttl * 40
local function alive(r)
  local s = redis.call('ZSCORE', replicas, r)
  return s ~= false and s ~= nil and tonumber(s) > now
end
local function parse(v)
  local l, s, n = string.match(v, '^(-?[%d.]+):(%d+):(%d+)$')
  return tonumber(l), tonumber(s), tonumber(n)
end
local function tell(kind, b, r, l, s, n)
  redis.call('PUBLISH', chan, cjson.encode({t = kind, b = b, r = r, l = l, s = s, n = n, by = me}))
end
-- One backend: forget what dead replicas held and wanted, then give the free slots to the most
-- urgent wants first. Returns this replica's slots and the total held.
local function settle(b, max)
  local slots, want = P .. 'slots:' .. b, P .. 'want:' .. b
  local total = 0
  local h = redis.call('HGETALL', slots)
  for i = 1, #h, 2 do
    if alive(h[i]) then total = total + tonumber(h[i + 1]) else redis.call('HDEL', slots, h[i]) end
  end
  local list = {}
  local d = redis.call('HGETALL', want)
  for i = 1, #d, 2 do
    local l, s, n = parse(d[i + 1])
    if n and alive(d[i]) then
      table.insert(list, {r = d[i], l = l, s = s, n = n})
    else
      redis.call('HDEL', want, d[i])
      tell('want', b, d[i], 0, 0, 0)
    end
  end
  if total < max and #list > 0 then
    table.sort(list, function(x, y)
      if x.l ~= y.l then return x.l < y.l end
      if x.s ~= y.s then return x.s < y.s end
      return x.r < y.r
    end)
    for _, w in ipairs(list) do
      if total >= max then break end
      local k = math.min(w.n, max - total)
      redis.call('HINCRBY', slots, w.r, k)
      total = total + k
      w.n = w.n - k
      if w.n > 0 then redis.call('HSET', want, w.r, w.l .. ':' .. w.s .. ':' .. w.n) else redis.call('HDEL', want, w.r) end
      tell('grant', b, w.r, w.l, w.s, w.n)
    end
  end
  redis.call('PEXPIRE', slots, keep)
  redis.call('PEXPIRE', want, keep)
  return tonumber(redis.call('HGET', slots, me) or '0'), total
end
`;

/** What waits here: ARGV[4] backend, [5] maxConcurrency, [6] requests waiting, [7] leases in use here, [8] level, [9] arrival. */
const WANT = `${PRELUDE}
redis.call('ZADD', replicas, now + ttl, me)
local b = ARGV[4]
local want = P .. 'want:' .. b
local had = redis.call('HEXISTS', want, me) == 1
local held = tonumber(redis.call('HGET', P .. 'slots:' .. b, me) or '0')
local need = tonumber(ARGV[6]) - math.max(0, held - tonumber(ARGV[7]))
if need > 0 then redis.call('HSET', want, me, ARGV[8] .. ':' .. ARGV[9] .. ':' .. need) else redis.call('HDEL', want, me) end
local mine, total = settle(b, tonumber(ARGV[5]))
local left = redis.call('HGET', want, me)
if left then
  local l, s, n = parse(left)
  tell('want', b, me, l, s, n)
elseif had then
  tell('want', b, me, 0, 0, 0)
end
return {mine, total}
`;

/** Gives slots back: ARGV[4] backend, [5] maxConcurrency, [6] how many. */
const GIVE = `${PRELUDE}
redis.call('ZADD', replicas, now + ttl, me)
local slots = P .. 'slots:' .. ARGV[4]
if redis.call('HINCRBY', slots, me, -tonumber(ARGV[6])) <= 0 then redis.call('HDEL', slots, me) end
local mine, total = settle(ARGV[4], tonumber(ARGV[5]))
return {mine, total}
`;

/**
 * The renewal: ARGV[4] "1" to record the slots in use here as this replica's (after Redis was
 * unreachable), then per backend: name, maxConcurrency, leases in use here, latency average (ms,
 * -1 unknown). Returns whether it recorded them, then per backend: this replica's slots, the
 * total held, in flight across replicas, their mean latency (-1 unknown), live replicas seen.
 */
const RENEW = `${PRELUDE}
local prev = redis.call('ZSCORE', replicas, me)
local adopt = ARGV[4] == '1' or not prev or tonumber(prev) <= now
redis.call('ZADD', replicas, now + ttl, me)
redis.call('ZREMRANGEBYSCORE', replicas, '-inf', now)
redis.call('PEXPIRE', replicas, keep)
local out = {adopt and 1 or 0}
for i = 5, #ARGV, 4 do
  local b, busy = ARGV[i], tonumber(ARGV[i + 2])
  local slots, seen = P .. 'slots:' .. b, P .. 'seen:' .. b
  if adopt then
    if busy > 0 then redis.call('HSET', slots, me, busy) else redis.call('HDEL', slots, me) end
  end
  redis.call('HSET', seen, me, busy .. ':' .. ARGV[i + 3])
  local max = tonumber(ARGV[i + 1])
  local mine, total = settle(b, max)
  -- Slots nobody wants wait here, idle, for this replica's next requests (given up when wanted).
  if total < max then
    mine = redis.call('HINCRBY', slots, me, max - total)
    total = max
  end
  local inflight, sum, cnt, n = 0, 0, 0, 0
  local h = redis.call('HGETALL', seen)
  for j = 1, #h, 2 do
    if alive(h[j]) then
      local f, l = string.match(h[j + 1], '^(%d+):(-?%d+)$')
      n = n + 1
      inflight = inflight + (tonumber(f) or 0)
      if l and tonumber(l) >= 0 then
        sum = sum + tonumber(l)
        cnt = cnt + 1
      end
    else
      redis.call('HDEL', seen, h[j])
    end
  end
  redis.call('PEXPIRE', seen, keep)
  table.insert(out, mine)
  table.insert(out, total)
  table.insert(out, inflight)
  table.insert(out, cnt > 0 and math.floor(sum / cnt + 0.5) or -1)
  table.insert(out, n)
end
return out
`;

/** A graceful stop: per backend name, maxConcurrency; this replica's slots go to the wants at once. */
const LEAVE = `${PRELUDE}
redis.call('ZREM', replicas, me)
for i = 4, #ARGV, 2 do
  local b = ARGV[i]
  redis.call('HDEL', P .. 'slots:' .. b, me)
  redis.call('HDEL', P .. 'want:' .. b, me)
  redis.call('HDEL', P .. 'seen:' .. b, me)
  tell('want', b, me, 0, 0, 0)
  settle(b, tonumber(ARGV[i + 1]))
end
return 1
`;

const MAX_NAME = 256;

/** One backend's slots as this replica knows them. */
interface Slots {
  /** This replica's slots in the last reply from Redis. */
  held: number;
  /** Slots given back whose reply has not come yet: not used meanwhile. */
  giving: number;
  /** Slots held beyond maxConcurrency by all replicas together (after an outage): given back as leases end. */
  surplus: number;
  /** What waits here now (from the queue), and what Redis was last told. */
  want: Waiting | undefined;
  told: string | undefined;
  asking: boolean;
  /** Bumped by each message that slots were given to this replica: a reply from before it may not show them. */
  grants: number;
  /** Other replicas' wants, as their messages said. */
  others: Map<string, Waiting>;
  /** Across replicas, from the last renewal. */
  seen?: { inFlight: number; held: number; replicas: number };
}

/** Per backend, across replicas (from the last renewal: at most a quarter of the lease old). */
export interface SharedSlotsStatus {
  backend: string;
  maxConcurrency: number;
  /** Requests in flight on every live replica together. */
  inFlight: number;
  /** Slots held by all replicas (in use or idle). */
  slotsHeld: number;
  /** Slots this replica holds now. */
  slotsHere: number;
  replicas: number;
}

export interface SlotSharing {
  broker: SlotBroker;
  /** After a config version is adopted: its backends are shared from now on; resolves after one renewal (bounded). */
  sync(): Promise<void>;
  status(): SharedSlotsStatus[];
  /** Hands this replica's slots to the others and stops; `crash` (tests) leaves them to their lease, as a killed process does. */
  close(options?: { crash?: boolean }): Promise<void>;
}

type Message = { t?: unknown; b?: unknown; r?: unknown; l?: unknown; s?: unknown; n?: unknown; by?: unknown };

/** Shares the slots of `runtime()`'s backends that have a finite `maxConcurrency`. */
export function shareSlots(conn: RedisConnection, runtime: () => GatewayRuntime, leaseMs: number): SlotSharing {
  const me = randomUUID();
  const prefix = conn.keyPrefix;
  const every = Math.max(100, Math.floor(leaseMs / 4));
  const ttl = Math.max(every + 50, leaseMs - every);
  const slots = new Map<string, Slots>();
  /** Renewed since the connection came up: until then every slot is this replica's (as without Redis). */
  let active = false;
  let closed = false;
  let warned = false;

  const state = (name: string): Slots => {
    let s = slots.get(name);
    if (!s) {
      s = { held: 0, giving: 0, surplus: 0, want: undefined, told: undefined, asking: false, grants: 0, others: new Map() };
      slots.set(name, s);
    }
    return s;
  };
  const shared = (live: BackendLive) => Number.isFinite(live.maxConcurrency) && live.name.length <= MAX_NAME;
  const refresh = () => runtime().scheduler.refresh?.();

  /** A reply's count for this replica, less what is being given back. */
  const apply = (live: BackendLive, s: Slots, mine: number, total: number) => {
    s.held = mine;
    s.surplus = Math.max(0, total - live.maxConcurrency);
    live.share = Math.max(0, mine - s.giving);
  };

  const run = (script: string, args: (string | number)[]) => conn.client.eval(script, 0, prefix, me, ttl, ...args) as Promise<number[]>;

  const failed = (what: string) => (err: Error) => {
    if (conn.healthy) console.error(`sluice: backend slots could not be ${what} on Redis: ${err.message}`);
  };

  /** Tells Redis what waits here for `name` (one script at a time per backend; the newest want wins). */
  const ask = (name: string) => {
    const s = state(name);
    const live = runtime().store.get(name);
    if (!active || !live || live.share === undefined || s.asking) return;
    const w = s.want;
    const told = w ? `${w.level}:${Math.floor(w.since)}:${w.count}` : "";
    if (told === s.told) return;
    s.asking = true;
    const grants = s.grants;
    run(WANT, [name, live.maxConcurrency, w?.count ?? 0, live.inFlight, w?.level ?? 0, Math.floor(w?.since ?? 0)])
      .then(([mine, total]) => {
        s.asking = false;
        if (!active || live.share === undefined) return;
        // Slots given meanwhile may not be in this reply: ask once more.
        s.told = s.grants === grants ? told : undefined;
        apply(live, s, mine!, total!);
        refresh();
        ask(name);
      })
      .catch((err: Error) => {
        s.asking = false;
        s.told = undefined;
        failed("asked for")(err);
      });
  };

  /** Gives `n` slots back (for another replica's want, or a surplus): not used here from now on. */
  const give = (live: BackendLive, n: number) => {
    const s = state(live.name);
    s.giving += n;
    live.share = Math.max(0, s.held - s.giving);
    run(GIVE, [live.name, live.maxConcurrency, n])
      .then(([mine, total]) => {
        s.giving -= n;
        if (active && live.share !== undefined) apply(live, s, mine!, total!);
        refresh();
      })
      .catch((err: Error) => {
        // It may have been given: count it gone (the next renewal says what is held).
        s.giving -= n;
        s.held = Math.max(0, s.held - n);
        if (live.share !== undefined) live.share = Math.max(0, s.held - s.giving);
        failed("given back")(err);
      });
  };

  const mostUrgentElsewhere = (s: Slots): Waiting | undefined => {
    let best: Waiting | undefined;
    for (const w of s.others.values()) if (!best || goesBefore(w, best)) best = w;
    return best;
  };

  const broker: SlotBroker = {
    demand(waiting) {
      for (const [name, s] of slots) if (s.want && !waiting.has(name)) (s.want = undefined), ask(name);
      for (const [name, w] of waiting) {
        state(name).want = w;
        ask(name);
      }
    },
    released(name, next) {
      const live = runtime().store.get(name);
      if (!active || !live || live.share === undefined || live.atLimit()) return;
      const s = state(name);
      if (s.surplus > 0) {
        s.surplus--;
        return give(live, 1);
      }
      const elsewhere = mostUrgentElsewhere(s);
      if (elsewhere && (!next || goesBefore(elsewhere, next))) give(live, 1);
    },
  };

  const heard = (m: Message) => {
    if (typeof m.b !== "string" || typeof m.r !== "string" || typeof m.n !== "number") return;
    const live = runtime().store.get(m.b);
    if (!live || !shared(live)) return;
    const s = state(m.b);
    if (m.r === me) {
      // Slots given to this replica by another's script: ask Redis how many it holds now.
      if (m.t === "grant" && m.by !== me) {
        s.grants++;
        s.told = undefined;
        ask(m.b);
      }
      return;
    }
    if (m.n > 0 && typeof m.l === "number" && typeof m.s === "number") s.others.set(m.r, { level: m.l, since: m.s, count: m.n });
    else s.others.delete(m.r);
    // Idle slots here, a want there: hand them over now rather than at the next release.
    if (m.t === "want" && m.n > 0 && active && live.share !== undefined && !s.want) {
      const idle = live.share - live.inFlight;
      if (idle > 0) give(live, Math.min(idle, m.n));
    }
  };

  const sub: Redis = conn.client.duplicate();
  sub.on("error", () => undefined);
  sub.on("message", (_ch: string, text: string) => {
    try {
      heard(JSON.parse(text) as Message);
    } catch {
      // Not ours.
    }
  });
  /** Subscribed, and the others' wants read: a replica that joins (or rejoins) late knows what waits elsewhere. */
  let joined: () => void = () => undefined;
  let listening = new Promise<void>((resolve) => (joined = resolve));
  sub.on("ready", () => {
    const done = listen();
    void done.then(joined);
    listening = done;
  });
  async function listen(): Promise<void> {
    try {
      await sub.subscribe(`${prefix}slots`);
      for (const live of runtime().store.all()) {
        if (!shared(live)) continue;
        const wants = await conn.client.hgetall(`${prefix}want:${live.name}`);
        const others = state(live.name).others;
        for (const [r, v] of Object.entries(wants)) {
          const [l, since, n] = v.split(":").map(Number);
          if (r !== me && n! > 0 && Number.isFinite(l) && Number.isFinite(since)) others.set(r, { level: l!, since: since!, count: n! });
        }
      }
    } catch (err) {
      failed("followed")(err as Error);
    }
  }

  /** Every slot this replica's own again (Redis unreachable), as without shared state. */
  const standAlone = () => {
    const wasActive = active;
    active = false;
    for (const live of runtime().store.all()) live.share = undefined;
    for (const s of slots.values()) {
      s.others.clear();
      s.told = undefined;
      s.held = 0;
    }
    if (wasActive) {
      refresh();
      if (!warned) console.warn("sluice: Redis unreachable: backend slots are per replica (each may use all of maxConcurrency) until it is back");
      warned = true;
    }
  };

  let renewing: Promise<void> | undefined;
  const renew = (adopt: boolean): Promise<void> => {
    if (renewing) return renewing;
    if (closed || !conn.healthy) return Promise.resolve();
    const backends = [...runtime().store.all()].filter(shared);
    const args: (string | number)[] = [adopt ? "1" : "0"];
    for (const live of backends) args.push(live.name, live.maxConcurrency, live.inFlight, live.ttfbMs === undefined ? -1 : Math.round(live.ttfbMs));
    renewing = run(RENEW, args)
      .then((out) => {
        if (closed || !conn.healthy) return;
        const wasActive = active;
        active = true;
        warned = false;
        backends.forEach((live, i) => {
          const [mine, total, inFlight, ttfb, replicas] = out.slice(1 + i * 5, 6 + i * 5) as number[];
          const s = state(live.name);
          if (live.share === undefined) live.share = 0;
          apply(live, s, mine!, total!);
          s.seen = { inFlight: inFlight!, held: total!, replicas: replicas! };
          // The replicas' averages blended: latency routing sees what every replica measured.
          if (ttfb! >= 0 && replicas! > 1) live.ttfbMs = ttfb;
        });
        if (!wasActive || out[0] === 1) for (const s of slots.values()) s.told = undefined;
        for (const name of slots.keys()) ask(name);
        refresh();
      })
      .catch(failed("renewed"))
      .finally(() => {
        renewing = undefined;
      });
    return renewing;
  };

  const timer = setInterval(() => void renew(!active), every);
  timer.unref();
  const offHealth = conn.onHealth((healthy) => (healthy ? void renew(true) : standAlone()));

  return {
    broker,
    async sync() {
      if (!conn.healthy) return;
      // Backends new in this version start with no slots here until Redis gives some.
      if (active) for (const live of runtime().store.all()) if (shared(live) && live.share === undefined) live.share = 0;
      await Promise.race([Promise.all([renew(!active), listening]), new Promise((r) => setTimeout(r, 1_000).unref())]);
    },
    status() {
      const out: SharedSlotsStatus[] = [];
      for (const live of runtime().store.all()) {
        const s = slots.get(live.name);
        if (!shared(live) || !s?.seen) continue;
        out.push({ backend: live.name, maxConcurrency: live.maxConcurrency, inFlight: s.seen.inFlight, slotsHeld: s.seen.held, slotsHere: live.share ?? 0, replicas: s.seen.replicas });
      }
      return out;
    },
    async close(options) {
      closed = true;
      clearInterval(timer);
      offHealth();
      if (conn.healthy && active && !options?.crash) {
        const args: (string | number)[] = [];
        for (const live of runtime().store.all()) if (shared(live)) args.push(live.name, live.maxConcurrency);
        await run(LEAVE, args).catch(failed("handed over"));
      }
      active = false;
      sub.disconnect(false);
    },
  };
}
