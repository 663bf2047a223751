import { backendKind } from "../backends/index.ts";
import type { BackendConfig } from "../config/schema.ts";
import { StaticCredentials, type CredentialProvider } from "./port.ts";

/** The credentials `backends[].auth` names: a static key (in the kind's header or the one named) or bearer token. */
export function configCredentials(config: BackendConfig): CredentialProvider {
  const auth = config.auth;
  if (!auth || auth.type === "none") return new StaticCredentials([]);
  if (auth.type === "bearer") return new StaticCredentials([["authorization", `Bearer ${auth.token}`]]);
  return new StaticCredentials([auth.header ? [auth.header, auth.key] : backendKind(config.kind).apiKeyHeader(auth.key)]);
}

/** How a runtime gets credentials for a backend; the default reads them from the config. */
export type CredentialsFactory = (config: BackendConfig) => CredentialProvider;
