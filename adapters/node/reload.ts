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
 *
 * A config that names a `profilesSource` (a JSON file, watched like the config file, or a URL,
 * polled) is composed with that document before it is validated: the document's profiles are
 * merged over the config's and its API keys appended to `auth.apiKeys`. The holder follows the
 * source the config names; a change to either document is a new version (a hash of both texts).
 */
import { createHash } from "node:crypto";
import { dirname, resolve } from "node:path";
import { parseConfigText } from "../../src/config/load.ts";
import { VersionHolder, type ConfigStatus, type LoadedConfig, type ReloadOutcome } from "../../src/config/holder.ts";
import { composeConfig } from "../../src/config/profiles-document.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import type { Gateway } from "../../src/gateway.ts";
import { appConfigSettingsFromEnv } from "./app-configuration-settings.ts";
import { AppConfigurationSource, type AppConfigurationSourceOptions } from "./app-configuration.ts";
import { configPathArg, readNodeConfigText } from "./config-source.ts";
import { DirectoryWatch, readSettledFile } from "./file-watch.ts";
import { FileProfilesFollower, profilesSpecOf, readProfilesFor, UrlProfilesFollower, type ProfilesEvents, type ProfilesFollower, type ProfilesRead, type ProfilesSpec } from "./profiles-source.ts";

/** The version of a config document: the first 12 hex digits of its SHA-256. */
export function configVersion(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 12);
}

/**
 * The version of a config composed with its profiles document: the first 12 hex digits of the
 * SHA-256 of both texts (joined by a NUL), so that a change to either is a new version. The
 * Worker computes the same for a config and the `profiles` key of its KV namespace.
 */
export function composedVersion(configText: string, profilesText: string): string {
  return createHash("sha256").update(configText).update("\0").update(profilesText).digest("hex").slice(0, 12);
}

/** A config document offered for reload. */
export interface ConfigCandidate {
  text: string;
  /** configVersion(text) for a file; the key's etag for App Configuration. */
  version: string;
  /** Where it came from, for messages: a file path, or the App Configuration key. */
  origin: string;
  /** What a relative `profilesSource.file` is relative to: the config file's directory (default: the working directory). */
  baseDir?: string;
}

export type { ConfigStatus, LoadedConfig, ReloadOutcome };

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

/** Settings read once when the server starts; a change is reported as needing a restart. */
const RESTART_SETTINGS: { name: string; get: (c: SluiceConfig) => unknown }[] = [
  { name: "server.host", get: (c) => c.server.host },
  { name: "server.port", get: (c) => c.server.port },
  { name: "server.operatorPort", get: (c) => c.server.operatorPort },
  // The usage sinks are opened once and shared by every version.
  { name: "metering.sinks", get: (c) => c.metering.sinks },
  // The job store is opened once: queued and running jobs stay where they are.
  { name: "jobs.store", get: (c) => c.jobs.store },
];

/**
 * The gateway in use (src/config/holder.ts), followed by the Node sources: a config file or App
 * Configuration, and the profiles document the config names.
 */
export class GatewayHolder extends VersionHolder<Gateway> {
  /** The config the process started with: its server settings stay in effect until a restart. */
  private readonly started: SluiceConfig;
  private readonly env: Record<string, string | undefined>;
  /** The config document last offered (in use, or refused), and the one in use, when known. */
  private latestDoc: ConfigCandidate | undefined;
  private servedDoc: ConfigCandidate | undefined;
  /** The profiles documents those two name, by ProfilesSpec.key. */
  private readonly followers = new Map<string, ProfilesFollower>();
  private profilesClosed = false;
  private profilesFileOptions: FileConfigSourceOptions = {};
  /** Offers run one at a time, so versions apply in order. */
  private queue: Promise<unknown> = Promise.resolve();

  /** The Node server's (or Functions handler's) fetch: each request goes to the gateway current at its arrival. */
  readonly fetch: Gateway["fetch"] = (request, env, executionCtx) => this.current.fetch(request, env, executionCtx);

  /** A Gateway whose every member is the current gateway's (for code that takes a Gateway). */
  readonly gateway: Gateway;

  constructor(build: GatewayBuilder, initial: LoadedConfig, options: GatewayHolderOptions = {}) {
    super(build, initial, {
      ...options,
      changes: backendChanges,
      swapped: (_previous, next) => {
        for (const s of RESTART_SETTINGS) {
          const was = JSON.stringify(s.get(this.started));
          const now = JSON.stringify(s.get(next.config));
          if (was !== now) this.warn(`sluice: config reload: ${s.name} changed (${was} → ${now}); it takes effect after a restart, ${was} stays in use`);
        }
      },
    });
    this.env = options.env ?? process.env;
    this.started = initial.config;
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
      get runtime() {
        return holder.current.runtime;
      },
    };
  }

  /**
   * Validates a new version and, when it is valid, swaps it in. Offers apply one at a time,
   * in order; from parse to swap each is synchronous, so no request can see a half-built
   * version. A config naming a profilesSource is composed with that document (read first
   * when the source is new to the holder). A version equal to the one in use, or to the last
   * one refused, changes nothing and logs nothing.
   */
  apply(candidate: ConfigCandidate): Promise<ReloadOutcome> {
    return this.serially(async () => {
      this.latestDoc = candidate;
      const outcome = await this.offer(candidate);
      this.prune();
      return outcome;
    });
  }

  /**
   * Follows the profiles document of the config in use (the sources call this when they start
   * following): `doc` is that config's document, `profiles` the document read at startup.
   */
  trackProfiles(doc: ConfigCandidate, profiles: ProfilesRead | undefined, fileOptions: FileConfigSourceOptions = {}): void {
    this.profilesFileOptions = fileOptions;
    this.profilesClosed = false;
    this.latestDoc ??= doc;
    this.servedDoc ??= doc;
    if (profiles) void this.serially(() => this.followerFor(profiles.spec, profiles));
  }

  /** Reads every followed profiles document now (SIGHUP; tests); a change is offered as a new version. */
  async checkProfiles(): Promise<ReloadOutcome | undefined> {
    let outcome: ReloadOutcome | undefined;
    for (const f of [...this.followers.values()]) outcome = (await f.poll()) ?? outcome;
    return outcome;
  }

  /** Stops following profiles documents. */
  closeProfiles(): void {
    this.profilesClosed = true;
    for (const f of this.followers.values()) f.close();
    this.followers.clear();
  }

  private serially<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** A config document, composed with the profiles document it names, offered as a version. */
  private async offer(doc: ConfigCandidate): Promise<ReloadOutcome> {
    const spec = profilesSpecOf(doc.text, this.env, doc.baseDir);
    if (!spec) return this.installDoc(doc.version, doc.origin, doc, () => parseConfigText(doc.text, this.env, doc.origin));
    const follower = await this.followerFor(spec);
    const profilesText = follower.text;
    if (profilesText === undefined) return this.refuse(doc.version, doc.origin, follower.error ?? `cannot read profiles from ${spec.origin}`);
    return this.installDoc(composedVersion(doc.text, profilesText), `${doc.origin} + ${spec.origin}`, doc, () =>
      composeConfig({ text: doc.text, origin: doc.origin }, { text: profilesText, origin: spec.origin }, this.env),
    );
  }

  /**
   * A profiles document changed: composed with the latest config document; when that is
   * refused, with the one in use too, so that (say) a key revoked in the profiles document is
   * not held back by a broken config file.
   */
  private profilesChanged(): Promise<ReloadOutcome | undefined> {
    return this.serially(async () => {
      const latest = this.latestDoc;
      if (!latest) return undefined;
      let outcome = await this.offer(latest);
      const served = this.servedDoc;
      if (outcome.kind === "refused" && served && served.text !== latest.text) outcome = await this.offer(served);
      this.prune();
      return outcome;
    });
  }

  private async followerFor(spec: ProfilesSpec, read?: ProfilesRead): Promise<ProfilesFollower> {
    const known = this.followers.get(spec.key);
    if (known) return known;
    const events: ProfilesEvents = { changed: () => this.profilesChanged(), failed: (message) => this.reloadFailed(message) };
    const follower =
      spec.kind === "file" ? new FileProfilesFollower(spec, events, this.profilesFileOptions) : new UrlProfilesFollower(spec, events, read?.etag);
    this.followers.set(spec.key, follower);
    if (read) follower.text = read.text;
    else {
      await follower.refresh();
      // A failure of this first read is reported by the refusal it causes.
      follower.reported = follower.error;
    }
    if (this.profilesClosed) follower.close();
    else follower.start();
    return follower;
  }

  /** Stops following the profiles documents neither the latest nor the served config names. */
  private prune(): void {
    const keep = new Set<string>();
    for (const doc of [this.latestDoc, this.servedDoc]) {
      const spec = doc && profilesSpecOf(doc.text, this.env, doc.baseDir);
      if (spec) keep.add(spec.key);
    }
    for (const [key, f] of this.followers) {
      if (keep.has(key)) continue;
      f.close();
      this.followers.delete(key);
    }
  }

  private installDoc(version: string, origin: string, doc: ConfigCandidate, parse: () => SluiceConfig): ReloadOutcome {
    const outcome = super.install(version, origin, parse);
    if (outcome.kind !== "refused") this.servedDoc = doc;
    return outcome;
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

// ---------------------------------------------------------------------------------------------
// Config sources
// ---------------------------------------------------------------------------------------------

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

/**
 * Follows a config file. Watches the file's directory, not the file (see DirectoryWatch).
 * Every event in the directory (debounced) re-reads the file; an unchanged text is the same
 * version and changes nothing.
 */
export class FileConfigSource implements ConfigFollower {
  private readonly watch: DirectoryWatch;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly debounceMs: number;

  constructor(
    readonly path: string,
    private readonly holder: GatewayHolder,
    options: FileConfigSourceOptions = {},
  ) {
    this.debounceMs = options.debounceMs ?? 100;
    this.watch = new DirectoryWatch(path, this.debounceMs, options.maxWaitMs ?? 1000, () => void this.check(), (message) => holder.reloadFailed(message));
  }

  start(): this {
    this.watch.start();
    // A change between the first read and the watch would otherwise go unseen.
    void this.check();
    return this;
  }

  /** Reads the file and offers it to the holder; reads never overlap, so versions apply in order. */
  check(): Promise<ReloadOutcome | undefined> {
    const run = this.queue.then(() => this.readAndApply());
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async readAndApply(): Promise<ReloadOutcome | undefined> {
    let text: string | undefined;
    try {
      text = await readSettledFile(this.path, this.debounceMs * 2, () => this.closed);
    } catch (err) {
      if (!this.closed) this.holder.reloadFailed(`cannot read config file ${this.path}: ${(err as Error).message}`);
      return undefined;
    }
    if (this.closed || text === undefined) return undefined;
    return this.holder.apply({ text, version: configVersion(text), origin: this.path, baseDir: dirname(resolve(this.path)) });
  }

  close(): void {
    this.closed = true;
    this.watch.close();
  }
}

/** Where the Node process gets its config, and how it follows changes. */
export interface NodeConfigSource {
  initial: LoadedConfig;
  /** Starts following new versions into the holder; undefined for inline JSON naming no profilesSource, which cannot change. */
  follow(holder: GatewayHolder): ConfigFollower | undefined;
}

export interface OpenConfigSourceOptions {
  /** How the config file and a profiles file are watched. */
  file?: FileConfigSourceOptions;
  appConfiguration?: AppConfigurationSourceOptions;
}

/** A config source's follower, plus the profiles documents the holder follows: SIGHUP reads both, close stops both. */
function withProfiles(inner: ConfigFollower | undefined, holder: GatewayHolder): ConfigFollower {
  return {
    async check() {
      const outcome = await inner?.check();
      return (await holder.checkProfiles()) ?? outcome;
    },
    close() {
      inner?.close();
      holder.closeProfiles();
    },
  };
}

/** The startup config: a document, composed with the profiles document it names (read now). */
async function loadInitial(doc: ConfigCandidate, env: NodeJS.ProcessEnv): Promise<{ initial: LoadedConfig; profiles: ProfilesRead | undefined }> {
  const profiles = await readProfilesFor(doc.text, doc.origin, env, doc.baseDir);
  if (!profiles) return { initial: { config: parseConfigText(doc.text, env, doc.origin), version: doc.version, origin: doc.origin }, profiles };
  const config = composeConfig({ text: doc.text, origin: doc.origin }, { text: profiles.text, origin: profiles.spec.origin }, env);
  return { initial: { config, version: composedVersion(doc.text, profiles.text), origin: `${doc.origin} + ${profiles.spec.origin}` }, profiles };
}

/**
 * `--config PATH` (a watched file), else Azure App Configuration when
 * SLUICE_APPCONFIG_CONNECTION_STRING is set, else SLUICE_CONFIG (a watched file, or inline JSON).
 * Undefined when none is given. A `profilesSource` the config names is read too. Throws
 * ConfigError for an invalid config, Error when the config or its profiles cannot be read.
 */
export async function openNodeConfigSource(argv: string[], env: NodeJS.ProcessEnv, options: OpenConfigSourceOptions = {}): Promise<NodeConfigSource | undefined> {
  const appSettings = configPathArg(argv) === undefined ? appConfigSettingsFromEnv(env) : undefined;
  if (appSettings) {
    const source = new AppConfigurationSource(appSettings, options.appConfiguration);
    let first: ConfigCandidate;
    let loaded: Awaited<ReturnType<typeof loadInitial>>;
    try {
      first = await source.load();
      loaded = await loadInitial(first, env);
    } catch (err) {
      source.close();
      throw err;
    }
    return {
      initial: loaded.initial,
      follow: (holder) => {
        holder.trackProfiles(first, loaded.profiles, options.file);
        return withProfiles(source.follow(holder), holder);
      },
    };
  }
  const given = readNodeConfigText(argv, env);
  if (!given) return undefined;
  const path = given.path;
  const doc: ConfigCandidate = { text: given.text, version: configVersion(given.text), origin: given.origin, ...(path === undefined ? {} : { baseDir: dirname(resolve(path)) }) };
  const { initial, profiles } = await loadInitial(doc, env);
  return {
    initial,
    follow: (holder) => {
      // Inline JSON cannot change; the profiles document it names can.
      if (path === undefined && !profiles) return undefined;
      holder.trackProfiles(doc, profiles, options.file);
      return withProfiles(path === undefined ? undefined : new FileConfigSource(path, holder, options.file).start(), holder);
    },
  };
}
