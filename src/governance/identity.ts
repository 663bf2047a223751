import type { ProfileConfig, SluiceConfig } from "../config/schema.ts";
import { looksLikeJwt, type JwtResult } from "./jwt.ts";

/** Who is calling, as verified by the gateway (never as claimed by a header). */
export interface Identity {
  caller: string;
  app: string | null;
  groups: string[];
  profileName: string | null;
  profile: ProfileConfig | undefined;
}

export type Identification = { ok: true; identity: Identity } | { ok: false; status: 401 | 403; code: string; message: string };

export type JwtVerifier = (token: string) => Promise<JwtResult>;

/** Verified-key cache size; past it the cache starts over (hashing again is cheap, just not free). */
const KEY_CACHE_MAX = 10_000;

/** FNV-1a: a stable bucket for a credential on an open gateway, so the credential itself is never kept or reported. */
export function fingerprint(value: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < value.length; i++) h = Math.imul(h ^ value.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16).padStart(8, "0");
}

async function sha256Hex(value: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(value)));
  let hex = "";
  for (const b of digest) hex += b.toString(16).padStart(2, "0");
  return hex;
}

function credentialOf(headers: Headers): { kind: "bearer" | "key"; value: string } | undefined {
  const authz = headers.get("authorization");
  if (authz) {
    const m = /^Bearer\s+(.+)$/i.exec(authz.trim());
    return { kind: "bearer", value: m ? m[1]! : authz.trim() };
  }
  const key = headers.get("api-key") ?? headers.get("ocp-apim-subscription-key") ?? headers.get("x-api-key");
  return key ? { kind: "key", value: key.trim() } : undefined;
}

const deny = (status: 401 | 403, code: string, message: string): Identification => ({ ok: false, status, code, message });

/**
 * Turns a request's credentials into an Identity: API keys checked against their SHA-256
 * hashes, JWT bearer tokens verified against the issuer's keys. With neither configured the
 * gateway is open and a caller is a fingerprint of whatever credential it sent.
 */
export class Authenticator {
  private readonly keys = new Map<string, SluiceConfig["auth"]["apiKeys"][number]>();
  private readonly verified = new Map<string, string>();
  private readonly open: boolean;
  private readonly anonymous: boolean;

  constructor(
    private readonly config: SluiceConfig,
    private readonly verifyJwt?: JwtVerifier,
  ) {
    for (const k of config.auth.apiKeys) this.keys.set(k.hash.slice("sha256:".length), k);
    this.open = !config.auth.apiKeys.length && !config.auth.jwt;
    this.anonymous = config.auth.anonymous ?? this.open;
  }

  /**
   * May this request use the gateway's own endpoints? Always, on an open gateway; else only with
   * an operator key (auth.operator.apiKeys) or a verified JWT carrying an operator group.
   */
  async operator(headers: Headers): Promise<{ ok: true } | { ok: false; status: 401 | 403; code: string; message: string }> {
    if (this.open) return { ok: true };
    const credential = credentialOf(headers);
    if (!credential) return { ok: false, status: 401, code: "missing_credentials", message: "the gateway's own endpoints need an operator credential" };
    const op = this.config.auth.operator;
    if (credential.kind === "bearer" && this.verifyJwt && looksLikeJwt(credential.value)) {
      const result = await this.verifyJwt(credential.value);
      if (!result.ok) return { ok: false, status: 401, code: "invalid_token", message: `bearer token refused: ${result.reason}` };
      if (op?.groups.some((g) => result.token.groups.includes(g))) return { ok: true };
      return { ok: false, status: 403, code: "not_an_operator", message: "this caller is not an operator" };
    }
    const hex = await this.hashOf(credential.value);
    if (op?.apiKeys.some((k) => k.hash === `sha256:${hex}`)) return { ok: true };
    if (this.keys.has(hex)) return { ok: false, status: 403, code: "not_an_operator", message: "this caller is not an operator" };
    return { ok: false, status: 401, code: "invalid_api_key", message: "the API key is not valid" };
  }

  async identify(headers: Headers): Promise<Identification> {
    const credential = credentialOf(headers);
    if (!credential) {
      return this.anonymous ? this.admit({ caller: "anonymous", app: null, groups: [] }) : deny(401, "missing_credentials", "send an API key (api-key header) or a bearer token");
    }
    if (this.open) return this.admit({ caller: `key:${fingerprint(credential.value)}`, app: null, groups: [] });

    if (credential.kind === "bearer" && this.verifyJwt && looksLikeJwt(credential.value)) {
      const result = await this.verifyJwt(credential.value);
      if (!result.ok) return deny(result.forbidden ? 403 : 401, result.forbidden ? "app_not_allowed" : "invalid_token", `bearer token refused: ${result.reason}`);
      return this.admit(result.token);
    }
    const entry = this.keys.get(await this.hashOf(credential.value));
    if (!entry) return deny(401, "invalid_api_key", "the API key is not valid");
    return this.admit({ caller: entry.caller, app: entry.app ?? null, groups: entry.groups }, entry.profile);
  }

  private async hashOf(key: string): Promise<string> {
    const known = this.verified.get(key);
    if (known) return known;
    const hex = await sha256Hex(key);
    if (this.verified.size >= KEY_CACHE_MAX) this.verified.clear();
    this.verified.set(key, hex);
    return hex;
  }

  /** Binds the profile (key's own, else by app, else by group, else the default) and refuses suspended callers. */
  private admit(who: { caller: string; app: string | null; groups: string[] }, keyProfile?: string): Identification {
    const auth = this.config.auth;
    const group = who.groups.find((g) => auth.groupProfiles[g] !== undefined);
    const profileName =
      keyProfile ?? (who.app !== null ? auth.appProfiles[who.app] : undefined) ?? (group !== undefined ? auth.groupProfiles[group] : undefined) ?? auth.defaultProfile ?? null;
    const profile = profileName !== null ? this.config.profiles[profileName] : undefined;
    if (profile?.suspended) return deny(403, "caller_suspended", "this caller is suspended");
    return { ok: true, identity: { ...who, profileName, profile } };
  }
}

const patterns = new Map<string, RegExp>();

function patternOf(p: string): RegExp {
  let re = patterns.get(p);
  if (!re) {
    re = new RegExp(`^${p.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`);
    patterns.set(p, re);
  }
  return re;
}

/** `gpt-4o*` style patterns: `*` matches any run of characters, everything else literally. */
export function modelAllowed(allowed: readonly string[] | undefined, model: string | undefined): boolean {
  if (!allowed) return true;
  if (model === undefined) return false;
  return allowed.some((p) => (p.includes("*") ? patternOf(p).test(model) : p === model));
}
