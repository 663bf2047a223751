/**
 * `backends[].auth: { type: "managed-identity" }` short of the network: what the config accepts
 * and refuses, the Workers refusal, the Node factory's shared token caches, and that a runtime
 * without managed identity fails such a backend's attempts over instead of sending no credentials.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { nodeCredentials, type TokenSource } from "../../adapters/node/managed-identity.ts";
import { workersConfigProblems } from "../../adapters/cloudflare/config-check.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { configCredentials } from "../../src/credentials/from-config.ts";
import { CredentialsUnavailable } from "../../src/credentials/port.ts";
import { createGateway } from "../../src/gateway.ts";
import type { UpstreamFetch } from "../../src/proxy/attempt.ts";
import type { HeaderPairs } from "../../src/types.ts";

const withAuth = (auth: unknown, extra: Record<string, unknown> = {}) => ({ metering: { sinks: [] }, backends: [{ name: "a", url: "http://a.test", auth, ...extra }] });
const refusal = (auth: unknown) => {
  try {
    parseConfig(withAuth(auth));
  } catch (err) {
    return (err as Error).message;
  }
  return "accepted";
};

describe("config: auth type managed-identity", () => {
  it("defaults the scope to Azure OpenAI's; takes a user-assigned client id and another scope", () => {
    expect(parseConfig(withAuth({ type: "managed-identity" })).backends[0]!.auth).toEqual({ type: "managed-identity", scope: "https://cognitiveservices.azure.com/.default" });
    const auth = { type: "managed-identity", clientId: "1B4E28BA-2FA1-41D2-883F-0016D3CCA427", scope: "api://5f0c4b0e-1111-4222-8333-944445555666/.default" };
    expect(parseConfig(withAuth(auth)).backends[0]!.auth).toEqual(auth);
  });

  it("refuses unknown keys, a scope that is not a URI and a client id that is not a GUID, naming the field", () => {
    expect(refusal({ type: "managed-identity", client_id: "x" })).toMatch(/backends\[0\]\.auth: Unrecognized key: "client_id"/);
    expect(refusal({ type: "managed-identity", scope: "cognitiveservices.azure.com" })).toMatch(/backends\[0\]\.auth\.scope: a scope is a URI/);
    expect(refusal({ type: "managed-identity", scope: "https:// spaced/.default" })).toMatch(/backends\[0\]\.auth\.scope/);
    expect(refusal({ type: "managed-identity", clientId: "my-identity" })).toMatch(/backends\[0\]\.auth\.clientId: a client id is a GUID/);
    expect(refusal({ type: "managed-identity", clientId: "1b4e28ba2fa141d2883f0016d3cca427" })).toMatch(/backends\[0\]\.auth\.clientId/);
    expect(refusal({ type: "managed_identity" })).toMatch(/backends\[0\]\.auth/);
  });
});

describe("Workers: a managed-identity backend is refused when the Worker loads the config", () => {
  it("names the backend and the field, and says what to use instead", () => {
    const config = parseConfig({ metering: { sinks: [] }, backends: [{ name: "keyed", url: "http://k.test", auth: { type: "api-key", key: "k" } }, { name: "aoai", url: "http://a.test", auth: { type: "managed-identity" } }] });
    const problems = workersConfigProblems(config);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^backends\[1\]\.auth: backend "aoai" uses "managed-identity", which is not available on Workers .*"api-key" or "bearer"/);
  });

  it("has nothing to say of keys, bearer tokens and no auth; still refuses jobs.store", () => {
    const config = parseConfig({ metering: { sinks: [] }, backends: [{ name: "a", url: "http://a.test", auth: { type: "bearer", token: "t" } }, { name: "b", url: "http://b.test" }] });
    expect(workersConfigProblems(config)).toEqual([]);
    const jobs = parseConfig({ metering: { sinks: [] }, jobs: { store: { type: "directory", path: "/tmp/j" } }, backends: [{ name: "a", url: "http://a.test" }] });
    expect(workersConfigProblems(jobs)[0]).toMatch(/^jobs\.store: .*not available on Workers/);
  });
});

describe("the Node credentials factory", () => {
  const factories: { close(): void }[] = [];
  afterEach(() => {
    for (const f of factories.splice(0)) f.close();
  });

  function counting() {
    const made: (string | undefined)[] = [];
    const asked: string[] = [];
    let n = 0;
    const source = async (clientId: string | undefined): Promise<TokenSource> => {
      made.push(clientId);
      return {
        getToken: async (scope) => {
          asked.push(`${clientId ?? "system"} ${scope}`);
          return { token: `tok-${++n}`, expiresOnTimestamp: Date.now() + 3_600_000 };
        },
      };
    };
    const creds = nodeCredentials(source);
    factories.push(creds);
    return { creds, made, asked };
  }

  it("makes no identity credential for a config without managed identity", () => {
    const { creds, made } = counting();
    const config = parseConfig({ metering: { sinks: [] }, backends: [{ name: "a", url: "http://a.test", kind: "azure-openai", auth: { type: "api-key", key: "k" } }] });
    const out: HeaderPairs = [];
    creds.factory(config.backends[0]!).apply(out);
    expect(out).toEqual([["api-key", "k"]]);
    expect(made).toEqual([]);
  });

  it("one token cache per identity and scope, shared by backends and by config versions", async () => {
    const { creds, made, asked } = counting();
    const input: SluiceConfigInput = {
      metering: { sinks: [] },
      backends: [
        { name: "a", url: "http://a.test", auth: { type: "managed-identity" } },
        { name: "b", url: "http://b.test", auth: { type: "managed-identity" } },
        { name: "c", url: "http://c.test", auth: { type: "managed-identity", clientId: "1b4e28ba-2fa1-41d2-883f-0016d3cca427" } },
        { name: "d", url: "http://d.test", auth: { type: "managed-identity", clientId: "1B4E28BA-2FA1-41D2-883F-0016D3CCA427", scope: "api://other/.default" } },
      ],
    };
    const providers = [...parseConfig(input).backends, ...parseConfig(input).backends].map((b) => creds.factory(b));
    await Promise.all(providers.map((p) => p.ready()));
    expect(made.sort()).toEqual([undefined, "1b4e28ba-2fa1-41d2-883f-0016d3cca427"].sort());
    expect(asked.sort()).toEqual(["1b4e28ba-2fa1-41d2-883f-0016d3cca427 api://other/.default", "1b4e28ba-2fa1-41d2-883f-0016d3cca427 https://cognitiveservices.azure.com/.default", "system https://cognitiveservices.azure.com/.default"]);
    const headerOf = (i: number) => {
      const out: HeaderPairs = [];
      providers[i]!.apply(out);
      return out[0]![1];
    };
    // a, b and their next versions: one token.
    expect(new Set([headerOf(0), headerOf(1), headerOf(4), headerOf(5)]).size).toBe(1);
    expect(headerOf(2)).not.toBe(headerOf(0));
    expect(headerOf(3)).not.toBe(headerOf(2));
  });

  it("a credential that cannot be made (the SDK fails to load) is a failed fetch: ready rejects, tried again later", async () => {
    const errors = vi.spyOn(console, "error").mockImplementation(() => undefined);
    try {
      const creds = nodeCredentials(async () => {
        throw new Error("Cannot find package '@azure/identity'");
      });
      factories.push(creds);
      const p = creds.factory(parseConfig(withAuth({ type: "managed-identity" })).backends[0]!);
      await expect(p.ready()).rejects.toThrow(/no token: Cannot find package '@azure\/identity'/);
    } finally {
      errors.mockRestore();
    }
  });
});

describe("a runtime without managed identity (the core's default credentials)", () => {
  it("refuses the credentials instead of sending none", async () => {
    const p = configCredentials(parseConfig(withAuth({ type: "managed-identity" })).backends[0]!);
    await expect(p.ready()).rejects.toThrow(CredentialsUnavailable);
    const out: HeaderPairs = [];
    p.apply(out);
    expect(out).toEqual([]);
  });

  it("fails the attempt over to the next backend, which answers; the breaker of the first is not opened", async () => {
    const sent: string[] = [];
    const upstream: UpstreamFetch = async (url) => {
      sent.push(url);
      return { status: 200, headers: new Headers({ "content-type": "application/json" }), body: null, wholeBody: new TextEncoder().encode('{"id":"c","object":"chat.completion","choices":[]}') };
    };
    const gw = createGateway({
      config: parseConfig({
        metering: { sinks: [] },
        resilience: { breaker: { failureThreshold: 1 } },
        backends: [
          { name: "mi", url: "http://mi.test", models: ["gpt-4o"], group: 1, auth: { type: "managed-identity" } },
          { name: "key", url: "http://key.test", models: ["gpt-4o"], group: 2, auth: { type: "api-key", key: "k" } },
        ],
      }),
      upstream,
    });
    for (let i = 0; i < 3; i++) {
      const r = await gw.fetch(new Request("http://gw.test/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" }, body: '{"model":"gpt-4o","messages":[]}' }));
      expect(r.status).toBe(200);
      expect(r.headers.get("x-sluice-backend")).toBe("key");
      expect(r.headers.get("x-sluice-attempts")).toBe("2");
    }
    expect(sent.every((u) => u.startsWith("http://key.test"))).toBe(true);
    const stats = (await gw.scheduler.stats()).backends.find((b) => b.name === "mi")!;
    expect(stats.breaker).toBe("closed");
  });
});
