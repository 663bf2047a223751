/**
 * Backend credentials on Node and Azure Functions: what the config names, plus `managed-identity`
 * — an Entra ID token of the identity the gateway runs as, from @azure/identity's
 * ManagedIdentityCredential (App Service / Container Apps / Functions through IDENTITY_ENDPOINT
 * and IDENTITY_HEADER, IMDS on a VM, Azure Arc …). @azure/identity is imported on the first
 * token fetch, so a config without a managed-identity backend never loads it.
 *
 * One token cache per (identity, scope), shared by every backend that names them and by every
 * config version: a reload does not fetch tokens again, and ten backends on one identity make
 * one fetch. The cache (src/credentials/port.ts) renews the token in the background before it
 * expires, fetches at once after a backend's 401, and fails an attempt over — never holding a
 * request longer than its fetch timeout — when no token can be had.
 */
import type { BackendConfig } from "../../src/config/schema.ts";
import { configCredentials, type CredentialsFactory } from "../../src/credentials/from-config.ts";
import { RefreshingTokenCredentials, type CredentialProvider } from "../../src/credentials/port.ts";
import type { HeaderPairs } from "../../src/types.ts";

type ManagedIdentityAuth = Extract<NonNullable<BackendConfig["auth"]>, { type: "managed-identity" }>;

/** The part of a @azure/identity TokenCredential used here. */
export interface TokenSource {
  getToken(scope: string): Promise<{ token: string; expiresOnTimestamp: number } | null>;
}

/** Makes the token source of one identity: a user-assigned one by client id, else the system-assigned one. */
export type TokenSourceFactory = (clientId: string | undefined) => Promise<TokenSource>;

/**
 * @azure/identity's ManagedIdentityCredential, loaded on first use. Its retries are kept short: a
 * request waits for a first token at most the fetch timeout, and the cache tries again on its own
 * (every 10 s) after a failure.
 */
export const azureManagedIdentity: TokenSourceFactory = async (clientId) => {
  const { ManagedIdentityCredential } = await import("@azure/identity");
  return new ManagedIdentityCredential({ ...(clientId ? { clientId } : {}), retryOptions: { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 2_000 } });
};

/** What the logs call an identity and scope; never a token. */
export function identityLabel(auth: ManagedIdentityAuth): string {
  return `a managed identity token (${auth.clientId ? `user-assigned ${auth.clientId}` : "system-assigned"}, scope ${auth.scope})`;
}

/** A view of a shared cache for one backend: its close() leaves the cache to the factory. */
class SharedCredentials implements CredentialProvider {
  constructor(private readonly inner: CredentialProvider) {}
  apply(out: HeaderPairs): void {
    this.inner.apply(out);
  }
  ready(): Promise<void> | undefined {
    return this.inner.ready();
  }
  refresh(): Promise<boolean> {
    return this.inner.refresh();
  }
  close(): void {}
}

export interface NodeCredentials {
  /** For createGateway({ credentials }): every config version of one process gets the same factory. */
  factory: CredentialsFactory;
  /** Stops the background renewals (at shutdown). */
  close(): void;
}

/** The credentials factory of a Node or Azure Functions process. */
export function nodeCredentials(source: TokenSourceFactory = azureManagedIdentity): NodeCredentials {
  const caches = new Map<string, RefreshingTokenCredentials>();
  /** One credential per identity, made once (a failed load or construction is tried again). */
  const sources = new Map<string, Promise<TokenSource>>();
  const sourceFor = (clientId: string | undefined) => {
    const key = clientId ?? "";
    let s = sources.get(key);
    if (!s) {
      s = source(clientId);
      sources.set(key, s);
      s.catch(() => sources.delete(key));
    }
    return s;
  };
  const factory: CredentialsFactory = (config) => {
    const auth = config.auth;
    if (auth?.type !== "managed-identity") return configCredentials(config);
    const clientId = auth.clientId?.toLowerCase();
    const key = `${clientId ?? ""}\0${auth.scope}`;
    let cache = caches.get(key);
    if (!cache) {
      const scope = auth.scope;
      cache = new RefreshingTokenCredentials(
        async () => {
          const got = await (await sourceFor(clientId)).getToken(scope);
          if (!got?.token) throw new Error("the identity endpoint gave no token");
          return { token: got.token, expiresAt: got.expiresOnTimestamp };
        },
        { label: identityLabel({ ...auth, ...(clientId ? { clientId } : {}) }) },
      );
      caches.set(key, cache);
    }
    return new SharedCredentials(cache);
  };
  return {
    factory,
    close() {
      for (const c of caches.values()) c.close();
      caches.clear();
    },
  };
}
