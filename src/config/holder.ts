import { ConfigError } from "./load.ts";
import type { SluiceConfig } from "./schema.ts";

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

export type ReloadOutcome =
  | { kind: "swapped"; version: string }
  | { kind: "unchanged"; version: string }
  | { kind: "refused"; version: string; error: string };

/** A parsed config and its version, as a holder starts with it. */
export interface LoadedConfig {
  config: SluiceConfig;
  version: string;
  origin: string;
}

export interface VersionHolderOptions<T> {
  /** Where reload notices go: console.log / console.error by default. */
  info?: (line: string) => void;
  warn?: (line: string) => void;
  now?: () => Date;
  /** What changed between two versions, appended to the reload notice (e.g. " (3 backend(s); removed b)"). */
  changes?: (previous: SluiceConfig, next: SluiceConfig) => string;
  /** After a swap, for the runtime's own notices (what needs a restart). */
  swapped?: (previous: { value: T; config: SluiceConfig; version: string }, next: { value: T; config: SluiceConfig; version: string }) => void;
}

interface Active<T> {
  value: T;
  config: SluiceConfig;
  version: string;
  loadedAt: string;
  origin: string;
}

export function problemText(err: unknown): string {
  return err instanceof ConfigError ? err.problems.join("; ") : err instanceof Error ? err.message : String(err);
}

/**
 * The config version in service, swapped atomically when a new one is accepted — the same on
 * every runtime (Node and Azure Functions wrap it with file and App Configuration sources, the
 * Worker with its binding and KV). A new version is parsed, validated and built first; only
 * then is it swapped in, in one assignment, so no request sees a half-built version and
 * requests in flight finish on theirs. A version that fails is refused and logged once, and the
 * one in service keeps serving. Versions are the adapter's (a hash of the text, an etag): the
 * holder never hashes, so it needs no runtime API.
 */
export class VersionHolder<T> {
  private active: Active<T>;
  private lastError: { message: string; at: string } | null = null;
  private lastRefused: { version: string; error: string } | undefined;
  protected readonly info: (line: string) => void;
  protected readonly warn: (line: string) => void;
  private readonly clock: () => Date;

  constructor(
    private readonly build: (config: SluiceConfig, status: () => ConfigStatus) => T,
    initial: LoadedConfig,
    private readonly options: VersionHolderOptions<T> = {},
  ) {
    this.info = options.info ?? ((line) => console.log(line));
    this.warn = options.warn ?? ((line) => console.error(line));
    this.clock = options.now ?? (() => new Date());
    this.active = this.activate(initial.config, initial.version, initial.origin);
  }

  /** What new requests go to. */
  get current(): T {
    return this.active.value;
  }

  get config(): SluiceConfig {
    return this.active.config;
  }

  get version(): string {
    return this.active.version;
  }

  status(): ConfigStatus {
    return this.statusOf(this.active.version, this.active.loadedAt);
  }

  /**
   * Offers a version: unchanged when it is the one in service, refused again (quietly) when it
   * is the one last refused, else parsed, built and swapped in — synchronously from parse to swap.
   */
  install(version: string, origin: string, parse: () => SluiceConfig): ReloadOutcome {
    if (version === this.active.version) {
      // Back to the version in use: a later return of the refused one is reported again.
      this.lastRefused = undefined;
      return { kind: "unchanged", version };
    }
    if (version === this.lastRefused?.version) return { kind: "refused", version, error: this.lastRefused.error };
    let next: Active<T>;
    try {
      next = this.activate(parse(), version, origin);
    } catch (err) {
      return this.refuse(version, origin, problemText(err));
    }
    const previous = this.active;
    this.active = next;
    this.lastRefused = undefined;
    this.info(`sluice: config reloaded: version ${next.version} from ${next.origin} replaces ${previous.version}${this.options.changes?.(previous.config, next.config) ?? ""}`);
    this.options.swapped?.(previous, next);
    return { kind: "swapped", version: next.version };
  }

  /** A version that cannot be used: logged once, recorded for health, the one in service keeps serving. */
  refuse(version: string, origin: string, error: string): ReloadOutcome {
    if (version === this.lastRefused?.version && error === this.lastRefused.error) return { kind: "refused", version, error };
    this.lastRefused = { version, error };
    this.recordError(error);
    this.warn(`sluice: config reload refused: ${error} (version ${version} from ${origin}; version ${this.active.version} keeps serving)`);
    return { kind: "refused", version, error };
  }

  /** A reload that could not even be attempted (a source unreadable): logged and recorded. */
  reloadFailed(message: string): void {
    this.recordError(message);
    this.warn(`sluice: config reload failed: ${message} (version ${this.active.version} keeps serving)`);
  }

  private recordError(message: string): void {
    this.lastError = { message, at: this.clock().toISOString() };
  }

  private statusOf(version: string, loadedAt: string): ConfigStatus {
    return { version, loadedAt, lastReloadError: this.lastError?.message ?? null, lastReloadErrorAt: this.lastError?.at ?? null };
  }

  private activate(config: SluiceConfig, version: string, origin: string): Active<T> {
    const loadedAt = this.clock().toISOString();
    // Each version reports its own: a health check answered by it shows the version that answered.
    const value = this.build(config, () => this.statusOf(version, loadedAt));
    return { value, config, version, loadedAt, origin };
  }
}
