/**
 * Hot reload of the whole config on Node (and Azure Functions).
 *
 * A GatewayHolder keeps the gateway built from the config in use. The server hands every
 * request to the gateway current at its arrival, so a request (a stream included) finishes on
 * the version it started with while new requests go to the new one. A new version is parsed
 * and validated first and a gateway is built from it; only then is it swapped in, in one
 * assignment. A version that fails is refused and logged, and the old one keeps serving.
 *
 * Sources: FileConfigSource (a watched file) and AppConfigurationSource (app-configuration.ts).
 */
import { createHash } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { ConfigError, parseConfigText } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import type { Gateway } from "../../src/gateway.ts";
import { appConfigSettingsFromEnv } from "./app-configuration-settings.ts";
import { AppConfigurationSource, type AppConfigurationSourceOptions } from "./app-configuration.ts";
import { configPathArg, readNodeConfigText } from "./config-source.ts";

/** The version of a config document: the first 12 hex digits of its SHA-256. */
export function configVersion(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 12);
}

/** What /_gateway/health shows under `config`. */
export interface ConfigStatus {
  /** The version the answering gateway serves. */
  version: string;
  /** When that version was put in service (ISO 8601). */
  loadedAt: string;
  /** The last reload that was refused or failed (kept after later successful reloads), else null. */
  lastReloadError: string | null;
  /** When that happened (ISO 8601), else null. */
  lastReloadErrorAt: string | null;
}

/** A config document offered for reload. */
export interface ConfigCandidate {
  text: string;
  /** configVersion(text) for a file; the key's etag for App Configuration. */
  version: string;
  /** Where it came from, for messages: a file path, or the App Configuration key. */
  origin: string;
}

/** A parsed config and its version, as the server starts with it. */
export interface LoadedConfig {
  config: SluiceConfig;
  version: string;
  origin: string;
}

export type ReloadOutcome =
  | { kind: "swapped"; version: string }
  | { kind: "unchanged"; version: string }
  | { kind: "refused"; version: string; error: string };

/** Builds one gateway for a config: the same upstream client, usage sinks and limiter every time. */
export type GatewayBuilder = (config: SluiceConfig, configStatus: () => ConfigStatus) => Gateway;

export interface GatewayHolderOptions {
  /** For ${ENV} interpolation: process.env by default. */
  env?: Record<string, string | undefined>;
  /** Where reload notices go: console.log / console.error by default. */
  info?: (line: string) => void;
  warn?: (line: string) => void;
  now?: () => Date;
}

interface Active {
  gateway: Gateway;
  version: string;
  loadedAt: string;
  origin: string;
}

/** Settings read once when the server starts; a change is reported as needing a restart. */
const RESTART_SETTINGS: { name: string; get: (c: SluiceConfig) => unknown }[] = [
  { name: "server.host", get: (c) => c.server.host },
  { name: "server.port", get: (c) => c.server.port },
  // The usage sinks are opened once and shared by every version.
  { name: "metering.sinks", get: (c) => c.metering.sinks },
];

function problemText(err: unknown): string {
  return err instanceof ConfigError ? err.problems.join("; ") : err instanceof Error ? err.message : String(err);
}

/** The gateway in use, swapped atomically when a new config version is accepted. */
export class GatewayHolder {
  private active: Active;
  private lastError: { message: string; at: string } | null = null;
  private lastRefused: { version: string; error: string } | undefined;
  /** The config the process started with: its server settings stay in effect until a restart. */
  private readonly started: SluiceConfig;
  private readonly env: Record<string, string | undefined>;
  private readonly info: (line: string) => void;
  private readonly warn: (line: string) => void;
  private readonly now: () => Date;

  /** The Node server's (or Functions handler's) fetch: each request goes to the gateway current at its arrival. */
  readonly fetch: Gateway["fetch"] = (request, env, executionCtx) => this.active.gateway.fetch(request, env, executionCtx);

  /** A Gateway whose every member is the current gateway's (for code that takes a Gateway). */
  readonly gateway: Gateway;

  constructor(
    private readonly build: GatewayBuilder,
    initial: LoadedConfig,
    options: GatewayHolderOptions = {},
  ) {
    this.env = options.env ?? process.env;
    this.info = options.info ?? ((line) => console.log(line));
    this.warn = options.warn ?? ((line) => console.error(line));
    this.now = options.now ?? (() => new Date());
    this.started = initial.config;
    this.active = this.activate(initial.config, initial.version, initial.origin);
    const holder = this;
    this.gateway = {
      get app() {
        return holder.current.app;
      },
      fetch: this.fetch,
      get pool() {
        return holder.current.pool;
      },
      get scheduler() {
        return holder.current.scheduler;
      },
      get config() {
        return holder.current.config;
      },
    };
  }

  /** The gateway new requests go to. */
  get current(): Gateway {
    return this.active.gateway;
  }

  get config(): SluiceConfig {
    return this.active.gateway.config;
  }

  get version(): string {
    return this.active.version;
  }

  /** The status of the version in use. */
  status(): ConfigStatus {
    return this.statusOf(this.active.version, this.active.loadedAt);
  }

  /**
   * Validates a new version and, when it is valid, swaps it in. Synchronous from parse to
   * swap, so no request can see a half-built version. A version equal to the one in use, or
   * to the last one refused, changes nothing and logs nothing.
   */
  apply(candidate: ConfigCandidate): ReloadOutcome {
    if (candidate.version === this.active.version) {
      // Back to the version in use: a later return of the refused one is reported again.
      this.lastRefused = undefined;
      return { kind: "unchanged", version: candidate.version };
    }
    // The refused version seen again (another event for the same write): reported once.
    if (candidate.version === this.lastRefused?.version) return { kind: "refused", version: candidate.version, error: this.lastRefused.error };
    let next: Active;
    try {
      const config = parseConfigText(candidate.text, this.env, candidate.origin);
      next = this.activate(config, candidate.version, candidate.origin);
    } catch (err) {
      const error = problemText(err);
      this.lastRefused = { version: candidate.version, error };
      this.recordError(error);
      this.warn(`sluice: config reload refused: ${error} (version ${candidate.version} from ${candidate.origin}; version ${this.active.version} keeps serving)`);
      return { kind: "refused", version: candidate.version, error };
    }
    const previous = this.active;
    this.active = next;
    this.lastRefused = undefined;
    this.info(`sluice: config reloaded: version ${next.version} from ${next.origin} replaces ${previous.version}${backendChanges(previous.gateway.config, next.gateway.config)}`);
    for (const s of RESTART_SETTINGS) {
      const was = JSON.stringify(s.get(this.started));
      const now = JSON.stringify(s.get(next.gateway.config));
      if (was !== now) this.warn(`sluice: config reload: ${s.name} changed (${was} → ${now}); it takes effect after a restart, ${was} stays in use`);
    }
    return { kind: "swapped", version: next.version };
  }

  /** A reload that could not even be attempted (the file unreadable, App Configuration unreachable): logged and recorded. */
  reloadFailed(message: string): void {
    this.recordError(message);
    this.warn(`sluice: config reload failed: ${message} (version ${this.active.version} keeps serving)`);
  }

  private recordError(message: string): void {
    this.lastError = { message, at: this.now().toISOString() };
  }

  private statusOf(version: string, loadedAt: string): ConfigStatus {
    return { version, loadedAt, lastReloadError: this.lastError?.message ?? null, lastReloadErrorAt: this.lastError?.at ?? null };
  }

  private activate(config: SluiceConfig, version: string, origin: string): Active {
    const loadedAt = this.now().toISOString();
    // Each gateway reports its own version: a health check answered by it shows the version that answered.
    const gateway = this.build(config, () => this.statusOf(version, loadedAt));
    return { gateway, version, loadedAt, origin };
  }
}

function backendChanges(before: SluiceConfig, after: SluiceConfig): string {
  const was = new Set(before.backends.map((b) => b.name));
  const now = new Set(after.backends.map((b) => b.name));
  const added = [...now].filter((n) => !was.has(n));
  const removed = [...was].filter((n) => !now.has(n));
  const parts = [`${after.backends.length} backend(s)`];
  if (added.length) parts.push(`added ${added.join(", ")}`);
  if (removed.length) parts.push(`removed ${removed.join(", ")}`);
  return ` (${parts.join("; ")})`;
}

/** A running source of new config versions. */
export interface ConfigFollower {
  /** Looks for a new version now (SIGHUP; tests). */
  check(): Promise<ReloadOutcome | undefined>;
  close(): void;
}

export interface FileConfigSourceOptions {
  /** Quiet time after the last change event before the file is read (default 100 ms). */
  debounceMs?: number;
  /** Longest wait after the first of a burst of events (default 1000 ms). */
  maxWaitMs?: number;
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === "ENOENT";
}

/**
 * Follows a config file. Watches the file's directory, not the file: editors and tools that
 * write a new file and rename it over the old one (vim, `mv`, Kubernetes ConfigMap volumes,
 * which swap a symlinked directory) replace the inode a file watch would be bound to. Every
 * event in the directory (debounced) re-reads the file; an unchanged text is the same version
 * and changes nothing.
 */
export class FileConfigSource implements ConfigFollower {
  private watcher: FSWatcher | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private burstStarted: number | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly debounceMs: number;
  private readonly maxWaitMs: number;

  constructor(
    readonly path: string,
    private readonly holder: GatewayHolder,
    options: FileConfigSourceOptions = {},
  ) {
    this.debounceMs = options.debounceMs ?? 100;
    this.maxWaitMs = options.maxWaitMs ?? 1000;
  }

  start(): this {
    const dir = dirname(resolve(this.path));
    this.watcher = watch(dir, { persistent: false }, () => this.changed());
    this.watcher.on("error", (err) => {
      if (this.closed) return;
      this.holder.reloadFailed(`watching ${dir} for changes to ${this.path} failed (${err.message}); send SIGHUP to reload, or restart`);
    });
    // A change between the first read and the watch would otherwise go unseen.
    void this.check();
    return this;
  }

  private changed(): void {
    if (this.closed) return;
    const now = Date.now();
    this.burstStarted ??= now;
    clearTimeout(this.timer);
    const wait = Math.max(0, Math.min(this.debounceMs, this.burstStarted + this.maxWaitMs - now));
    this.timer = setTimeout(() => {
      this.burstStarted = undefined;
      void this.check();
    }, wait);
  }

  /** Reads the file and offers it to the holder; reads never overlap, so versions apply in order. */
  check(): Promise<ReloadOutcome | undefined> {
    const run = this.queue.then(() => this.readAndApply());
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async readAndApply(): Promise<ReloadOutcome | undefined> {
    let text: string | undefined;
    // An editor may delete and re-create, or truncate and write: a missing or empty file gets one more look.
    for (let attempt = 0; attempt < 2 && !this.closed; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, this.debounceMs * 2));
      try {
        text = await readFile(this.path, "utf8");
        if (text.trim()) break;
      } catch (err) {
        text = undefined;
        if (!isMissing(err) || attempt) {
          if (!this.closed) this.holder.reloadFailed(`cannot read config file ${this.path}: ${(err as Error).message}`);
          return undefined;
        }
      }
    }
    if (this.closed || text === undefined) return undefined;
    return this.holder.apply({ text, version: configVersion(text), origin: this.path });
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}

/** Where the Node process gets its config, and how it follows changes. */
export interface NodeConfigSource {
  initial: LoadedConfig;
  /** Starts following new versions into the holder; undefined for inline JSON, which cannot change. */
  follow(holder: GatewayHolder): ConfigFollower | undefined;
}

export interface OpenConfigSourceOptions {
  file?: FileConfigSourceOptions;
  appConfiguration?: AppConfigurationSourceOptions;
}

/**
 * `--config PATH` (a watched file), else Azure App Configuration when
 * SLUICE_APPCONFIG_CONNECTION_STRING is set, else SLUICE_CONFIG (a watched file, or inline JSON).
 * Undefined when none is given. Throws ConfigError for an invalid config, Error when it cannot
 * be read.
 */
export async function openNodeConfigSource(argv: string[], env: NodeJS.ProcessEnv, options: OpenConfigSourceOptions = {}): Promise<NodeConfigSource | undefined> {
  const appSettings = configPathArg(argv) === undefined ? appConfigSettingsFromEnv(env) : undefined;
  if (appSettings) {
    const source = new AppConfigurationSource(appSettings, options.appConfiguration);
    let first: ConfigCandidate;
    try {
      first = await source.load();
    } catch (err) {
      source.close();
      throw err;
    }
    const config = parseConfigText(first.text, env, first.origin);
    return { initial: { config, version: first.version, origin: first.origin }, follow: (holder) => source.follow(holder) };
  }
  const given = readNodeConfigText(argv, env);
  if (!given) return undefined;
  const config = parseConfigText(given.text, env, given.origin);
  const path = given.path;
  return {
    initial: { config, version: configVersion(given.text), origin: given.origin },
    follow: (holder) => (path === undefined ? undefined : new FileConfigSource(path, holder, options.file).start()),
  };
}
