/**
 * JWT bearer-token verification against a remote JWKS (Entra ID first).
 *
 * Web-standard only (fetch, WebCrypto via `jose`): runs on Node, Workers and Azure Functions.
 * Keys are cached by `jose`'s remote JWKS set: refetched when the cache is older than
 * `cacheMaxAgeMs`, and when a token names a `kid` the cached set does not have — at most once per
 * `cooldownMs`. A JWKS that cannot be fetched fails closed ("signing keys unavailable"); after a
 * failed fetch, further fetches are held back for `failureBackoffMs` so an outage of the identity
 * provider is not multiplied by the gateway's request rate.
 *
 * Failure reasons are short and fixed (safe to show the client); the token is never echoed.
 */
import {
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type FetchImplementation,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
} from "jose";
import type { JwtConfig } from "../config/schema.ts";

export interface VerifiedToken {
  /** `claims[callerClaim]`, else `sub`. */
  caller: string;
  /** First present of `appClaims`, else null. */
  app: string | null;
  /** Union of the string-array claims named by `groupClaims` (first-seen order, no duplicates). */
  groups: string[];
}

export type JwtResult =
  | { ok: true; token: VerifiedToken }
  /** `forbidden: true`: the token is valid but its caller may not call (answer 403, not 401). */
  | { ok: false; reason: string; forbidden?: true };

/** Tuning knobs (not part of the config file; tests shorten them). */
export interface JwtVerifierOptions {
  /** Maximum age of the cached key set before it is refetched. Default 10 minutes. */
  cacheMaxAgeMs?: number;
  /** After a successful fetch, how long an unknown `kid` cannot trigger another fetch. Default 30 s. */
  cooldownMs?: number;
  /** Timeout of one JWKS fetch. Default 5 s. */
  timeoutMs?: number;
  /** After a failed fetch, how long further fetches are refused outright. Default 5 s. */
  failureBackoffMs?: number;
}

/** Tokens longer than this are refused before any parsing. */
export const MAX_JWT_LENGTH = 16 * 1024;

const DEFAULTS = {
  cacheMaxAgeMs: 10 * 60_000,
  cooldownMs: 30_000,
  timeoutMs: 5_000,
  failureBackoffMs: 5_000,
} satisfies Required<JwtVerifierOptions>;

const SEGMENT = "[A-Za-z0-9_-]";
/** Compact JWS: header.payload.signature (the signature may be empty only for alg "none"). */
const COMPACT_JWS = new RegExp(`^${SEGMENT}+\\.${SEGMENT}+\\.${SEGMENT}*$`);

/** Thrown by the key resolver when the key set could not be obtained. */
class KeysUnavailable extends Error {}
/** Thrown by the fetch wrapper while a recent failure holds fetches back. */
class FetchBackoff extends Error {}

const ok = (token: VerifiedToken): JwtResult => ({ ok: true, token });
const fail = (reason: string): JwtResult => ({ ok: false, reason });

/**
 * Cheap shape test: three base64url segments separated by dots, the first decoding to a JSON
 * header with "alg". Used to tell a JWT from an API key in `Authorization: Bearer`.
 */
export function looksLikeJwt(value: string): boolean {
  if (typeof value !== "string" || !COMPACT_JWS.test(value)) return false;
  try {
    const header = decodeProtectedHeader(value);
    return typeof header.alg === "string" && header.alg.length > 0;
  } catch {
    return false;
  }
}

/**
 * Verifies bearer JWTs against a remote JWKS (cached; refreshed when a token names an unknown kid,
 * at most once per cooldown; fails closed when the JWKS cannot be fetched).
 */
export function createJwtVerifier(
  config: JwtConfig,
  options: JwtVerifierOptions = {},
): (token: string) => Promise<JwtResult> {
  const opts = { ...DEFAULTS, ...stripUndefined(options) };

  // Only asymmetric signatures make sense against a published key set: "none" is never accepted,
  // and HMAC algorithms are dropped so a token "signed" with a public key's bytes cannot pass.
  const algorithms = [...new Set(config.algorithms)].filter(
    (a) => a.toLowerCase() !== "none" && !/^HS\d+$/i.test(a),
  );
  const allowedAlgs = new Set(algorithms);
  const allowedApps = config.allowedApps ? new Set(config.allowedApps) : undefined;

  let lastFailureAt: number | undefined;
  const guardedFetch: FetchImplementation = async (url, init) => {
    if (lastFailureAt !== undefined && Date.now() - lastFailureAt < opts.failureBackoffMs) {
      throw new FetchBackoff("JWKS fetch backing off after a failure");
    }
    return globalThis.fetch(url, init);
  };

  const remote = createRemoteJWKSet(new URL(config.jwksUrl), {
    cacheMaxAge: opts.cacheMaxAgeMs,
    cooldownDuration: opts.cooldownMs,
    timeoutDuration: opts.timeoutMs,
    [customFetch]: guardedFetch,
  });

  /** Key lookups pass through; anything else (fetch, HTTP status, JSON, JWKS shape) is "unavailable". */
  const getKey: JWTVerifyGetKey = async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      if (
        err instanceof errors.JWKSNoMatchingKey ||
        err instanceof errors.JWKSMultipleMatchingKeys ||
        err instanceof errors.JOSENotSupported ||
        err instanceof errors.JOSEAlgNotAllowed
      ) {
        throw err;
      }
      if (!(err instanceof FetchBackoff)) lastFailureAt = Date.now();
      throw new KeysUnavailable("signing keys unavailable", { cause: err });
    }
  };

  const verifyOptions: JWTVerifyOptions = {
    issuer: config.issuer,
    audience: config.audience,
    algorithms,
    clockTolerance: config.clockToleranceSec,
    requiredClaims: ["exp"],
  };

  const verifySignature = async (token: string): Promise<JWTPayload> => {
    try {
      return (await jwtVerify(token, getKey, verifyOptions)).payload;
    } catch (err) {
      // No kid and several keys fit: try each (a JWKS without kids, or a token without one).
      if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
      for await (const key of err) {
        try {
          return (await jwtVerify(token, key, verifyOptions)).payload;
        } catch (inner) {
          if (inner instanceof errors.JWSSignatureVerificationFailed) continue;
          throw inner;
        }
      }
      throw new errors.JWSSignatureVerificationFailed();
    }
  };

  return async (token: string): Promise<JwtResult> => {
    if (typeof token !== "string") return fail("malformed token");
    if (token.length > MAX_JWT_LENGTH) return fail("token too large");
    if (!COMPACT_JWS.test(token)) return fail("malformed token");

    let alg: unknown;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      return fail("malformed token");
    }
    if (typeof alg !== "string" || alg === "") return fail("malformed token");
    if (alg.toLowerCase() === "none") return fail("unsigned token");
    if (!allowedAlgs.has(alg)) return fail("algorithm not allowed");

    let claims: JWTPayload;
    try {
      claims = await verifySignature(token);
    } catch (err) {
      return fail(reasonFor(err));
    }

    const caller = stringClaim(claims, config.callerClaim) ?? stringClaim(claims, "sub");
    if (caller === undefined) return fail("token names no caller");

    let app: string | null = null;
    for (const name of config.appClaims) {
      const value = stringClaim(claims, name);
      if (value !== undefined) {
        app = value;
        break;
      }
    }

    const groups = new Set<string>();
    for (const name of config.groupClaims) {
      const value = claims[name];
      if (!Array.isArray(value)) continue;
      for (const g of value) if (typeof g === "string" && g !== "") groups.add(g);
    }

    if (allowedApps && (app === null || !allowedApps.has(app))) {
      return { ok: false, reason: "application not allowed", forbidden: true };
    }
    return ok({ caller, app, groups: [...groups] });
  };
}

function stringClaim(claims: JWTPayload, name: string): string | undefined {
  const value = claims[name];
  return typeof value === "string" && value !== "" ? value : undefined;
}

/** A short, fixed, client-safe reason. Never includes claim values or the token. */
function reasonFor(err: unknown): string {
  if (err instanceof KeysUnavailable) return "signing keys unavailable";
  if (err instanceof errors.JWTExpired) return "expired";
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case "iss":
        return err.reason === "missing" ? "missing issuer" : "wrong issuer";
      case "aud":
        return err.reason === "missing" ? "missing audience" : "wrong audience";
      case "nbf":
        return err.reason === "check_failed" ? "not yet valid" : "invalid nbf claim";
      case "exp":
      case "iat":
        return err.reason === "missing" ? `missing ${err.claim} claim` : `invalid ${err.claim} claim`;
      default:
        return "invalid claims";
    }
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return "bad signature";
  if (err instanceof errors.JWKSNoMatchingKey) return "unknown signing key";
  if (err instanceof errors.JOSEAlgNotAllowed) return "algorithm not allowed";
  if (err instanceof errors.JOSENotSupported) return "unsupported token";
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) return "malformed token";
  return "invalid token";
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
