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
  /** Resolves once the first credentials are cached (at once for static ones). */
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

/** A token is renewed this long before it expires (Azure AD tokens live 60–90 min). */
const RENEW_BEFORE_MS = 5 * 60_000;
/** After a failed fetch, the next try waits this long. */
const RETRY_MS = 10_000;

/**
 * A token fetched by `fetchToken` (managed identity, a client credential), cached and renewed
 * in the background `RENEW_BEFORE_MS` before it expires. A fetch that fails keeps the token in
 * hand and tries again later; `refresh` (after a 401) fetches at once, one fetch at a time.
 */
export class RefreshingTokenCredentials implements CredentialProvider {
  private token: Token | undefined;
  private inFlight: Promise<boolean> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;
  private readonly first: Promise<void>;

  constructor(
    private readonly fetchToken: () => Promise<Token>,
    private readonly header: (token: string) => [string, string] = (t) => ["authorization", `Bearer ${t}`],
    private readonly now: () => number = Date.now,
  ) {
    this.first = this.refresh().then(() => undefined);
  }

  apply(out: HeaderPairs): void {
    if (this.token) out.push(this.header(this.token.token));
  }

  ready(): Promise<void> | undefined {
    return this.token ? undefined : this.first;
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

  private async fetch(): Promise<boolean> {
    const before = this.token?.token;
    let next: Token;
    try {
      next = await this.fetchToken();
    } catch (err) {
      console.error(`sluice: fetching a backend token failed: ${(err as Error).message}`);
      this.schedule(RETRY_MS);
      return false;
    }
    this.token = next;
    this.schedule(next.expiresAt - RENEW_BEFORE_MS - this.now());
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
