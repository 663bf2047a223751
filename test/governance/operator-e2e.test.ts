/**
 * The gateway's own endpoints once inbound auth is on (issue 11 #4), over real sockets: an
 * operator key or a JWT carrying an operator group opens them; callers and strangers do not;
 * the probes stay open; with server.operatorPort they are served on that listener only.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { afterEach, describe, expect, it } from "vitest";
import { startGatewayServer, type RunningGateway } from "../../adapters/node/server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";

const hash = async (k: string) => `sha256:${Buffer.from(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(k))).toString("hex")}`;
const OPS = ["/metrics", "/_gateway/health"];
const PROBES = ["/liveness", "/readiness", "/startup"];

let closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  closers = [];
});

async function start(input: Partial<SluiceConfigInput>, operatorPort?: number): Promise<RunningGateway> {
  const running = await startGatewayServer(parseConfig({ metering: { sinks: [] }, backends: [{ name: "b", url: "http://127.0.0.1:9" }], ...input }), {
    host: "127.0.0.1",
    port: 0,
    ...(operatorPort === undefined ? {} : { operatorPort }),
  });
  closers.push(() => running.close(0));
  return running;
}

const status = async (url: string, headers: Record<string, string> = {}) => (await fetch(url, { headers })).status;

describe("operator endpoints", () => {
  it("with API keys on: an operator key opens them, a caller's key is 403, none or a wrong one 401; the probes stay open", async () => {
    const gw = await start({ auth: { apiKeys: [{ hash: await hash("caller-key"), caller: "c" }], operator: { apiKeys: [{ hash: await hash("ops-key"), name: "oncall" }] } } });
    for (const path of OPS) {
      expect(await status(gw.url + path), path).toBe(401);
      expect(await status(gw.url + path, { "api-key": "wrong" }), path).toBe(401);
      expect(await status(gw.url + path, { "api-key": "caller-key" }), path).toBe(403);
      expect(await status(gw.url + path, { "api-key": "ops-key" }), path).toBe(200);
      expect(await status(gw.url + path, { authorization: "Bearer ops-key" }), path).toBe(200);
    }
    for (const path of PROBES) expect(await status(gw.url + path), path).not.toBe(401);
    const metrics = await (await fetch(`${gw.url}/metrics`, { headers: { "api-key": "ops-key" } })).text();
    expect(metrics).toContain("sluice_requests_total");
  });

  it("with auth on and no operator configured, nobody gets them", async () => {
    const gw = await start({ auth: { apiKeys: [{ hash: await hash("caller-key"), caller: "c" }] } });
    for (const path of OPS) expect(await status(gw.url + path, { "api-key": "caller-key" })).toBe(403);
  });

  it("an open gateway (no inbound auth) serves them to anyone, as documented", async () => {
    const gw = await start({});
    for (const path of OPS) expect(await status(gw.url + path)).toBe(200);
  });

  it("a JWT with an operator group opens them; one without is 403", async () => {
    const pair = await generateKeyPair("RS256", { extractable: true });
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: "k1", alg: "RS256", use: "sig" };
    const jwks: Server = createServer((_q, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] })));
    await new Promise<void>((r) => jwks.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise((r) => jwks.close(r)));
    const issuer = "https://issuer.test/";
    const gw = await start({
      auth: { jwt: { jwksUrl: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/keys`, issuer, audience: "api://sluice" }, operator: { groups: ["Sluice.Operator"] } },
    });
    const token = (roles: string[]) =>
      new SignJWT({ oid: "u", roles }).setProtectedHeader({ alg: "RS256", kid: "k1" }).setIssuer(issuer).setAudience("api://sluice").setIssuedAt().setExpirationTime("5m").sign(pair.privateKey);
    expect(await status(`${gw.url}/metrics`, { authorization: `Bearer ${await token(["Sluice.Operator"])}` })).toBe(200);
    expect(await status(`${gw.url}/metrics`, { authorization: `Bearer ${await token(["Sluice.User"])}` })).toBe(403);
  });

  it("with server.operatorPort they are served on that listener only", async () => {
    const gw = await start({ auth: { apiKeys: [{ hash: await hash("caller-key"), caller: "c" }], operator: { apiKeys: [{ hash: await hash("ops-key"), name: "oncall" }] } } }, 0);
    expect(gw.operatorUrl).toBeDefined();
    for (const path of OPS) {
      expect(await status(gw.url + path, { "api-key": "ops-key" }), `${path} on the main listener`).toBe(404);
      expect(await status(gw.operatorUrl! + path, { "api-key": "ops-key" }), `${path} on the operator listener`).toBe(200);
      expect(await status(gw.operatorUrl! + path), `${path} still needs a credential`).toBe(401);
    }
    expect(await status(`${gw.url}/liveness`)).toBe(200);
  });
});
