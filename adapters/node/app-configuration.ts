/**
 * Azure App Configuration as a config source: the whole config JSON in one key, and a sentinel
 * key that is changed after the config key to say "reload now" (Microsoft's documented
 * pattern: several keys can be edited, then one write of the sentinel publishes them).
 *
 * Environment:
 *   SLUICE_APPCONFIG_CONNECTION_STRING  Endpoint=https://<store>.azconfig.io;Id=<id>;Secret=<secret>
 *   SLUICE_APPCONFIG_KEY                the key holding the config JSON (default "sluice:config")
 *   SLUICE_APPCONFIG_SENTINEL           the key watched for changes (default "sluice:sentinel")
 *   SLUICE_APPCONFIG_LABEL              the label of both keys (default: no label)
 *   SLUICE_APPCONFIG_POLL_MS            how often the sentinel is checked (default 30000)
 *
 * The version of a config is the config key's etag. Each poll is one conditional GET of the
 * sentinel (If-None-Match: its etag; 304 when unchanged). When the sentinel changes, the
 * config key is read and offered to the GatewayHolder, which validates and swaps, or refuses.
 * While the sentinel key does not exist, the config key itself is polled the same way.
 */
import type { AppConfigurationClient, AppConfigurationClientOptions, GetConfigurationSettingResponse } from "@azure/app-configuration";
import type { ConfigCandidate, ConfigFollower, GatewayHolder, ReloadOutcome } from "./reload.ts";

export { APPCONFIG_ENV, appConfigSettingsFromEnv, type AppConfigSettings } from "./app-configuration-settings.ts";
import type { AppConfigSettings } from "./app-configuration-settings.ts";

export interface AppConfigurationSourceOptions {
  /** Passed to the SDK client (tests: allowInsecureConnection for a local http server; retryOptions). */
  clientOptions?: AppConfigurationClientOptions;
}

function statusOf(err: unknown): number | undefined {
  const status = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof status === "number" ? status : undefined;
}

/** Follows the config key through the sentinel key; one poll at a time. */
export class AppConfigurationSource implements ConfigFollower {
  readonly origin: string;
  /** The SDK is loaded on first use: it costs ~23 MB, which deployments without App Configuration should not pay. */
  private client: Promise<AppConfigurationClient> | undefined;
  private readonly clientOptions: AppConfigurationClientOptions;
  private readonly abort = new AbortController();
  /** The sentinel's etag at the last read of the config key; null while the sentinel key does not exist. */
  private sentinelEtag: string | null | undefined;
  /** The etag of the config key last offered to the holder (in use, or refused). */
  private configEtag: string | undefined;
  private holder: GatewayHolder | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    readonly settings: AppConfigSettings,
    options: AppConfigurationSourceOptions = {},
  ) {
    this.clientOptions = options.clientOptions ?? {};
    this.origin = `App Configuration ${settings.endpoint} key "${settings.key}"${settings.label ? ` label "${settings.label}"` : ""}`;
  }

  private async get(key: string, etag?: string): Promise<GetConfigurationSettingResponse> {
    this.client ??= import("@azure/app-configuration").then((sdk) => new sdk.AppConfigurationClient(this.settings.connectionString, this.clientOptions));
    return (await this.client).getConfigurationSetting(
      { key, ...(this.settings.label ? { label: this.settings.label } : {}), ...(etag ? { etag } : {}) },
      { onlyIfChanged: etag !== undefined, abortSignal: this.abort.signal },
    );
  }

  /** The sentinel's etag; null when the key does not exist. */
  private async readSentinel(): Promise<string | null> {
    try {
      return (await this.get(this.settings.sentinel)).etag ?? null;
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
  }

  private async readConfig(): Promise<ConfigCandidate> {
    let setting: GetConfigurationSettingResponse;
    try {
      setting = await this.get(this.settings.key);
    } catch (err) {
      if (statusOf(err) === 404) throw new Error(`${this.origin}: no such key`);
      throw new Error(`${this.origin}: ${(err as Error).message}`);
    }
    if (typeof setting.value !== "string" || !setting.value.trim()) throw new Error(`${this.origin}: the key has no value`);
    if (!setting.etag) throw new Error(`${this.origin}: the answer carries no etag`);
    return { text: setting.value, version: setting.etag, origin: this.origin };
  }

  /**
   * The config at start. The sentinel is read first: a change published while the config key
   * is being read then shows up at the next poll instead of being missed.
   */
  async load(): Promise<ConfigCandidate> {
    let sentinel: string | null;
    try {
      sentinel = await this.readSentinel();
    } catch (err) {
      throw new Error(`${this.origin}: cannot read the sentinel key "${this.settings.sentinel}": ${(err as Error).message}`);
    }
    const candidate = await this.readConfig();
    this.sentinelEtag = sentinel;
    this.configEtag = candidate.version;
    return candidate;
  }

  /** Starts polling into the holder every pollMs. */
  follow(holder: GatewayHolder): this {
    this.holder = holder;
    this.configEtag ??= holder.version;
    this.schedule();
    return this;
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.check().finally(() => this.schedule()), this.settings.pollMs);
    this.timer.unref();
  }

  /** One poll now; never two at once. Errors are recorded in the holder (health) and logged. */
  check(): Promise<ReloadOutcome | undefined> {
    const run = this.queue.then(() => this.poll());
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async poll(): Promise<ReloadOutcome | undefined> {
    const holder = this.holder;
    if (!holder || this.closed) return undefined;
    try {
      const sentinel = await this.sentinelChange();
      if (sentinel === undefined) return undefined;
      const candidate = await this.readConfig();
      // Recorded once the config was read: a failed read is retried at the next poll.
      this.sentinelEtag = sentinel;
      this.configEtag = candidate.version;
      if (this.closed) return undefined;
      return holder.apply(candidate);
    } catch (err) {
      if (this.closed) return undefined;
      const message = (err as Error).message;
      holder.reloadFailed(message.startsWith(this.origin) ? message : `${this.origin}: ${message}`);
      return undefined;
    }
  }

  /**
   * The sentinel's new etag (null: it does not exist, and the config key changed), or
   * undefined when there is nothing to reload.
   */
  private async sentinelChange(): Promise<string | null | undefined> {
    if (typeof this.sentinelEtag === "string") {
      try {
        const s = await this.get(this.settings.sentinel, this.sentinelEtag);
        if (s.statusCode === 304) return undefined;
        return s.etag ?? null;
      } catch (err) {
        if (statusOf(err) !== 404) throw err;
        // The sentinel was deleted: from now on the config key is watched directly.
      }
    } else {
      const etag = await this.readSentinel();
      if (etag !== null) return etag;
    }
    // No sentinel: a conditional read of the config key says whether it changed.
    try {
      const c = await this.get(this.settings.key, this.configEtag);
      return c.statusCode === 304 ? undefined : null;
    } catch (err) {
      if (statusOf(err) === 404) throw new Error(`${this.origin}: no such key`);
      throw err;
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.abort.abort();
  }
}
