import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { JwtConfig } from "../../src/config/schema.ts";
import { createJwtVerifier, looksLikeJwt, type JwtResult } from "../../src/governance/jwt.ts";

const TENANT = "11111111-2222-3333-4444-555555555555";
const ISSUER = `https://login.microsoftonline.com/${TENANT}/v2.0`;
const AUDIENCE = "api://sluice";
const CLIENT_APP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const OID = "99999999-8888-7777-6666-555555555555";

interface KeyPair {
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(kid: string, withKid = true): Promise<KeyPair> {
  const { privateKey, publicKey } = await generateKeyPair("RS256", { extractable: true });
  const jwk: JWK = { ...(await exportJWK(publicKey)), use: "sig", alg: "RS256" };
  if (withKid) jwk.kid = kid;
  return { kid, privateKey, publicKey, jwk };
}

/** A local JWKS endpoint that counts its hits; its keys and status can be changed mid-test. */
class JwksServer {
  hits = 0;
  keys: JWK[] = [];
  status = 200;
  private server: Server | undefined;
  port = 0;

  async start(): Promise<void> {
    this.server = createServer((_req, res) => {
      this.hits++;
      if (this.status !== 200) {
        res.writeHead(this.status, { "content-type": "text/plain" }).end("nope");
        return;
      }
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: this.keys }));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/discovery/v2.0/keys`;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

/** A port nothing listens on: bind one, then release it. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

function config(jwksUrl: string, over: Partial<JwtConfig> = {}): JwtConfig {
  return {
    jwksUrl,
    issuer: ISSUER,
    audience: AUDIENCE,
    algorithms: ["RS256"],
    clockToleranceSec: 60,
    callerClaim: "oid",
    appClaims: ["azp", "appid"],
    groupClaims: ["groups", "roles"],
    ...over,
  };
}

const now = (): number => Math.floor(Date.now() / 1000);

/** Entra ID v2-style access token claims. */
function entraClaims(over: JWTPayload = {}): JWTPayload {
  const t = now();
  return {
    iss: ISSUER,
    aud: AUDIENCE,
    iat: t - 10,
    nbf: t - 10,
    exp: t + 3600,
    sub: "pairwise-subject",
    oid: OID,
    tid: TENANT,
    azp: CLIENT_APP,
    roles: ["Sluice.Invoke", "Sluice.Batch"],
    groups: ["g-engineering", "Sluice.Invoke"],
    ver: "2.0",
    ...over,
  };
}

async function sign(key: KeyPair, claims: JWTPayload = entraClaims(), header: Record<string, unknown> = {}): Promise<string> {
  const protectedHeader = { alg: "RS256", typ: "JWT", ...(key.jwk.kid ? { kid: key.kid } : {}), ...header };
  return new SignJWT(claims).setProtectedHeader(protectedHeader as { alg: string }).sign(key.privateKey);
}

const b64url = (s: string | Uint8Array): string =>
  Buffer.from(typeof s === "string" ? s : Buffer.from(s)).toString("base64url");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function expectFailure(result: JwtResult, reason: string): void {
  expect(result).toEqual({ ok: false, reason });
}

describe("createJwtVerifier", () => {
  const jwks = new JwksServer();
  let keyA: KeyPair;
  let keyB: KeyPair;

  beforeAll(async () => {
    await jwks.start();
    keyA = await makeKey("key-a");
    keyB = await makeKey("key-b");
  });
  afterAll(() => jwks.stop());
  beforeEach(() => {
    jwks.hits = 0;
    jwks.status = 200;
    jwks.keys = [keyA.jwk];
  });

  it("accepts a valid Entra ID token and maps caller, app and groups", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    const result = await verify(await sign(keyA));
    expect(result).toEqual({
      ok: true,
      token: { caller: OID, app: CLIENT_APP, groups: ["g-engineering", "Sluice.Invoke", "Sluice.Batch"] },
    });
    expect(jwks.hits).toBe(1);
    // Cached: more tokens, no more fetches.
    for (let i = 0; i < 5; i++) expect((await verify(await sign(keyA))).ok).toBe(true);
    expect(jwks.hits).toBe(1);
  });

  it("maps v1-style claims: appid when azp is absent, sub when the caller claim is absent", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    const claims = entraClaims({ azp: undefined, oid: undefined, appid: "v1-app", roles: undefined, groups: ["only-group"] });
    const result = await verify(await sign(keyA, claims));
    expect(result).toEqual({ ok: true, token: { caller: "pairwise-subject", app: "v1-app", groups: ["only-group"] } });
  });

  it("uses the configured claims", async () => {
    const verify = createJwtVerifier(
      config(jwks.url, { callerClaim: "preferred_username", appClaims: ["client_id"], groupClaims: ["wids"] }),
    );
    const claims = entraClaims({ preferred_username: "ada@example.com", client_id: "cli", wids: ["w1", 7, "w2"] });
    const result = await verify(await sign(keyA, claims));
    expect(result).toEqual({ ok: true, token: { caller: "ada@example.com", app: "cli", groups: ["w1", "w2"] } });
  });

  it("accepts any of several issuers and audiences", async () => {
    const verify = createJwtVerifier(
      config(jwks.url, { issuer: ["https://other/", ISSUER], audience: ["x", AUDIENCE] }),
    );
    expect((await verify(await sign(keyA, entraClaims({ aud: ["y", AUDIENCE] }))))).toMatchObject({ ok: true });
  });

  it("rejects a token without a caller", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA, entraClaims({ oid: undefined, sub: undefined }))), "token names no caller");
  });

  it("rejects an expired token", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA, entraClaims({ iat: now() - 7200, nbf: now() - 7200, exp: now() - 3600 }))), "expired");
  });

  it("rejects a token that is not yet valid", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA, entraClaims({ nbf: now() + 3600, exp: now() + 7200 }))), "not yet valid");
  });

  it("allows clock skew within clockToleranceSec, and no more", async () => {
    const verify = createJwtVerifier(config(jwks.url, { clockToleranceSec: 60 }));
    expect((await verify(await sign(keyA, entraClaims({ exp: now() - 30 })))).ok).toBe(true);
    expect((await verify(await sign(keyA, entraClaims({ nbf: now() + 30 })))).ok).toBe(true);
    expectFailure(await verify(await sign(keyA, entraClaims({ exp: now() - 90 }))), "expired");
    expectFailure(await verify(await sign(keyA, entraClaims({ nbf: now() + 90 }))), "not yet valid");
    const strict = createJwtVerifier(config(jwks.url, { clockToleranceSec: 0 }));
    expectFailure(await strict(await sign(keyA, entraClaims({ exp: now() - 30 }))), "expired");
  });

  it("rejects a token without exp", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA, entraClaims({ exp: undefined }))), "missing exp claim");
  });

  it("rejects a wrong issuer", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA, entraClaims({ iss: "https://login.microsoftonline.com/evil/v2.0" }))), "wrong issuer");
    expectFailure(await verify(await sign(keyA, entraClaims({ iss: undefined }))), "missing issuer");
  });

  it("rejects a wrong audience", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA, entraClaims({ aud: "api://someone-else" }))), "wrong audience");
  });

  it("never accepts alg: none, and does not fetch keys for it", async () => {
    const verify = createJwtVerifier(config(jwks.url, { algorithms: ["RS256", "none"] }));
    for (const alg of ["none", "None", "NONE"]) {
      const unsigned = `${b64url(JSON.stringify({ alg, typ: "JWT" }))}.${b64url(JSON.stringify(entraClaims()))}.`;
      expectFailure(await verify(unsigned), "unsigned token");
    }
    expect(jwks.hits).toBe(0);
  });

  it("rejects an HS256 token signed with the RSA public key's bytes", async () => {
    const pem = await exportSPKI(keyA.publicKey);
    const jwkBytes = new TextEncoder().encode(JSON.stringify(keyA.jwk));
    for (const secret of [new TextEncoder().encode(pem), jwkBytes]) {
      const forged = await new SignJWT(entraClaims()).setProtectedHeader({ alg: "HS256", typ: "JWT", kid: keyA.kid }).sign(secret);
      expectFailure(await createJwtVerifier(config(jwks.url))(forged), "algorithm not allowed");
      // Even a config that lists HS256 does not accept it: HMAC never verifies against a public JWKS.
      const lax = createJwtVerifier(config(jwks.url, { algorithms: ["RS256", "HS256"] }));
      expect(await lax(forged)).toMatchObject({ ok: false });
    }
    expect(jwks.hits).toBe(0);
  });

  it("rejects a signature made by another key under a known kid", async () => {
    const impostor = await makeKey(keyA.kid);
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(impostor)), "bad signature");
  });

  it("rejects a token whose payload was altered after signing", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    const [h, , s] = (await sign(keyA)).split(".");
    const altered = `${h}.${b64url(JSON.stringify(entraClaims({ roles: ["Admin"] })))}.${s}`;
    expectFailure(await verify(altered), "bad signature");
  });

  it("rejects an algorithm outside config.algorithms", async () => {
    const { privateKey } = await generateKeyPair("ES256");
    const token = await new SignJWT(entraClaims()).setProtectedHeader({ alg: "ES256", kid: "ec" }).sign(privateKey);
    expectFailure(await createJwtVerifier(config(jwks.url))(token), "algorithm not allowed");
    expect(jwks.hits).toBe(0);
  });

  it("unknown kid: refetches the JWKS at most once per cooldown", async () => {
    const stranger = await makeKey("key-unknown");
    const verify = createJwtVerifier(config(jwks.url), { cooldownMs: 300 });
    expect((await verify(await sign(keyA))).ok).toBe(true);
    expect(jwks.hits).toBe(1);

    // Within the cooldown of that fetch: no refetch at all.
    for (let i = 0; i < 5; i++) expectFailure(await verify(await sign(stranger)), "unknown signing key");
    expect(jwks.hits).toBe(1);

    // After the cooldown: the first unknown kid refetches once; the rest ride on that fetch.
    await sleep(350);
    for (let i = 0; i < 5; i++) expectFailure(await verify(await sign(stranger)), "unknown signing key");
    expect(jwks.hits).toBe(2);

    // Concurrent unknown kids after the cooldown share one fetch.
    await sleep(350);
    const results = await Promise.all(Array.from({ length: 10 }, async () => verify(await sign(stranger))));
    for (const r of results) expectFailure(r, "unknown signing key");
    expect(jwks.hits).toBe(3);

    // Known keys keep working from the cache throughout.
    expect((await verify(await sign(keyA))).ok).toBe(true);
    expect(jwks.hits).toBe(3);
  });

  it("unknown kid with the default cooldown (30 s): no refetch right after a fetch", async () => {
    const stranger = await makeKey("key-unknown");
    const verify = createJwtVerifier(config(jwks.url));
    expect((await verify(await sign(keyA))).ok).toBe(true);
    for (let i = 0; i < 20; i++) expectFailure(await verify(await sign(stranger)), "unknown signing key");
    expect(jwks.hits).toBe(1);
  });

  it("picks up a key rotated into the JWKS after start on its first use", async () => {
    const verify = createJwtVerifier(config(jwks.url), { cooldownMs: 200 });
    expect((await verify(await sign(keyA))).ok).toBe(true);
    expect(jwks.hits).toBe(1);

    jwks.keys = [keyA.jwk, keyB.jwk]; // the IdP publishes the next key…
    await sleep(250);
    const result = await verify(await sign(keyB, entraClaims({ oid: "rotated-caller" })));
    expect(result).toMatchObject({ ok: true, token: { caller: "rotated-caller" } });
    expect(jwks.hits).toBe(2);

    jwks.keys = [keyB.jwk]; // …and retires the old one: the cache still holds it until refreshed.
    expect((await verify(await sign(keyB))).ok).toBe(true);
    expect(jwks.hits).toBe(2);
  });

  it("refetches the key set once it is older than cacheMaxAge, and drops retired keys", async () => {
    const verify = createJwtVerifier(config(jwks.url), { cacheMaxAgeMs: 200, cooldownMs: 100 });
    expect((await verify(await sign(keyA))).ok).toBe(true);
    jwks.keys = [keyB.jwk];
    await sleep(250);
    expectFailure(await verify(await sign(keyA)), "unknown signing key");
    expect(jwks.hits).toBe(2);
    expect((await verify(await sign(keyB))).ok).toBe(true);
    expect(jwks.hits).toBe(2);
  });

  it("tries every candidate key when the token and the JWKS carry no kid", async () => {
    const k1 = await makeKey("k1", false);
    const k2 = await makeKey("k2", false);
    jwks.keys = [k1.jwk, k2.jwk];
    const verify = createJwtVerifier(config(jwks.url));
    expect((await verify(await sign(k2))).ok).toBe(true);
    expect((await verify(await sign(k1))).ok).toBe(true);
    const k3 = await makeKey("k3", false);
    expectFailure(await verify(await sign(k3)), "bad signature");
  });

  it("fails closed when the JWKS endpoint is down", async () => {
    const verify = createJwtVerifier(config(`http://127.0.0.1:${await closedPort()}/keys`));
    const token = await sign(keyA);
    expectFailure(await verify(token), "signing keys unavailable");
    expectFailure(await verify(token), "signing keys unavailable");
  });

  it("fails closed on a JWKS error status, backs off, then recovers", async () => {
    jwks.status = 503;
    const verify = createJwtVerifier(config(jwks.url), { failureBackoffMs: 300 });
    const token = await sign(keyA);
    expectFailure(await verify(token), "signing keys unavailable");
    expect(jwks.hits).toBe(1);
    // Within the back-off window: refused without hammering the IdP.
    for (let i = 0; i < 5; i++) expectFailure(await verify(token), "signing keys unavailable");
    expect(jwks.hits).toBe(1);

    jwks.status = 200;
    await sleep(350);
    expect((await verify(token)).ok).toBe(true);
    expect(jwks.hits).toBe(2);
  });

  it("fails closed on a JWKS that is not a key set", async () => {
    jwks.keys = "not keys" as unknown as JWK[];
    const verify = createJwtVerifier(config(jwks.url));
    expectFailure(await verify(await sign(keyA)), "signing keys unavailable");
  });

  it("fails closed when the JWKS fetch times out", async () => {
    const hang = createServer(() => {
      /* never answers */
    });
    await new Promise<void>((resolve) => hang.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = hang.address() as AddressInfo;
      const verify = createJwtVerifier(config(`http://127.0.0.1:${port}/keys`), { timeoutMs: 200 });
      const started = Date.now();
      expectFailure(await verify(await sign(keyA)), "signing keys unavailable");
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      hang.closeAllConnections();
      await new Promise<void>((resolve) => hang.close(() => resolve()));
    }
  });

  it("rejects garbage without fetching keys", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    for (const junk of ["", "garbage", "a.b.c", "sk-abc.def.ghi", "eyJhbGciOiJSUzI1NiJ9..", "x.y", "a.b.c.d.e", "!!!.???.***"]) {
      expectFailure(await verify(junk), "malformed token");
    }
    // A well-formed header whose payload is not JSON: the signature check fails first.
    const h = b64url(JSON.stringify({ alg: "RS256", kid: keyA.kid }));
    expect(await verify(`${h}.${b64url("not json")}.${b64url("sig")}`)).toMatchObject({ ok: false });
    expect(jwks.hits).toBe(1);
  });

  it("rejects a 100 KB token before any parsing or JWKS fetch", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    const huge = await sign(keyA, entraClaims({ groups: Array.from({ length: 4000 }, (_, i) => `group-${i}-padding`) }));
    expect(huge.length).toBeGreaterThan(100_000);
    expectFailure(await verify(huge), "token too large");
    expectFailure(await verify("x".repeat(100 * 1024)), "token too large");
    expect(jwks.hits).toBe(0);
    // Just under the limit is still parsed.
    const big = await sign(keyA, entraClaims({ groups: Array.from({ length: 400 }, (_, i) => `g${i}`) }));
    expect(big.length).toBeLessThan(16 * 1024);
    expect((await verify(big)).ok).toBe(true);
  });

  it("allowedApps: other applications are forbidden (403), listed ones pass", async () => {
    const verify = createJwtVerifier(config(jwks.url, { allowedApps: [CLIENT_APP] }));
    expect((await verify(await sign(keyA))).ok).toBe(true);
    expect(await verify(await sign(keyA, entraClaims({ azp: "some-other-app" })))).toEqual({
      ok: false,
      reason: "application not allowed",
      forbidden: true,
    });
    expect(await verify(await sign(keyA, entraClaims({ azp: undefined })))).toEqual({
      ok: false,
      reason: "application not allowed",
      forbidden: true,
    });
    // An invalid token is still a 401, not a 403, whatever its app.
    const bad = await verify(await sign(keyA, entraClaims({ azp: "some-other-app", exp: now() - 3600 })));
    expect(bad).toEqual({ ok: false, reason: "expired" });
  });

  it("never echoes the token in a failure reason", async () => {
    const verify = createJwtVerifier(config(jwks.url));
    const tokens = [
      await sign(keyA, entraClaims({ iss: "https://evil/" })),
      await sign(await makeKey("nope")),
      "abc.def.ghi",
    ];
    for (const t of tokens) {
      const r = await verify(t);
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.reason.length).toBeLessThan(40);
        for (const part of t.split(".")) expect(r.reason).not.toContain(part);
      }
    }
  });
});

describe("looksLikeJwt", () => {
  it("recognises compact JWTs", async () => {
    const key = await makeKey("k");
    expect(looksLikeJwt(await sign(key))).toBe(true);
    const unsigned = `${b64url(JSON.stringify({ alg: "none" }))}.${b64url("{}")}.`;
    expect(looksLikeJwt(unsigned)).toBe(true);
  });

  it("rejects API keys and other non-JWTs", () => {
    const h = b64url(JSON.stringify({ alg: "RS256" }));
    const noAlg = b64url(JSON.stringify({ typ: "JWT" }));
    for (const value of [
      "sk-proj-0123456789abcdefABCDEF",
      "sk-abc.def.ghi",
      "",
      "abc",
      "a.b.c",
      `${h}.payload`,
      `${h}.payload.sig.extra`,
      `${h}.a.b.c.d`, // JWE-shaped
      `${noAlg}.e30.sig`,
      `${b64url("not json")}.e30.sig`,
      `${b64url("[1,2]")}.e30.sig`,
      `${h}..sig`,
      `${h}.pay load.sig`,
      `${h}.e30.sig==`,
    ]) {
      expect(looksLikeJwt(value), value).toBe(false);
    }
  });
});
