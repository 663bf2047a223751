import { composeConfig } from "../../src/config/profiles-document.ts";
import { VersionHolder, type ConfigStatus } from "../../src/config/holder.ts";
import { ConfigError, parseConfigText } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";

/**
 * Where a Worker's config comes from, read the same way by the Worker's isolates and by the
 * SchedulerObject: the KV key `config` of SLUICE_CONFIG_KV when present, else the SLUICE_CONFIG
 * binding; composed with the profiles document under the KV key `profiles` when there is one.
 * What KV answered is used for SLUICE_CONFIG_KV_TTL_MS before it is read again.
 */

/** The part of a KV namespace binding the config source uses. */
export interface ConfigKv {
  get(key: string): Promise<string | null>;
}

/** The bindings the config is read from; every other string binding feeds ${ENV} interpolation. */
export interface ConfigEnv {
  /** The config JSON (a var, or a secret holding it). */
  SLUICE_CONFIG?: string;
  /**
   * A KV namespace: the config JSON under the key `config` (used instead of SLUICE_CONFIG when
   * present), and optionally a profiles document `{ "profiles": {...}, "apiKeys": [...] }`
   * under `profiles`, merged into the config before it is validated.
   */
  SLUICE_CONFIG_KV?: ConfigKv;
  /** How long (ms) what was read from SLUICE_CONFIG_KV is used before it is read again; default 10000. */
  SLUICE_CONFIG_KV_TTL_MS?: string;
  [binding: string]: unknown;
}

export const KV_CONFIG_KEY = "config";
export const KV_PROFILES_KEY = "profiles";
const KV_TTL_DEFAULT_MS = 10_000;
/** A KV read that has not answered after this long no longer stops another request from reading. */
const KV_READ_STALE_MS = 5_000;
const CONFIG_ORIGIN_KV = `SLUICE_CONFIG_KV key "${KV_CONFIG_KEY}"`;
export const PROFILES_ORIGIN_KV = `SLUICE_CONFIG_KV key "${KV_PROFILES_KEY}"`;

/** The documents a config version is built from. */
export interface ConfigTexts {
  config: string;
  configOrigin: string;
  /** The profiles document (SLUICE_CONFIG_KV key "profiles"), when there is one. */
  profiles?: string;
}

/** SLUICE_CONFIG_KV could not be read, and nothing read before can stand in. */
export class KvReadError extends Error {}

/** The string bindings of a Worker's env: the values ${NAME} in the config is replaced from. */
export function stringBindings(env: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (typeof v === "string") out[k] = v;
  return out;
}

function kvTtlMs(env: ConfigEnv): number {
  const raw = env.SLUICE_CONFIG_KV_TTL_MS;
  const n = Number(raw);
  return raw !== undefined && raw.trim() !== "" && Number.isFinite(n) && n >= 0 ? n : KV_TTL_DEFAULT_MS;
}

/** Where a version came from, as logs and /_gateway/health name it. */
export function originOf(texts: ConfigTexts): string {
  return texts.profiles === undefined ? texts.configOrigin : `${texts.configOrigin} + ${PROFILES_ORIGIN_KV}`;
}

/** The config the texts hold, validated (composed with the profiles document first, as on Node). Throws ConfigError. */
export function configOf(texts: ConfigTexts, env: ConfigEnv): SluiceConfig {
  if (!texts.config) {
    throw new ConfigError([`SLUICE_CONFIG: not set (bind the config JSON as a var or secret${env.SLUICE_CONFIG_KV ? `, or write it to SLUICE_CONFIG_KV under the key "${KV_CONFIG_KEY}"` : ""})`]);
  }
  const bindings = stringBindings(env);
  if (texts.profiles === undefined) return parseConfigText(texts.config, bindings, texts.configOrigin);
  return composeConfig({ text: texts.config, origin: texts.configOrigin }, { text: texts.profiles, origin: PROFILES_ORIGIN_KV }, bindings);
}

/** The first 12 hex digits of the SHA-256 of the text(s): the version Node gives the same documents. */
export async function versionOf(texts: ConfigTexts): Promise<string> {
  const data = new TextEncoder().encode(texts.profiles === undefined ? texts.config : `${texts.config}\0${texts.profiles}`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return [...digest.slice(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The config documents as they are now, for one reader (the Worker's isolate, or one
 * SchedulerObject). SLUICE_CONFIG_KV is read at most once per TTL, by one caller at a time; the
 * others meanwhile get what was read before (each Workers request does its own I/O: one must not
 * wait on another's). A failed read keeps what was read before and is tried again after the TTL;
 * with nothing read before, it throws KvReadError.
 */
export class ConfigSource {
  private cache: { at: number; config: string | null; profiles: string | null } | undefined;
  private readingSince: number | undefined;

  /** @param staleRead told when a read failed and what was read before stands in. */
  constructor(private readonly staleRead: (message: string) => void) {}

  async texts(env: ConfigEnv): Promise<ConfigTexts> {
    const kv = env.SLUICE_CONFIG_KV;
    if (!kv) return { config: env.SLUICE_CONFIG ?? "", configOrigin: "SLUICE_CONFIG" };
    const read = await this.read(env, kv);
    const texts: ConfigTexts = read.config !== null ? { config: read.config, configOrigin: CONFIG_ORIGIN_KV } : { config: env.SLUICE_CONFIG ?? "", configOrigin: "SLUICE_CONFIG" };
    if (read.profiles !== null) texts.profiles = read.profiles;
    return texts;
  }

  private async read(env: ConfigEnv, kv: ConfigKv): Promise<{ config: string | null; profiles: string | null }> {
    const now = Date.now();
    if (this.cache && now - this.cache.at < kvTtlMs(env)) return this.cache;
    if (this.cache && this.readingSince !== undefined && now - this.readingSince < KV_READ_STALE_MS) return this.cache;
    this.readingSince = now;
    try {
      const [config, profiles] = await Promise.all([kv.get(KV_CONFIG_KEY), kv.get(KV_PROFILES_KEY)]);
      this.cache = { at: Date.now(), config, profiles };
    } catch (err) {
      const message = `reading SLUICE_CONFIG_KV failed: ${(err as Error).message}`;
      if (!this.cache) throw new KvReadError(message);
      this.cache.at = Date.now();
      this.staleRead(message);
    } finally {
      this.readingSince = undefined;
    }
    return this.cache;
  }
}

/**
 * The versions one reader follows (the Worker's isolate, or one SchedulerObject), held by the
 * runtime-neutral VersionHolder of src/config/holder.ts — the same swap, refusal and health
 * status as on Node. Each change of the documents (or of where the config comes from) is hashed
 * into its version (as Node hashes the same texts) and offered; from parse to swap that is
 * synchronous. An invalid new version is refused and logged once while the one in use keeps
 * serving; with none in use yet, the error is thrown.
 */
export class ConfigVersions<T, E extends ConfigEnv = ConfigEnv> {
  private holder: VersionHolder<T> | undefined;
  private currentKey: string | undefined;
  private firstRefused: { key: string; error: ConfigError } | undefined;
  /** The texts last refused while a version serves: not hashed and parsed again on every request. */
  private refusedKey: string | undefined;
  private readonly source = new ConfigSource((message) => this.holder?.reloadFailed(message));

  /**
   * @param build the value for a new version (it may throw ConfigError to refuse it); `status`
   *   is what /_gateway/health shows for that version.
   * @param label prefixes the log lines ("scheduler object: ").
   */
  constructor(
    private readonly build: (config: SluiceConfig, status: () => ConfigStatus, env: E) => T,
    private readonly label = "",
  ) {}

  /** The value for the documents as they are now. Throws ConfigError or KvReadError when there is none. */
  async get(env: E): Promise<T> {
    const texts = await this.source.texts(env);
    const key = `${texts.configOrigin}\0${texts.config}\0${texts.profiles ?? ""}`;
    const holder = this.holder;
    if (holder && (this.currentKey === key || this.refusedKey === key)) return holder.current;
    if (!holder && this.firstRefused?.key === key) throw this.firstRefused.error;
    const version = await versionOf(texts);
    const parse = () => configOf(texts, env);
    if (!holder) {
      let config: SluiceConfig;
      try {
        config = parse();
      } catch (err) {
        if (err instanceof ConfigError) this.firstRefused = { key, error: err };
        throw err;
      }
      const log = (write: (line: string) => void) => (line: string) => write(this.label ? line.replace(/^sluice: /, `sluice: ${this.label}`) : line);
      this.holder = new VersionHolder((c, status) => this.build(c, status, env), { config, version, origin: originOf(texts) }, { info: log(console.log), warn: log(console.error) });
      this.currentKey = key;
      return this.holder.current;
    }
    // Swapped or unchanged: these texts are what serves now; refused: the version in use keeps serving.
    if (holder.install(version, originOf(texts), parse).kind === "refused") this.refusedKey = key;
    else {
      this.currentKey = key;
      this.refusedKey = undefined;
    }
    return holder.current;
  }
}
