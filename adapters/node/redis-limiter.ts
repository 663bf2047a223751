/**
 * The RateLimiter port on Redis (config `state.redis`): the token and request budgets of
 * `limits` shared by every replica of a Node or Azure Functions gateway.
 *
 * Each call is ONE Lua script, so a reservation takes from every budget of its scopes or from
 * none in one atomic step on the server, exactly as InProcessRateLimiter does in one process: N
 * requests of one caller spread over any number of replicas get the admissions one replica
 * would give. The scripts reproduce InProcessRateLimiter's buckets number for number (the same
 * double-precision arithmetic, in the same order): continuous refill at the capacity per minute,
 * debt down to MAX_DEBT_MINUTES, Retry-After and the x-ratelimit-* budget view.
 *
 * Time: the scripts read the Redis server's clock (TIME), not the replica's. Every replica then
 * refills the same bucket on the same clock: replica clocks that disagree by a few hundred ms
 * would otherwise refill a bucket early (or, going back, not at all) depending on which replica
 * touched it last. A test may pass its own clock (`now`), sent with each call instead.
 *
 * Keys: `<keyPrefix>{limits}:t:<scope>` and `…:r:<scope>` (token and request bucket), hashes of
 * capacity, level and time. A bucket is written only when touched, and expires (PEXPIRE) a
 * minute after it would be full again: a full bucket carries no information (a missing key
 * reads as a full bucket), so nothing grows without bound. The `{limits}` hash tag keeps every
 * key of a multi-scope reservation in one cluster slot.
 *
 * Redis unreachable: see RedisRateLimiter.
 */
import { InProcessRateLimiter, MAX_DEBT_MINUTES, MAX_RETRY_AFTER_MS, tokenCapacity, type Admission, type BudgetView, type LimitScope, type RateLimiter, type Reservation } from "../../src/governance/limits.ts";
import type { Redis } from "ioredis";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { openRedis, redactedUrl, type RedisConnection, type RedisConnectionOptions } from "./redis.ts";

/** Shared by the three scripts: the Bucket of src/governance/limits.ts, in Lua. */
const BUCKET_LUA = `
local EPSILON = 1e-6
local DEBT = ${MAX_DEBT_MINUTES}
local GRACE = 60000
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(x) return string.format('%.17g', x) end
-- One table per key within a call, so a key named twice is one bucket (as in one process).
local seen = {}
local function read(key)
  if seen[key] then return seen[key] end
  local v = redis.call('HMGET', key, 'c', 'l', 'a')
  local c = tonumber(v[1])
  if c == nil then return nil end
  seen[key] = { key = key, c = c, l = tonumber(v[2]), a = tonumber(v[3]) }
  return seen[key]
end
local function fresh(key, cap, now)
  seen[key] = { key = key, c = cap, l = cap, a = now }
  return seen[key]
end
local function refill(b, now)
  if now > b.a then
    b.l = math.min(b.c, b.l + ((now - b.a) * b.c) / 60000)
    b.a = now
  end
end
local function waitFor(b, n, now)
  refill(b, now)
  local short = n - b.l
  if short <= EPSILON then return 0 end
  return math.max(1, math.ceil((short * 60000) / b.c - 1e-9))
end
local function take(b, n, now)
  refill(b, now)
  b.l = math.max(-DEBT * b.c, b.l - n)
end
local function give(b, n, now)
  refill(b, now)
  b.l = math.min(b.c, b.l + n)
end
local function remaining(b, now)
  refill(b, now)
  return math.max(0, math.floor(b.l + EPSILON))
end
local function save(b, now)
  redis.call('HSET', b.key, 'c', fmt(b.c), 'l', fmt(b.l), 'a', fmt(b.a))
  redis.call('PEXPIRE', b.key, waitFor(b, b.c, now) + GRACE)
end
`;

/**
 * reserve. KEYS: the token and the request bucket of each scope, in pairs. ARGV[1]: now in ms or
 * '' (Redis TIME); ARGV[2]: the whole token amount; then per scope its token and request
 * capacity ('0': none). Returns admitted (0/1), token wait, request wait, then the view: limit,
 * remaining and reset of tokens, then of requests (-1: none).
 */
const RESERVE_LUA = `${BUCKET_LUA}
local now = clock(ARGV[1])
local amount = tonumber(ARGV[2])
local n = #KEYS / 2
local buckets = {}
for i = 1, n do
  local tc = tonumber(ARGV[1 + 2 * i])
  local rc = tonumber(ARGV[2 + 2 * i])
  local s = {}
  -- A bucket whose capacity changed starts again, full (as InProcessRateLimiter's use()).
  if tc > 0 then
    s.t = read(KEYS[2 * i - 1])
    if s.t == nil or s.t.c ~= tc then s.t = fresh(KEYS[2 * i - 1], tc, now) end
  end
  if rc > 0 then
    s.r = read(KEYS[2 * i])
    if s.r == nil or s.r.c ~= rc then s.r = fresh(KEYS[2 * i], rc, now) end
  end
  buckets[i] = s
end
local tokenWait, requestWait = 0, 0
local tokenBy, requestBy = nil, nil
for i = 1, n do
  local s = buckets[i]
  if s.t then
    local w = waitFor(s.t, amount, now)
    if w > tokenWait then tokenWait, tokenBy = w, s.t end
  end
  if s.r then
    local w = waitFor(s.r, math.min(1, s.r.c), now)
    if w > requestWait then requestWait, requestBy = w, s.r end
  end
end
local admitted = tokenWait == 0 and requestWait == 0
for i = 1, n do
  local s = buckets[i]
  if admitted then
    if s.t then take(s.t, amount, now) end
    if s.r then take(s.r, math.min(1, s.r.c), now) end
  end
  if s.t then save(s.t, now) end
  if s.r then save(s.r, now) end
end
local function pick(kind, refusing)
  if refusing then return refusing end
  local best = nil
  for i = 1, n do
    local x = buckets[i][kind]
    if x and (best == nil or remaining(x, now) < remaining(best, now)) then best = x end
  end
  return best
end
local out = { admitted and 1 or 0, tokenWait, requestWait, -1, -1, -1, -1, -1, -1 }
local t = pick('t', tokenBy)
if t then out[4], out[5], out[6] = math.ceil(t.c), remaining(t, now), waitFor(t, t.c, now) end
local r = pick('r', requestBy)
if r then out[7], out[8], out[9] = math.ceil(r.c), remaining(r, now), waitFor(r, r.c, now) end
return out
`;

/**
 * settle. KEYS: the token bucket of each scope. ARGV[1]: now or ''; ARGV[2]: the refund (reserved
 * minus used; negative: an overdraw to charge); then per scope its token capacity ('0': none).
 * A missing bucket is a full one: a refund to it changes nothing, an overdraw starts it.
 */
const SETTLE_LUA = `${BUCKET_LUA}
local now = clock(ARGV[1])
local refund = tonumber(ARGV[2])
for i = 1, #KEYS do
  local b = read(KEYS[i])
  local cap = tonumber(ARGV[2 + i])
  if b == nil and refund < 0 and cap > 0 then b = fresh(KEYS[i], cap, now) end
  if b then
    if refund >= 0 then give(b, refund, now) else take(b, -refund, now) end
    save(b, now)
  end
end
return 1
`;

/** release. KEYS: token and request bucket of each scope, in pairs. ARGV[1]: now or ''; ARGV[2]: the tokens reserved. */
const RELEASE_LUA = `${BUCKET_LUA}
local now = clock(ARGV[1])
local tokens = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local t = read(KEYS[2 * i - 1])
  if t then give(t, tokens, now); save(t, now) end
  local r = read(KEYS[2 * i])
  if r then give(r, math.min(1, r.c), now); save(r, now) end
end
return 1
`;

type Script = (numKeys: number, ...args: string[]) => Promise<unknown>;
interface ScriptedClient {
  sluiceLimitsReserve: Script;
  sluiceLimitsSettle: Script;
  sluiceLimitsRelease: Script;
}

/** Defines the scripts on a client once (ioredis sends EVAL once per connection, then EVALSHA). */
function scripted(client: Redis): ScriptedClient {
  const c = client as Redis & Partial<ScriptedClient>;
  if (!c.sluiceLimitsReserve) {
    client.defineCommand("sluiceLimitsReserve", { lua: RESERVE_LUA });
    client.defineCommand("sluiceLimitsSettle", { lua: SETTLE_LUA });
    client.defineCommand("sluiceLimitsRelease", { lua: RELEASE_LUA });
  }
  return c as unknown as ScriptedClient;
}

/** A count as a finite whole number ≥ 0, as InProcessRateLimiter counts it. */
function wholeAmount(n: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!(n > 0)) return 0;
  return n >= max ? max : Math.ceil(n);
}

/** A capacity as the scripts take it: a positive finite number, else '0' (no budget of that kind). */
const capArg = (n: number | undefined): string => (n !== undefined && n > 0 && Number.isFinite(n) ? String(n) : "0");

export interface RedisLimiterOptions {
  /** A clock for tests (ms); default: the Redis server's (TIME), see the module comment. */
  now?: () => number;
  /** After a failed command, how long calls go to the fallback before Redis is tried again (default 1,000 ms). */
  retryMs?: number;
  /** Where the outage warnings go (default console.warn). */
  warn?: (message: string) => void;
  /** The limiter used while Redis is unreachable (default a new InProcessRateLimiter). */
  fallback?: InProcessRateLimiter;
}

/**
 * Budgets shared through Redis, with a per-replica fallback.
 *
 * Redis unreachable (connection down, or a command failed or timed out after
 * `commandTimeoutMs`): admission never waits for it. Reservations are made by an in-process
 * limiter instead, one per replica, so during an outage each replica enforces the whole budget
 * on its own (a caller can get up to N times its budget across N replicas), and a warning is
 * logged once per outage. Redis is tried again when the connection is back and `retryMs` after
 * the last failure; the first call that succeeds ends the outage, with a second log line.
 * A reservation is settled or released where it was made: one made on Redis whose settlement
 * fails (Redis went away meanwhile) leaves its reservation charged, refilled within a minute.
 */
export class RedisRateLimiter implements RateLimiter {
  private readonly scripts: ScriptedClient;
  private readonly fallback: InProcessRateLimiter;
  private readonly local = new WeakSet<Reservation>();
  private readonly prefix: string;
  private readonly retryMs: number;
  private readonly warn: (message: string) => void;
  private readonly clockArg: () => string;
  /** An outage is going on (warned about); cleared by the next command that succeeds. */
  private outage = false;
  /** No Redis call before this time (ms, Date.now) after a failure. */
  private retryAt = 0;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly connection: RedisConnection,
    options: RedisLimiterOptions = {},
  ) {
    this.scripts = scripted(connection.client);
    this.fallback = options.fallback ?? new InProcessRateLimiter(options.now);
    this.prefix = `${connection.keyPrefix}{limits}:`;
    this.retryMs = options.retryMs ?? 1_000;
    this.warn = options.warn ?? ((m) => console.warn(m));
    const now = options.now;
    this.clockArg = now ? () => String(now()) : () => "";
    this.unsubscribe = connection.onHealth((healthy, reason) => {
      if (!healthy) this.down(reason ?? "connection lost");
      else this.retryAt = 0;
    });
    // Not connected (yet): start in the fallback, warned about, until Redis answers.
    if (!connection.healthy) this.down(connection.lastError ?? "not connected");
  }

  /** The budgets are the shared ones now: Redis answered the last call, and the connection is up. */
  get shared(): boolean {
    return !this.outage && this.connection.healthy;
  }

  async reserve(scopes: readonly LimitScope[], tokens: number): Promise<Admission> {
    const amount = wholeAmount(tokens);
    const cap = tokenCapacity(scopes);
    if (cap !== undefined && amount > cap) {
      return { ok: false, retryAfterMs: 0, limit: "tokens", never: true, view: { limitTokens: Math.floor(cap) } };
    }
    if (scopes.length === 0) return { ok: true, reservation: { scopes, tokens: amount }, view: {} };
    if (this.usable()) {
      const keys: string[] = [];
      const caps: string[] = [];
      for (const s of scopes) {
        keys.push(this.key("t", s), this.key("r", s));
        caps.push(capArg(s.spec.tokensPerMinute), capArg(s.spec.requestsPerMinute));
      }
      try {
        const out = (await this.scripts.sluiceLimitsReserve(keys.length, ...keys, this.clockArg(), String(amount), ...caps)) as number[];
        this.up();
        return admission(out, scopes, amount);
      } catch (err) {
        this.down(err);
      }
    } else if (!this.outage) {
      this.down(this.connection.lastError ?? "not connected");
    }
    const a = this.fallback.reserve(scopes, tokens);
    if (a.ok) this.local.add(a.reservation);
    return a;
  }

  settle(reservation: Reservation, actualTokens: number): void {
    // Nothing was reserved (no limit applies): nothing to send.
    if (!reservation.scopes.length) return;
    if (this.local.has(reservation)) return this.fallback.settle(reservation, actualTokens);
    const actual = actualTokens >= 0 && Number.isFinite(actualTokens) ? actualTokens : reservation.tokens;
    const refund = reservation.tokens - actual;
    const keys = reservation.scopes.map((s) => this.key("t", s));
    const caps = reservation.scopes.map((s) => capArg(s.spec.tokensPerMinute));
    this.send(() => this.scripts.sluiceLimitsSettle(keys.length, ...keys, this.clockArg(), String(refund), ...caps));
  }

  release(reservation: Reservation): void {
    if (this.local.has(reservation)) return this.fallback.release(reservation);
    const keys: string[] = [];
    for (const s of reservation.scopes) keys.push(this.key("t", s), this.key("r", s));
    this.send(() => this.scripts.sluiceLimitsRelease(keys.length, ...keys, this.clockArg(), String(wholeAmount(reservation.tokens))));
  }

  /** Stops listening to the connection (the connection is its owner's to close). */
  close(): void {
    this.unsubscribe();
  }

  private key(kind: "t" | "r", scope: LimitScope): string {
    return `${this.prefix}${kind}:${scope.key}`;
  }

  private usable(): boolean {
    return this.connection.healthy && Date.now() >= this.retryAt;
  }

  /** A settlement in the background: in order on the connection, after the calls before it; a failure is an outage. */
  private send(call: () => Promise<unknown>): void {
    if (!this.connection.healthy) return this.down(this.connection.lastError ?? "not connected");
    call().then(
      () => this.up(),
      (err: unknown) => this.down(err),
    );
  }

  private down(err: unknown): void {
    this.retryAt = Date.now() + this.retryMs;
    if (this.outage) return;
    this.outage = true;
    const reason = err instanceof Error ? err.message : String(err);
    this.warn(`sluice: WARNING shared budgets unavailable (Redis: ${reason}): each replica now enforces limits on its own until Redis answers again`);
  }

  private up(): void {
    if (!this.outage) return;
    this.outage = false;
    this.warn("sluice: Redis answers again: budgets are shared between replicas again");
  }
}

/** The Admission of a reserve script's answer. */
function admission(out: number[], scopes: readonly LimitScope[], amount: number): Admission {
  const [ok, tokenWait, requestWait, tl, tr, tz, rl, rr, rz] = out.map(Number) as [number, number, number, number, number, number, number, number, number];
  const view: BudgetView = {};
  if (tl >= 0) Object.assign(view, { limitTokens: tl, remainingTokens: tr, resetTokensMs: tz });
  if (rl >= 0) Object.assign(view, { limitRequests: rl, remainingRequests: rr, resetRequestsMs: rz });
  if (ok === 1) return { ok: true, reservation: { scopes, tokens: amount }, view };
  const wait = Math.max(tokenWait, requestWait);
  return { ok: false, retryAfterMs: Math.min(wait, MAX_RETRY_AFTER_MS), view, limit: requestWait >= tokenWait ? "requests" : "tokens" };
}

/** A shared limiter and the connection it owns. */
export interface NodeLimiter {
  limiter: RedisRateLimiter;
  connection: RedisConnection;
  close(): Promise<void>;
}

/**
 * The budgets for a Node or Azure Functions gateway: on Redis when the config has `state.redis`
 * (undefined otherwise: in-process, as without it). Waits up to `readyMs` (default 1 s) for the
 * first connection so that the first requests do not start in the fallback; a Redis that does not
 * answer by then does not hold up the start: the limiter begins in its fallback, with a warning.
 */
export async function openNodeLimiter(config: SluiceConfig, options: RedisLimiterOptions & RedisConnectionOptions & { readyMs?: number } = {}): Promise<NodeLimiter | undefined> {
  const redis = config.state?.redis;
  if (!redis) return undefined;
  const connection = await openRedis(redis, options);
  await connection.ready(options.readyMs ?? 1_000);
  if (!connection.healthy) console.warn(`sluice: Redis at ${redactedUrl(redis.url)} did not answer within ${options.readyMs ?? 1_000} ms; the gateway starts anyway`);
  const limiter = new RedisRateLimiter(connection, options);
  return {
    limiter,
    connection,
    async close() {
      limiter.close();
      await connection.close();
    },
  };
}
