import { clampDelay } from "../timers.ts";
import type { HeaderPairs } from "../types.ts";

/**
 * Where a backend's credentials come from. The request path stays synchronous: `apply` adds
 * what is cached now; providers that fetch tokens (managed identity) refresh them in the
 * background before they expire. A backend that answers 401 makes the gateway call `refresh`
 * once and, when it resolves true, send the attempt once more to the same backend.
 */
export interface CredentialProvider {
  /** Appends the credential headers to `out`. */
  apply(out: HeaderPairs): void;
  /**
   * Undefined when credentials are in hand (always for static ones); else resolves once they
   * are, or rejects with CredentialsUnavailable when none can be had now — within a bounded
   * time, never hanging the request — and the gateway fails the attempt over to the next backend.
   */
  ready(): Promise<void> | undefined;
  /** Fetches fresh credentials now; true when they differ from those just refused. */
  refresh(): Promise<boolean>;
  /** Stops background refreshes. */
  close(): void;
}

/** A key or token from the config: nothing to fetch, nothing to refresh. */
export class StaticCredentials implements CredentialProvider {
  constructor(private readonly pairs: HeaderPairs) {}

  apply(out: HeaderPairs): void {
    for (const p of this.pairs) out.push(p);
  }

  ready(): undefined {
    return undefined;
  }

  refresh(): Promise<boolean> {
    return Promise.resolve(false);
  }

  close(): void {}
}

/** A bearer token with the time it stops being valid. */
export interface Token {
  token: string;
  /** Epoch ms. */
  expiresAt: number;
}

/** No credentials can be had for a backend now (a token that cannot be fetched): the attempt fails over. */
export class CredentialsUnavailable extends Error {}

/** A token is renewed this long before it expires at the most (Azure AD tokens live 60–90 min, managed identity ones up to 24 h)… */
const RENEW_BEFORE_MS = 5 * 60_000;
/** …and at this share of its lifetime at the least, so a short-lived token is renewed well before it expires too. */
const RENEW_AT_LIFETIME_SHARE = 0.5;
/** After a failed fetch, the next try waits this long. */
const RETRY_MS = 10_000;
/** A fetch that has not settled after this long counts as failed: no request waits longer for a token. */
const FETCH_TIMEOUT_MS = 10_000;

/** How long before `expiresAt` a token fetched at `fetchedAt` is renewed: 5 minutes, or half its lifetime when that is shorter. */
export function renewBeforeMs(fetchedAt: number, expiresAt: number): number {
  return Math.max(0, Math.min(RENEW_BEFORE_MS, (expiresAt - fetchedAt) * RENEW_AT_LIFETIME_SHARE));
}

export interface RefreshingTokenOptions {
  /** The header the token goes in; default `Authorization: Bearer <token>`. */
  header?: (token: string) => [string, string];
  now?: () => number;
  /** What logs and attempt errors call this credential, never the token (e.g. "a managed identity token (system-assigned, scope https://…/.default)"). */
  label?: string;
  /** A fetch not settled after this long counts as failed (default 10 s). */
  fetchTimeoutMs?: number;
  /** The wait before trying again after a failed fetch (default 10 s). */
  retryMs?: number;
}

/**
 * A token fetched by `fetchToken` (managed identity, a client credential), cached and renewed
 * in the background before it expires: 5 minutes before, or at half its lifetime when that comes
 * sooner. A fetch that fails (or does not settle within the fetch timeout) keeps the token in
 * hand and tries again later; `refresh` (after a 401) fetches at once, one fetch at a time.
 *
 * `ready` never keeps a request waiting past the fetch timeout: with a valid token it is
 * undefined; while a fetch runs it waits for it; with no valid token and the last fetch failed it
 * rejects at once with CredentialsUnavailable (the attempt fails over), and the background retry
 * goes on.
 */
export class RefreshingTokenCredentials implements CredentialProvider {
  private token: Token | undefined;
  private inFlight: Promise<boolean> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;
  /** Why the last fetch failed; cleared by a fetch that succeeds. */
  private lastError: string | undefined;
  private readonly header: (token: string) => [string, string];
  private readonly now: () => number;
  private readonly label: string;
  private readonly fetchTimeoutMs: number;
  private readonly retryMs: number;

  constructor(
    private readonly fetchToken: () => Promise<Token>,
    options: RefreshingTokenOptions = {},
  ) {
    this.header = options.header ?? ((t) => ["authorization", `Bearer ${t}`]);
    this.now = options.now ?? Date.now;
    this.label = options.label ?? "a backend token";
    this.fetchTimeoutMs = options.fetchTimeoutMs ?? FETCH_TIMEOUT_MS;
    this.retryMs = options.retryMs ?? RETRY_MS;
    void this.refresh();
  }

  apply(out: HeaderPairs): void {
    if (this.token) out.push(this.header(this.token.token));
  }

  ready(): Promise<void> | undefined {
    if (this.valid()) return undefined;
    if (!this.inFlight && this.lastError !== undefined) return Promise.reject(this.unavailable());
    return this.refresh().then(() => {
      if (!this.valid()) throw this.unavailable();
    });
  }

  refresh(): Promise<boolean> {
    this.inFlight ??= this.fetch().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private valid(): boolean {
    return this.token !== undefined && this.token.expiresAt > this.now();
  }

  private unavailable(): CredentialsUnavailable {
    const why = this.lastError ?? "no token yet";
    return new CredentialsUnavailable(this.token ? `${this.label}: the token expired and renewing it failed: ${why}` : `${this.label}: no token: ${why}`);
  }

  private async fetch(): Promise<boolean> {
    const before = this.token?.token;
    const fetchedAt = this.now();
    let next: Token;
    let timeout: ReturnType<typeof setTimeout> | undefined;
    try {
      next = await Promise.race([
        this.fetchToken(),
        new Promise<never>((_, reject) => {
          timeout = setTimeout(() => reject(new Error(`no answer within ${this.fetchTimeoutMs} ms`)), clampDelay(this.fetchTimeoutMs));
          (timeout as { unref?: () => void }).unref?.();
        }),
      ]);
    } catch (err) {
      this.lastError = (err as Error)?.message ?? String(err);
      console.error(`sluice: fetching ${this.label} failed (next try in ${Math.round(this.retryMs / 1000)} s): ${this.lastError}`);
      this.schedule(this.retryMs);
      return false;
    } finally {
      clearTimeout(timeout);
    }
    this.token = next;
    this.lastError = undefined;
    this.schedule(next.expiresAt - renewBeforeMs(fetchedAt, next.expiresAt) - this.now());
    return next.token !== before;
  }

  private schedule(inMs: number): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.refresh(), clampDelay(inMs, 1_000));
    // A background renewal must not keep a Node process alive on its own.
    (this.timer as { unref?: () => void }).unref?.();
  }
}
