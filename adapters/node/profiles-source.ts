/** Profiles documents (`profilesSource`): a file or a URL holding profiles and API keys, read and followed. */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { interpolateEnv } from "../../src/config/load.ts";
import { configSchema } from "../../src/config/schema.ts";
import { DirectoryWatch, readSettledFile } from "./file-watch.ts";
import type { FileConfigSourceOptions, ReloadOutcome } from "./reload.ts";

/** A config's `profilesSource`, resolved: ${ENV} replaced, a relative path made absolute. */
export type ProfilesSpec =
  | { kind: "file"; path: string; key: string; origin: string }
  | { kind: "url"; url: string; pollMs: number; key: string; origin: string };

/** A profiles document as read, with the source it was read from. */
export interface ProfilesRead {
  spec: ProfilesSpec;
  text: string;
  /** The ETag the server sent with it (URL sources). */
  etag?: string;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A URL fit for logs and /_gateway/health: no credentials, no query (a SAS token lives there). */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}${u.search ? "?…" : ""}`;
  } catch {
    return "(invalid URL)";
  }
}

/**
 * The `profilesSource` a config document names, resolved; undefined when it names none, or
 * when the document or the field is invalid (validation then reports the problem, naming it).
 */
export function profilesSpecOf(text: string, env: Record<string, string | undefined>, baseDir?: string): ProfilesSpec | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isPlainObject(doc) || doc.profilesSource === undefined) return undefined;
  const missing: string[] = [];
  const raw = interpolateEnv(doc.profilesSource, env, "profilesSource", missing);
  if (missing.length) return undefined;
  const parsed = configSchema.shape.profilesSource.safeParse(raw);
  if (!parsed.success || !parsed.data) return undefined;
  const source = parsed.data;
  if ("file" in source) {
    const path = resolve(baseDir ?? process.cwd(), source.file);
    return { kind: "file", path, key: `file:${path}`, origin: path };
  }
  return { kind: "url", url: source.url, pollMs: source.pollMs, key: `url:${source.pollMs}:${source.url}`, origin: redactUrl(source.url) };
}


const PROFILES_FETCH_TIMEOUT_MS = 10_000;

/**
 * GETs a profiles document: undefined when the server answers 304 to If-None-Match `etag`.
 * Throws an Error naming the URL (redacted) when it cannot be read.
 */
export async function fetchProfilesUrl(url: string, etag?: string, signal?: AbortSignal): Promise<{ text: string; etag?: string } | undefined> {
  const origin = redactUrl(url);
  const timeout = AbortSignal.timeout(PROFILES_FETCH_TIMEOUT_MS);
  let res: Response;
  try {
    res = await fetch(url, {
      headers: { accept: "application/json", ...(etag ? { "if-none-match": etag } : {}) },
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
  } catch (err) {
    const cause = (err as { cause?: { message?: string } }).cause?.message;
    throw new Error(`cannot read profiles from ${origin}: ${(err as Error).message}${cause ? ` (${cause})` : ""}`);
  }
  if (res.status === 304 && etag) {
    await res.body?.cancel();
    return undefined;
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new Error(`cannot read profiles from ${origin}: HTTP ${res.status}`);
  }
  let text: string;
  try {
    text = await res.text();
  } catch (err) {
    throw new Error(`cannot read profiles from ${origin}: ${(err as Error).message}`);
  }
  return { text, etag: res.headers.get("etag") ?? undefined };
}

/** Reads the profiles document a config names (at startup): undefined when it names none; throws an Error saying what could not be read. */
export async function readProfilesFor(configText: string, configOrigin: string, env: Record<string, string | undefined>, baseDir?: string): Promise<ProfilesRead | undefined> {
  const spec = profilesSpecOf(configText, env, baseDir);
  if (!spec) return undefined;
  if (spec.kind === "file") {
    try {
      return { spec, text: await readFile(spec.path, "utf8") };
    } catch (err) {
      throw new Error(`cannot read profiles file ${spec.path} (profilesSource of ${configOrigin}): ${(err as Error).message}`);
    }
  }
  try {
    const got = await fetchProfilesUrl(spec.url);
    return { spec, text: got!.text, etag: got!.etag };
  } catch (err) {
    throw new Error(`${(err as Error).message} (profilesSource of ${configOrigin})`);
  }
}

export interface ProfilesEvents {
  /** The document's text changed: compose it with the config. */
  changed(): Promise<ReloadOutcome | undefined>;
  /** A read failed (reported once until a read succeeds or the failure changes). */
  failed(message: string): void;
}

/** Follows one profiles document: keeps the text last read, reports changes and failures. */
export abstract class ProfilesFollower {
  /** The text last read; undefined until a read succeeded. */
  text: string | undefined;
  /** Why the last read failed; undefined when it succeeded. */
  error: string | undefined;
  /** The failure last reported, so that a lasting one is reported once. */
  reported: string | undefined;
  protected closed = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly spec: ProfilesSpec,
    protected readonly events: ProfilesEvents,
  ) {}

  /** Reads the document: its text, or undefined when there is nothing new (304, closed). Throws an Error saying what failed. */
  protected abstract read(): Promise<string | undefined>;
  abstract start(): void;

  /** Reads now (never two reads at once); true when the text changed. */
  refresh(): Promise<boolean> {
    const run = this.queue.then(async () => {
      if (this.closed) return false;
      try {
        const text = await this.read();
        this.error = undefined;
        if (text === undefined || text === this.text) return false;
        this.text = text;
        return true;
      } catch (err) {
        this.error = (err as Error).message;
        return false;
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Reads, then reports: a change to the holder, a new failure to the log and health. */
  async poll(): Promise<ReloadOutcome | undefined> {
    const changed = await this.refresh();
    if (this.closed) return undefined;
    if (this.error !== undefined) {
      if (this.error !== this.reported) {
        this.reported = this.error;
        this.events.failed(this.error);
      }
      return undefined;
    }
    this.reported = undefined;
    return changed ? this.events.changed() : undefined;
  }

  close(): void {
    this.closed = true;
  }
}

/** A profiles file, watched as the config file is (its directory, debounced). */
export class FileProfilesFollower extends ProfilesFollower {
  private readonly watch: DirectoryWatch;
  private readonly debounceMs: number;

  constructor(spec: ProfilesSpec & { kind: "file" }, events: ProfilesEvents, options: FileConfigSourceOptions) {
    super(spec, events);
    this.debounceMs = options.debounceMs ?? 100;
    this.watch = new DirectoryWatch(spec.path, this.debounceMs, options.maxWaitMs ?? 1000, () => void this.poll(), (message) => events.failed(message));
  }

  protected async read(): Promise<string | undefined> {
    const path = (this.spec as { path: string }).path;
    try {
      return await readSettledFile(path, this.debounceMs * 2, () => this.closed);
    } catch (err) {
      throw new Error(`cannot read profiles file ${path}: ${(err as Error).message}`);
    }
  }

  start(): void {
    if (this.closed) return;
    this.watch.start();
    // A change between the first read and the watch would otherwise go unseen.
    void this.poll();
  }

  override close(): void {
    super.close();
    this.watch.close();
  }
}

/** A profiles URL, polled every pollMs; a conditional GET when the server gave an ETag. */
export class UrlProfilesFollower extends ProfilesFollower {
  private etag: string | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly abort = new AbortController();

  constructor(spec: ProfilesSpec & { kind: "url" }, events: ProfilesEvents, etag?: string) {
    super(spec, events);
    this.etag = etag;
  }

  protected async read(): Promise<string | undefined> {
    const got = await fetchProfilesUrl((this.spec as { url: string }).url, this.text === undefined ? undefined : this.etag, this.abort.signal);
    if (!got) return undefined;
    this.etag = got.etag;
    return got.text;
  }

  start(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.poll().finally(() => this.start()), (this.spec as { pollMs: number }).pollMs);
    this.timer.unref();
  }

  override close(): void {
    super.close();
    clearTimeout(this.timer);
    this.abort.abort();
  }
}

// ---------------------------------------------------------------------------------------------
// The holder
// ---------------------------------------------------------------------------------------------
