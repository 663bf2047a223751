import { backendKind } from "../backends/index.ts";
import type { BackendConfig } from "../config/schema.ts";
import { CredentialsUnavailable, StaticCredentials, type CredentialProvider } from "./port.ts";

/** Credentials a runtime cannot supply: every attempt on the backend fails over, with `reason`. */
export class UnavailableCredentials implements CredentialProvider {
  constructor(private readonly reason: string) {}

  apply(): void {}

  ready(): Promise<void> {
    return Promise.reject(new CredentialsUnavailable(this.reason));
  }

  refresh(): Promise<boolean> {
    return Promise.resolve(false);
  }

  close(): void {}
}

/**
 * The credentials `backends[].auth` names that need nothing from the runtime: a static key (in
 * the kind's header or the one named), a bearer token, or none. A managed identity needs the
 * runtime's factory (adapters/node/managed-identity.ts); without one its attempts fail over.
 */
export function configCredentials(config: BackendConfig): CredentialProvider {
  const auth = config.auth;
  if (!auth || auth.type === "none") return new StaticCredentials([]);
  if (auth.type === "bearer") return new StaticCredentials([["authorization", `Bearer ${auth.token}`]]);
  if (auth.type === "managed-identity") return new UnavailableCredentials("a managed identity is not available on this runtime");
  return new StaticCredentials([auth.header ? [auth.header, auth.key] : backendKind(config.kind).apiKeyHeader(auth.key)]);
}

/** How a runtime gets credentials for a backend; the default reads them from the config. */
export type CredentialsFactory = (config: BackendConfig) => CredentialProvider;
