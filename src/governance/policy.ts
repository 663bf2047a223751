import { BadRequest, type Classified } from "../classify.ts";
import type { SluiceConfig } from "../config/schema.ts";
import type { HeaderPairs } from "../http/headers.ts";
import { resolvePriority } from "../priority.ts";
import type { Identity } from "./identity.ts";

/** The profile's default applies when the client named no priority; its maximum caps what the client asked for. */
export function governedPriority(cls: Classified, identity: Identity, config: SluiceConfig): number {
  const profile = identity.profile;
  if (!profile) return cls.priority;
  const levels = config.priorities.levels;
  let level = cls.priority;
  if (!cls.priorityExplicit && profile.defaultPriority !== undefined) level = resolvePriority(profile.defaultPriority, levels)!;
  // A lower number is more urgent: the cap is the larger of the two.
  if (profile.maxPriority !== undefined) level = Math.max(level, resolvePriority(profile.maxPriority, levels)!);
  return level;
}

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
