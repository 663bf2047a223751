import { BadRequest } from "../classify.ts";
import type { SluiceConfig } from "../config/schema.ts";
import type { HeaderPairs } from "../types.ts";
import type { Identity } from "./identity.ts";

/** Required headers present, validated ones holding an allowed value: else 400. */
export function checkHeaderPolicy(headers: Headers, config: SluiceConfig, identity: Identity): void {
  for (const name of config.headerPolicy.require) {
    if (headers.get(name) === null) throw new BadRequest(`the header ${name} is required`, "header_required");
  }
  for (const [name, allowed] of Object.entries(identity.profile?.validateHeaders ?? {})) {
    const value = headers.get(name);
    if (value === null || !allowed.includes(value)) throw new BadRequest(`the header ${name} is missing or not an allowed value for this caller`, "header_invalid");
  }
}

/** Profile headers, and the verified identity when the config forwards it. */
export function upstreamIdentityHeaders(identity: Identity, config: SluiceConfig): HeaderPairs | undefined {
  const pairs: HeaderPairs = Object.entries(identity.profile?.headers ?? {});
  if (config.auth.forwardIdentity) {
    pairs.push(["x-sluice-caller", identity.caller]);
    if (identity.app) pairs.push(["x-sluice-app", identity.app]);
    if (identity.groups.length) pairs.push(["x-sluice-groups", identity.groups.join(",")]);
  }
  return pairs.length ? pairs : undefined;
}
