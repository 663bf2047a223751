/**
 * `auth: { type: "managed-identity" }` end to end on Node: the real gateway (startGatewayServer),
 * the real @azure/identity ManagedIdentityCredential, simulator backends, and a fake identity
 * endpoint on 127.0.0.1 speaking the App Service / Container Apps protocol (api-version
 * 2019-08-01) that the SDK picks when IDENTITY_ENDPOINT and IDENTITY_HEADER are set:
 *
 *   GET ${IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<scope without /.default>[&client_id=<id>]
 *   X-IDENTITY-HEADER: ${IDENTITY_HEADER}
 *   → 200 { access_token, expires_on: "<epoch seconds>", resource, token_type: "Bearer" }
 *
 * Two things about @azure/identity 4.13 (its MSAL managed-identity client) shape this file:
 * - The token source and the endpoint are chosen once per process, on the first token request: one
 *   fake endpoint serves the whole file, and the test that closes it runs last.
 * - MSAL caches tokens process-wide and serves a cached one while it has more than 5 minutes
 *   left. The fake endpoint's tokens live 2 minutes or less, so every getToken reaches it (what
 *   the gateway's own cache asks for is what the endpoint sees), and each test uses a scope of its own.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { chatBody, closeAfterEach, eventedGateway, post, sim } from "../harness/e2e.ts";
import { until } from "../harness/until.ts";

closeAfterEach();

interface TokenRequest {
  resource: string | null;
  apiVersion: string | null;
  clientId: string | null;
  identityHeader: string | undefined;
  at: number;
  token: string;
  /** When the token it was given expires, epoch ms. */
  expiresAt: number;
}

/** A fake managed-identity endpoint (App Service 2019-08-01): every request gets a new token. */
class FakeIdentityEndpoint {
  readonly requests: TokenRequest[] = [];
  /** Lifetime of the tokens it gives, by resource (default 120 s). */
  readonly lifetimeS = new Map<string, number>();
  private issued = 0;
  private constructor(
    readonly server: Server,
    readonly url: string,
  ) {}

  static async start(): Promise<FakeIdentityEndpoint> {
    let self: FakeIdentityEndpoint | undefined;
    const server = createServer((req, res) => self!.answer(req.url ?? "/", req.headers["x-identity-header"] as string | undefined, res));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    self = new FakeIdentityEndpoint(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}/msi/token`);
    return self;
  }

  /** Token requests for one resource (a scope without /.default). */
  for(resource: string): TokenRequest[] {
    return this.requests.filter((r) => r.resource === resource);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private answer(target: string, identityHeader: string | undefined, res: import("node:http").ServerResponse): void {
    const url = new URL(target, "http://x");
    const resource = url.searchParams.get("resource");
    const expiresOn = Math.floor(Date.now() / 1000) + (this.lifetimeS.get(resource ?? "") ?? 120);
    const token = `mi-token-${++this.issued}`;
    this.requests.push({ resource, apiVersion: url.searchParams.get("api-version"), clientId: url.searchParams.get("client_id"), identityHeader, at: Date.now(), token, expiresAt: expiresOn * 1000 });
    if (url.pathname !== "/msi/token" || identityHeader !== IDENTITY_HEADER) {
      res.writeHead(401, { "content-type": "application/json" }).end(JSON.stringify({ statusCode: 401, message: "bad identity header" }));
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ access_token: token, expires_on: String(expiresOn), resource, token_type: "Bearer" }));
  }
}

const IDENTITY_HEADER = "sluice-test-identity-header";
/** What the SDK reads to choose its token source; set for this file, restored after it. */
const ENV_KEYS = ["IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"] as const;
const savedEnv = new Map<string, string | undefined>();
let endpoint: FakeIdentityEndpoint;

beforeAll(async () => {
  endpoint = await FakeIdentityEndpoint.start();
  for (const k of ENV_KEYS) {
    savedEnv.set(k, process.env[k]);
    delete process.env[k];
  }
  process.env.IDENTITY_ENDPOINT = endpoint.url;
  process.env.IDENTITY_HEADER = IDENTITY_HEADER;
});

afterAll(async () => {
  for (const [k, v] of savedEnv) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await endpoint?.close();
});

const mi = (name: string, url: string, auth: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  name,
  url,
  kind: "azure-openai" as const,
  models: ["gpt-4o"],
  auth: { type: "managed-identity" as const, ...auth },
  ...extra,
});
const chat = (url: string, headers: Record<string, string> = {}) => post(`${url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21`, chatBody(), headers);

describe("managed identity for backends (Node, @azure/identity, a fake App Service identity endpoint)", () => {
  it("the backend gets Authorization: Bearer <the endpoint's token>, never the client's credentials; the endpoint got the 2019-08-01 request", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [mi("b", b.url)] });
    const r = await chat(gw.url, { authorization: "Bearer client-token", "api-key": "client-key" });
    expect(r.status).toBe(200);
    await r.arrayBuffer();

    const fetched = endpoint.for("https://cognitiveservices.azure.com");
    expect(fetched).toHaveLength(1);
    expect(fetched[0]).toMatchObject({ apiVersion: "2019-08-01", clientId: null, identityHeader: IDENTITY_HEADER });
    const at = b.sim.stats().requests;
    expect(at).toHaveLength(1);
    expect(at[0]!.headers.authorization).toBe(`Bearer ${fetched[0]!.token}`);
    expect(at[0]!.headers["api-key"]).toBeUndefined();
    expect(JSON.stringify(at[0]!.headers)).not.toContain("client-");
  });

  it("a user-assigned identity: the endpoint gets client_id, the backend that identity's token for the configured scope", async () => {
    const clientId = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [mi("b", b.url, { clientId, scope: "api://sluice-user-assigned/.default" })] });
    const r = await chat(gw.url);
    expect(r.status).toBe(200);
    await r.arrayBuffer();
    const fetched = endpoint.for("api://sluice-user-assigned");
    expect(fetched).toHaveLength(1);
    expect(fetched[0]!.clientId).toBe(clientId);
    expect(b.sim.stats().requests[0]!.headers.authorization).toBe(`Bearer ${fetched[0]!.token}`);
  });

  it("backends on one identity and scope share one token: one fetch for two backends", async () => {
    const b1 = await sim("b1");
    const b2 = await sim("b2");
    const gw = await eventedGateway({ routing: { strategy: "round-robin" }, backends: [mi("b1", b1.url, { scope: "api://sluice-shared/.default" }), mi("b2", b2.url, { scope: "api://sluice-shared/.default" })] });
    for (let i = 0; i < 4; i++) {
      const r = await chat(gw.url);
      expect(r.status).toBe(200);
      await r.arrayBuffer();
    }
    const fetched = endpoint.for("api://sluice-shared");
    expect(fetched).toHaveLength(1);
    expect(b1.sim.stats().received + b2.sim.stats().received).toBe(4);
    for (const req of [...b1.sim.stats().requests, ...b2.sim.stats().requests]) expect(req.headers.authorization).toBe(`Bearer ${fetched[0]!.token}`);
  });

  it("a short-lived token is renewed in the background before it expires: no request fails, and none carries an expired token", async () => {
    const resource = "api://sluice-renew";
    // A 5 s token is renewed at half its lifetime (the renewal margin is min(5 min, lifetime / 2)).
    endpoint.lifetimeS.set(resource, 5);
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [mi("b", b.url, { scope: `${resource}/.default` })] });
    const first = await chat(gw.url);
    expect(first.status).toBe(200);
    await first.arrayBuffer();
    // The renewal comes by itself, with no request to prompt it.
    const fetchesBefore = endpoint.for(resource).length;
    await until("the background renewal", () => endpoint.for(resource).length > fetchesBefore, 6_000);
    const second = await chat(gw.url);
    expect(second.status).toBe(200);
    await second.arrayBuffer();

    const fetched = endpoint.for(resource);
    // Each renewal reached the endpoint before the token it replaces expired.
    for (let i = 1; i < fetched.length; i++) expect(fetched[i]!.at).toBeLessThan(fetched[i - 1]!.expiresAt);
    const seen = b.sim.stats().requests.map((req) => ({ token: req.headers.authorization?.replace(/^Bearer /, ""), at: req.at }));
    expect(seen).toHaveLength(2);
    const index = seen.map((s) => fetched.findIndex((f) => f.token === s.token));
    expect(index.every((i) => i >= 0)).toBe(true);
    // The second request carries a newer token than the first, and no request carried an expired one.
    expect(index[1]!).toBeGreaterThan(index[0]!);
    for (let i = 0; i < seen.length; i++) expect(seen[i]!.at).toBeLessThan(fetched[index[i]!]!.expiresAt);
    expect(gw.events().map((e) => [e.status, e.attempts])).toEqual([
      [200, 1],
      [200, 1],
    ]);
  });

  it("a backend 401 makes the gateway fetch one new token and retry once on the same backend, which succeeds", async () => {
    const resource = "api://sluice-401";
    const b = await sim("b");
    const other = await sim("other");
    b.sim.script([{ status: 401, body: JSON.stringify({ error: { code: "401", message: "Access token has expired or is not yet valid." } }) }]);
    const gw = await eventedGateway({ backends: [mi("b", b.url, { scope: `${resource}/.default` }, { group: 1 }), { name: "other", url: other.url, kind: "azure-openai", models: ["gpt-4o"], group: 2, auth: { type: "api-key", key: "other-key" } }] });
    await until("the first token", () => endpoint.for(resource).length === 1);
    const r = await chat(gw.url);
    expect(r.status).toBe(200);
    expect(r.headers.get("x-sluice-backend")).toBe("b");
    await r.arrayBuffer();

    const fetched = endpoint.for(resource);
    expect(fetched).toHaveLength(2);
    expect(b.sim.stats().requests.map((req) => req.headers.authorization)).toEqual([`Bearer ${fetched[0]!.token}`, `Bearer ${fetched[1]!.token}`]);
    expect(other.sim.stats().received).toBe(0);
    await until("the usage event", () => gw.events().length === 1);
    expect(gw.events()[0]).toMatchObject({ status: 200, backend: "b", attempts: 1 });
  });

  // Last: it closes the identity endpoint the SDK chose for this process.
  it("the identity endpoint down: the attempt fails over to a key-auth backend (200 there), the reason is logged, nothing hangs", async () => {
    const errors = vi.spyOn(console, "error").mockImplementation(() => undefined);
    try {
      await endpoint.close();
      const resource = "api://sluice-down";
      const b = await sim("b");
      const key = await sim("key");
      const gw = await eventedGateway({
        backends: [
          mi("b", b.url, { scope: `${resource}/.default` }, { group: 1, models: ["gpt-4o", "gpt-4o-mi-only"] }),
          { name: "key", url: key.url, kind: "azure-openai", models: ["gpt-4o"], group: 2, auth: { type: "api-key", key: "key-2" } },
        ],
      });
      for (let i = 0; i < 2; i++) {
        const r = await chat(gw.url);
        expect(r.status).toBe(200);
        expect(r.headers.get("x-sluice-backend")).toBe("key");
        expect(r.headers.get("x-sluice-attempts")).toBe("2");
        await r.arrayBuffer();
      }
      // Counted at both: the identity backend never got a request without a token, the key backend got both with its key.
      expect(b.sim.stats().received).toBe(0);
      expect(key.sim.stats().requests.map((req) => req.headers["api-key"])).toEqual(["key-2", "key-2"]);
      await until("two usage events", () => gw.events().length === 2);
      expect(gw.events().map((e) => [e.status, e.backend, e.attempts])).toEqual([
        [200, "key", 2],
        [200, "key", 2],
      ]);

      // A model only the identity backend serves: a 502 whose attempt names the reason.
      const only = await post(`${gw.url}/openai/deployments/gpt-4o-mi-only/chat/completions?api-version=2024-10-21`, chatBody("gpt-4o-mi-only"));
      expect(only.status).toBe(502);
      const body = (await only.json()) as { error: { attempts: { backend: string; status: number; error: string }[] } };
      expect(body.error.attempts).toHaveLength(1);
      expect(body.error.attempts[0]).toMatchObject({ backend: "b", status: 502 });
      expect(body.error.attempts[0]!.error).toMatch(/no credentials for the backend: a managed identity token \(system-assigned, scope api:\/\/sluice-down\/\.default\): no token: ManagedIdentityCredential/);
      expect(b.sim.stats().received).toBe(0);

      const logged = errors.mock.calls.map((c) => String(c[0]));
      expect(logged.some((l) => /fetching a managed identity token \(system-assigned, scope api:\/\/sluice-down\/\.default\) failed/.test(l))).toBe(true);
      // The gateway still answers.
      expect((await fetch(`${gw.url}/liveness`)).status).toBe(200);
    } finally {
      errors.mockRestore();
    }
  });
});
