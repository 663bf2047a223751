import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import { startNodeGateway } from "../harness/node.ts";
import type { GatewayUnderTest } from "../harness/types.ts";

const ISSUER = "https://login.microsoftonline.com/tenant-1/v2.0";
const AUDIENCE = "api://sluice";

/** Entra ID bearer tokens end to end on Node: the gateway maps the caller, refuses bad tokens with 401, and no backend sees them. */
describe("JWT bearer tokens through the gateway [node]", () => {
  let sim: RunningSimulator;
  let gw: GatewayUnderTest;
  let jwks: Server;
  let key: { privateKey: CryptoKey; jwk: JWK };
  let otherKey: CryptoKey;

  beforeAll(async () => {
    const pair = await generateKeyPair("RS256", { extractable: true });
    key = { privateKey: pair.privateKey, jwk: { ...(await exportJWK(pair.publicKey)), kid: "k1", alg: "RS256", use: "sig" } };
    otherKey = (await generateKeyPair("RS256")).privateKey;
    jwks = createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [key.jwk] })));
    await new Promise<void>((r) => jwks.listen(0, "127.0.0.1", r));
    sim = await startSimulator({ name: "b1" });
    gw = await startNodeGateway({
      backends: [{ name: "b1", url: sim.url, models: ["gpt-4o", "o3"] }],
      auth: {
        jwt: { jwksUrl: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/keys`, issuer: ISSUER, audience: AUDIENCE },
        groupProfiles: { "Sluice.Batch": "batch" },
        forwardIdentity: true,
      },
      profiles: { batch: { models: ["gpt-4o"], maxPriority: "low" } },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await sim?.close();
    jwks?.closeAllConnections();
    await new Promise((r) => jwks?.close(r));
  });
  beforeEach(() => sim.sim.reset());

  const token = (claims: Record<string, unknown> = {}, opts: { kid?: string; signWith?: CryptoKey; exp?: string } = {}) =>
    new SignJWT({ oid: "user-1", azp: "app-1", roles: ["Sluice.Batch"], ...claims })
      .setProtectedHeader({ alg: "RS256", kid: opts.kid ?? "k1" })
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(opts.exp ?? "10m")
      .sign(opts.signWith ?? key.privateKey);

  const chat = (bearer: string, model = "gpt-4o") =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json", "x-priority": "high" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
    });

  it("a valid token → 200, the caller and app mapped from its claims, its group's profile applied", async () => {
    const r = await chat(await token());
    expect(r.status, await r.clone().text()).toBe(200);
    const seen = sim.sim.stats().requests[0]!;
    expect(seen.headers["x-sluice-caller"]).toBe("user-1");
    expect(seen.headers["x-sluice-app"]).toBe("app-1");
    expect(seen.headers["x-sluice-groups"]).toBe("Sluice.Batch");
    expect(seen.headers.authorization, "the client's token never reaches the backend").toBeUndefined();
    // The batch profile: o3 is not allowed (403), and nothing is sent.
    expect((await chat(await token(), "o3")).status).toBe(403);
    expect(sim.sim.stats().received).toBe(1);
  });

  it("expired, wrong issuer, wrong audience, wrong key, unknown kid, alg none, garbage, 100 KB → 401 and the backend counts nothing", async () => {
    const unsigned = `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${Buffer.from(JSON.stringify({ oid: "x", iss: ISSUER, aud: AUDIENCE, exp: Math.floor(Date.now() / 1000) + 600 })).toString("base64url")}.`;
    const bad = [
      await token({}, { exp: "-5m" }),
      await new SignJWT({ oid: "x" }).setProtectedHeader({ alg: "RS256", kid: "k1" }).setIssuer("https://evil.example").setAudience(AUDIENCE).setExpirationTime("10m").sign(key.privateKey),
      await new SignJWT({ oid: "x" }).setProtectedHeader({ alg: "RS256", kid: "k1" }).setIssuer(ISSUER).setAudience("api://other").setExpirationTime("10m").sign(key.privateKey),
      await token({}, { signWith: otherKey }),
      await token({}, { kid: "not-in-jwks" }),
      unsigned,
      "eyJhbGciOiJSUzI1NiJ9.garbage.garbage",
      `eyJhbGciOiJSUzI1NiJ9.${"A".repeat(100_000)}.sig`,
    ];
    for (const t of bad) {
      const r = await chat(t);
      expect(r.status, t.slice(0, 40)).toBe(401);
      expect((await r.json()).error.code).toBe("invalid_token");
    }
    expect(sim.sim.stats().received).toBe(0);
  });
});
