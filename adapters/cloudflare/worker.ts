import { composeConfig } from "../../src/config/profiles-document.ts";
import { ConfigError, parseConfigText } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import { createRuntime, type GatewayRuntime } from "../../src/runtime.ts";
import { errorResponse } from "../../src/http/errors.ts";
import { DurableObjectRateLimiter, LIMITS_OBJECT, type LimiterNamespace } from "./limiter-client.ts";
import { DurableObjectScheduler, poolKey, type SchedulerNamespace } from "./scheduler-client.ts";
import { stringBindings } from "./scheduler-object.ts";
import { workerSinks } from "./sinks.ts";

/** The Durable Object classes wrangler binds as SCHEDULER and LIMITER: exported from the entry module. */
export { SchedulerObject } from "./scheduler-object.ts";
export { LimiterObject } from "./limiter-object.ts";

/** The part of a KV namespace binding the Worker uses. */
export interface ConfigKv {
  get(key: string): Promise<string | null>;
}

export interface Env {
  /** The config JSON (a var, or a secret holding it); other string bindings feed ${ENV} interpolation. */
  SLUICE_CONFIG?: string;
  /**
   * A KV namespace: the config JSON under the key `config` (used instead of SLUICE_CONFIG when
   * present), and optionally a profiles document `{ "profiles": {...}, "apiKeys": [...] }`
   * under `profiles`, merged into the config before it is validated. Read again at most every
   * SLUICE_CONFIG_KV_TTL_MS per isolate; a changed text is a new version.
   */
  SLUICE_CONFIG_KV?: ConfigKv;
  /** How long (ms) an isolate uses what it read from SLUICE_CONFIG_KV before reading it again; default 10000. */
  SLUICE_CONFIG_KV_TTL_MS?: string;
  /** The SchedulerObject namespace: when bound, every isolate shares one queue per backend pool. */
  SCHEDULER?: SchedulerNamespace;
  /** The LimiterObject namespace: when bound, every isolate admits against one set of token and request budgets. */
  LIMITER?: LimiterNamespace;
  [binding: string]: unknown;
}

const KV_CONFIG_KEY = "config";
const KV_PROFILES_KEY = "profiles";
const KV_TTL_DEFAULT_MS = 10_000;
/** A KV read that has not answered after this long no longer stops another request from reading. */
const KV_READ_STALE_MS = 5_000;
const CONFIG_ORIGIN_KV = `SLUICE_CONFIG_KV key "${KV_CONFIG_KEY}"`;
const PROFILES_ORIGIN_KV = `SLUICE_CONFIG_KV key "${KV_PROFILES_KEY}"`;

/** The documents a gateway is built from. */
interface Texts {
  config: string;
  configOrigin: string;
  /** The profiles document (SLUICE_CONFIG_KV key "profiles"), when there is one. */
  profiles?: string;
}

interface Current {
  key: string;
  gateway: Gateway;
  /** A hash of the text(s), as on Node: filled in as soon as the digest is computed. */
  version: string;
  loadedAt: string;
  origin: string;
}

/** SLUICE_CONFIG_KV could not be read, and nothing read before can stand in. */
class KvReadError extends Error {}

/** Per isolate: the gateway in use, the last version refused, the last reload error, what KV answered last. */
let current: Current | undefined;
let refused: { key: string; error: ConfigError } | undefined;
let lastError: { message: string; at: string } | undefined;
let kvCache: { at: number; config: string | null; profiles: string | null } | undefined;
let kvReadingSince: number | undefined;

function kvTtlMs(env: Env): number {
  const raw = env.SLUICE_CONFIG_KV_TTL_MS;
  const n = Number(raw);
  return raw !== undefined && raw.trim() !== "" && Number.isFinite(n) && n >= 0 ? n : KV_TTL_DEFAULT_MS;
}

/**
 * What SLUICE_CONFIG_KV holds, read at most once per TTL. Only one request of the isolate
 * reads at a time; the others meanwhile use what was read before (each request does its own
 * I/O: a Workers request must not wait on another's). A failed read keeps what was read
 * before, and is tried again after the TTL; with nothing read before, it throws.
 */
async function kvTexts(env: Env, kv: ConfigKv): Promise<{ config: string | null; profiles: string | null }> {
  const now = Date.now();
  if (kvCache && now - kvCache.at < kvTtlMs(env)) return kvCache;
  if (kvCache && kvReadingSince !== undefined && now - kvReadingSince < KV_READ_STALE_MS) return kvCache;
  kvReadingSince = now;
  try {
    const [config, profiles] = await Promise.all([kv.get(KV_CONFIG_KEY), kv.get(KV_PROFILES_KEY)]);
    kvCache = { at: Date.now(), config, profiles };
  } catch (err) {
    const message = `reading SLUICE_CONFIG_KV failed: ${(err as Error).message}`;
    if (!kvCache) throw new KvReadError(message);
    kvCache.at = Date.now();
    recordError(`${message}${current ? ` (version ${current.version} keeps serving)` : ""}`);
    console.error(`sluice: config reload failed: ${message}${current ? ` (version ${current.version} keeps serving)` : ""}`);
  } finally {
    kvReadingSince = undefined;
  }
  return kvCache;
}

/** The config document (KV key "config", else SLUICE_CONFIG) and the KV profiles document. */
async function textsFor(env: Env): Promise<Texts> {
  const kv = env.SLUICE_CONFIG_KV;
  if (!kv) return { config: env.SLUICE_CONFIG ?? "", configOrigin: "SLUICE_CONFIG" };
  const read = await kvTexts(env, kv);
  const texts: Texts = read.config !== null ? { config: read.config, configOrigin: CONFIG_ORIGIN_KV } : { config: env.SLUICE_CONFIG ?? "", configOrigin: "SLUICE_CONFIG" };
  if (read.profiles !== null) texts.profiles = read.profiles;
  return texts;
}

/** The config composed with a profiles document and validated as one config (as on Node). */
function composeKvConfig(configText: string, configOrigin: string, profilesText: string, env: Record<string, string>): SluiceConfig {
  return composeConfig({ text: configText, origin: configOrigin }, { text: profilesText, origin: PROFILES_ORIGIN_KV }, env);
}

/** The first 12 hex digits of the SHA-256 of the text(s): the version Node gives the same documents. */
async function versionOf(texts: Texts): Promise<string> {
  const data = new TextEncoder().encode(texts.profiles === undefined ? texts.config : `${texts.config}\0${texts.profiles}`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return [...digest.slice(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function recordError(message: string): void {
  lastError = { message, at: new Date().toISOString() };
}

function build(config: SluiceConfig, texts: Texts, env: Env, key: string): Current {
  // The scheduler object reads SLUICE_CONFIG itself: it shares the queue only when this config is that text.
  const ns = texts.config === env.SLUICE_CONFIG ? env.SCHEDULER : undefined;
  if (env.SCHEDULER && !ns) {
    console.error(`sluice: the config comes from ${texts.configOrigin}, which the SCHEDULER Durable Object does not read (it reads SLUICE_CONFIG): this isolate queues on its own`);
  }
  if (config.profilesSource) {
    console.error(`sluice: profilesSource is followed by the Node gateway; on Workers put that document in SLUICE_CONFIG_KV under the key "${KV_PROFILES_KEY}" (ignored here)`);
  }
  const runtime = runtimeFor(config, env, ns);
  const entry: Current = {
    key,
    version: "pending",
    loadedAt: new Date().toISOString(),
    origin: texts.profiles === undefined ? texts.configOrigin : `${texts.configOrigin} + ${PROFILES_ORIGIN_KV}`,
    gateway: undefined as unknown as Gateway,
  };
  entry.gateway = createGateway({
    config,
    runtime,
    usageSinks: workerSinks(config.metering.sinks, env),
    configStatus: () => ({ version: entry.version, loadedAt: entry.loadedAt, lastReloadError: lastError?.message ?? null, lastReloadErrorAt: lastError?.at ?? null }),
  });
  return entry;
}

/**
 * What outlives config versions in this isolate: the queue (its own, or the pool's Durable
 * Object), the budgets, the metrics and the JWKS caches. One per queue: a config naming other
 * backends is another pool's object.
 */
const runtimes = new Map<string, GatewayRuntime>();

function runtimeFor(config: SluiceConfig, env: Env, ns: SchedulerNamespace | undefined): GatewayRuntime {
  const key = ns ? poolKey(config) : "isolate";
  let runtime = runtimes.get(key);
  if (runtime) return runtime;
  const id = ns?.idFromName(key);
  const lns = env.LIMITER;
  const lid = lns?.idFromName(LIMITS_OBJECT);
  runtime = createRuntime({
    scheduler: ns ? new DurableObjectScheduler(() => ns.get(id as never), config.scheduling.queueFullRetryMs) : undefined,
    limiter: lns ? new DurableObjectRateLimiter(() => lns.get(lid as never)) : undefined,
  });
  runtimes.set(key, runtime);
  return runtime;
}

/**
 * One gateway per isolate, rebuilt only when the config documents change: the SLUICE_CONFIG
 * binding, or what SLUICE_CONFIG_KV holds (re-read at most every SLUICE_CONFIG_KV_TTL_MS).
 * From parse to swap the rebuild is synchronous. An invalid new version is refused and logged
 * once, and the gateway in use keeps serving; with none in use yet, ConfigError is thrown.
 *
 * With SCHEDULER bound, the queue and the backends' state live in the pool's Durable Object,
 * shared by all isolates; without it, in the isolate (shared by the requests it serves).
 * Likewise, with LIMITER bound the budgets of `limits` live in one Durable Object; without it,
 * each isolate keeps its own.
 */
async function gatewayFor(env: Env): Promise<Gateway> {
  const texts = await textsFor(env);
  const key = `${texts.configOrigin}\0${texts.config}\0${texts.profiles ?? ""}`;
  if (current?.key === key) {
    // Back to the version in use: a later return of the refused one is reported again.
    refused = undefined;
    return current.gateway;
  }
  if (refused?.key === key) {
    if (current) return current.gateway;
    throw refused.error;
  }
  let next: Current;
  try {
    if (!texts.config) {
      throw new ConfigError([`SLUICE_CONFIG: not set (bind the config JSON as a var or secret${env.SLUICE_CONFIG_KV ? `, or write it to SLUICE_CONFIG_KV under the key "${KV_CONFIG_KEY}"` : ""})`]);
    }
    const bindings = stringBindings(env);
    const config = texts.profiles === undefined ? parseConfigText(texts.config, bindings, texts.configOrigin) : composeKvConfig(texts.config, texts.configOrigin, texts.profiles, bindings);
    next = build(config, texts, env, key);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    refused = { key, error: err };
    if (!current) throw err;
    const problems = err.problems.join("; ");
    recordError(problems);
    console.error(`sluice: config reload refused: ${problems} (from ${texts.configOrigin}${texts.profiles === undefined ? "" : ` + ${PROFILES_ORIGIN_KV}`}; version ${current.version} keeps serving)`);
    return current.gateway;
  }
  const previous = current;
  current = next;
  refused = undefined;
  next.version = await versionOf(texts);
  if (previous) console.log(`sluice: config reloaded: version ${next.version} from ${next.origin} replaces ${previous.version}`);
  return next.gateway;
}

export default {
  async fetch(request: Request, env: Env, ctx: unknown): Promise<Response> {
    let gateway: Gateway;
    try {
      gateway = await gatewayFor(env);
    } catch (err) {
      if (err instanceof ConfigError) {
        console.error(err.message);
        return errorResponse({ status: 503, code: "invalid_config", message: err.message });
      }
      if (!(err instanceof KvReadError)) throw err;
      console.error(`sluice: ${err.message}`);
      return errorResponse({ status: 503, code: "config_unavailable", message: err.message });
    }
    return gateway.fetch(request, env, ctx as never);
  },
};
