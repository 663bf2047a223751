/**
 * The request lifecycle, black-box over real sockets (issue 9's regressions): every exit of a
 * request settles — its lease goes back, its budget is settled, one usage event goes out — and
 * backend state outlives config versions. Backends are the simulator (or, where the test must
 * count requests in flight at the backend, a small counting HTTP server); the gateway is the
 * Node server; clients are the global fetch.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { chatBody, closeAfterEach, eventedGateway, onClose, post, sim } from "../harness/e2e.ts";
import { until } from "../harness/until.ts";

closeAfterEach();
const gateway = eventedGateway;
const chat = chatBody;

/** A real HTTP backend that answers every chat request after `holdMs`, counting how many it holds at once. */
async function countingBackend(holdMs: number): Promise<{ url: string; peak(): number; total(): number }> {
  let now = 0;
  let peak = 0;
  let total = 0;
  const server: Server = createServer((req, res) => {
    now++;
    total++;
    peak = Math.max(peak, now);
    req.resume();
    setTimeout(() => {
      now--;
      const body = JSON.stringify({ id: "x", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }], usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    }, holdMs);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  onClose(() => new Promise((r) => server.close(r)));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, peak: () => peak, total: () => total };
}

describe("every exit of a request settles", () => {
  it("a model name that cannot be sent (a lone surrogate) gets 400 with a request id, and the maxConcurrency: 1 backend still serves the next request", async () => {
    const b = await sim("b");
    const gw = await gateway({ backends: [{ name: "b", url: b.url, kind: "azure-openai", models: ["*"], maxConcurrency: 1 }] });
    const bad = await post(`${gw.url}/v1/chat/completions`, '{"model":"\\ud800","messages":[]}');
    expect(bad.status).toBe(400);
    expect(bad.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    expect((await bad.json()).error.code).toBe("invalid_model");
    const good = await post(`${gw.url}/v1/chat/completions`, chat(), { "s7pttl": "2" });
    expect(good.status).toBe(200);
    await good.arrayBuffer();
    expect(b.sim.stats().requests).toHaveLength(1);
    await until("usage events", () => gw.events().length === 2);
    expect(gw.events().map((e) => e.status)).toEqual([400, 200]);
  });

  it("an apim backend: the same, and nothing reaches the backend for the bad request", async () => {
    const b = await sim("b");
    const gw = await gateway({ backends: [{ name: "b", url: b.url, kind: "apim", models: ["*"], maxConcurrency: 1 }] });
    expect((await post(`${gw.url}/openai/v1/chat/completions`, '{"model":"a\\udc00b","messages":[]}')).status).toBe(400);
    const good = await post(`${gw.url}/openai/v1/chat/completions`, chat());
    expect(good.status).toBe(200);
    await good.arrayBuffer();
    expect(b.sim.stats().requests.map((r) => r.path)).toEqual(["/openai/deployments/gpt-4o/chat/completions"]);
  });

  it("requestsPerMinute counts requests a backend answered with an error: ten 400s under a limit of 3 reach the backend three times", async () => {
    const b = await sim("b");
    b.sim.setAlways({ status: 400 });
    const gw = await gateway({ limits: { perCaller: { requestsPerMinute: 3 } }, backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] });
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await post(`${gw.url}/v1/chat/completions`, chat());
      await r.arrayBuffer();
      statuses.push(r.status);
    }
    expect(statuses).toEqual([400, 400, 400, 429, 429, 429, 429, 429, 429, 429]);
    expect(b.sim.stats().requests).toHaveLength(3);
    await until("usage events", () => gw.events().length === 10);
  });

  it("a request refused before any backend does not count toward requestsPerMinute", async () => {
    const b = await sim("b");
    const gw = await gateway({ limits: { perCaller: { requestsPerMinute: 2 } }, backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] });
    // Unknown model: 404 before the limiter; a TTL already past: 412 after it, with the reservation released.
    for (let i = 0; i < 3; i++) expect((await post(`${gw.url}/v1/chat/completions`, chat("nope"))).status).toBe(404);
    for (let i = 0; i < 3; i++) expect((await post(`${gw.url}/v1/chat/completions`, chat(), { s7pttl: "+1" })).status).toBe(412);
    for (let i = 0; i < 2; i++) {
      const r = await post(`${gw.url}/v1/chat/completions`, chat());
      expect(r.status).toBe(200);
      await r.arrayBuffer();
    }
    expect((await post(`${gw.url}/v1/chat/completions`, chat())).status).toBe(429);
    expect(b.sim.stats().requests).toHaveLength(2);
  });
});

describe("backend state outlives config versions", () => {
  it("30 reloads under load never let a backend see more than its maxConcurrency, and keep a cooldown and an open breaker", async () => {
    const counted = await countingBackend(25);
    const cooling = await sim("cooling");
    const broken = await sim("broken");
    cooling.sim.script([{ status: 429, headers: { "retry-after-ms": "120000" } }]);
    broken.sim.setAlways({ status: 500 });
    const config = (n: number): SluiceConfigInput => ({
      // Each version differs (a new version every time) but names the same backends.
      scheduling: { defaultTtlMs: 20_000, maxQueue: 10_000 + n },
      resilience: { breaker: { failureThreshold: 1, openMs: 120_000 } },
      backends: [
        { name: "counted", url: counted.url, models: ["gpt-4o"], maxConcurrency: 2 },
        { name: "cooling", url: cooling.url, models: ["m-cool"] },
        { name: "broken", url: broken.url, models: ["m-broken"] },
      ],
    });
    const gw = await gateway(config(0));
    // Put "cooling" in cooldown and open "broken"'s breaker on version 0.
    expect((await post(`${gw.url}/v1/chat/completions`, chat("m-cool"))).status).toBe(429);
    expect((await post(`${gw.url}/v1/chat/completions`, chat("m-broken"))).status).toBe(500);

    let stop = false;
    const load = async () => {
      let ok = 0;
      while (!stop) {
        const r = await post(`${gw.url}/v1/chat/completions`, chat());
        await r.arrayBuffer();
        if (r.status === 200) ok++;
      }
      return ok;
    };
    const clients = Array.from({ length: 8 }, load);
    for (let n = 1; n <= 30; n++) {
      const text = JSON.stringify({ ...config(n), metering: gw.metering });
      const outcome = await gw.running.holder.apply({ text, version: `v${n}`, origin: "test" });
      expect(outcome.kind).toBe("swapped");
      await new Promise((r) => setTimeout(r, 10));
    }
    stop = true;
    const served = (await Promise.all(clients)).reduce((a, b) => a + b, 0);
    expect(served).toBeGreaterThan(20);
    expect(counted.peak()).toBe(2);

    const health = await (await fetch(`${gw.url}/_gateway/health`)).json();
    const byName = Object.fromEntries(health.backends.map((b: { name: string }) => [b.name, b]));
    expect(health.config.version).toBe("v30");
    expect(byName.cooling.coolingDownMs).toBeGreaterThan(100_000);
    expect(byName.broken.breaker).toBe("open");
    expect(byName.counted.inFlight).toBe(0);
    // Still honoured after the reloads: neither backend is contacted again.
    expect((await post(`${gw.url}/v1/chat/completions`, chat("m-cool"))).status).toBe(429);
    expect((await post(`${gw.url}/v1/chat/completions`, chat("m-broken"))).status).toBe(503);
    expect(cooling.sim.stats().requests).toHaveLength(1);
    expect(broken.sim.stats().requests).toHaveLength(1);
    // The breaker's change was counted once, and the count survived the reloads.
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/^sluice_backend_breaker_transitions_total\{backend="broken",state="open"\} 1$/m);
  }, 60_000);

  it("the JWKS cache survives a reload: the keys are fetched once across versions", async () => {
    const { exportJWK, generateKeyPair, SignJWT } = await import("jose");
    const pair = await generateKeyPair("RS256", { extractable: true });
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: "k1", alg: "RS256", use: "sig" };
    let fetches = 0;
    const jwks: Server = createServer((_q, res) => {
      fetches++;
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwks.listen(0, "127.0.0.1", r));
    onClose(() => new Promise((r) => jwks.close(r)));
    const b = await sim("b");
    const jwt = { jwksUrl: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/keys`, issuer: "https://issuer.test/", audience: "api://sluice" };
    const config = (maxQueue: number): SluiceConfigInput => ({ auth: { jwt }, scheduling: { maxQueue }, backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] });
    const gw = await gateway(config(100));
    const token = await new SignJWT({ oid: "u" }).setProtectedHeader({ alg: "RS256", kid: "k1" }).setIssuer(jwt.issuer).setAudience(jwt.audience).setIssuedAt().setExpirationTime("5m").sign(pair.privateKey);
    const call = async () => {
      const r = await post(`${gw.url}/v1/chat/completions`, chat(), { authorization: `Bearer ${token}` });
      await r.arrayBuffer();
      return r.status;
    };
    expect(await call()).toBe(200);
    expect((await gw.running.holder.apply({ text: JSON.stringify({ ...config(200), metering: gw.metering }), version: "v2", origin: "test" })).kind).toBe("swapped");
    expect(await call()).toBe(200);
    expect(fetches).toBe(1);
  });

  it("metrics counters survive a reload", async () => {
    const b = await sim("b");
    const gw = await gateway({ backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] });
    for (let i = 0; i < 3; i++) await (await post(`${gw.url}/v1/chat/completions`, chat())).arrayBuffer();
    await gw.running.holder.apply({ text: JSON.stringify({ metering: gw.metering, scheduling: { maxQueue: 7 }, backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] }), version: "v2", origin: "test" });
    await (await post(`${gw.url}/v1/chat/completions`, chat())).arrayBuffer();
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    expect(text).toMatch(/^sluice_requests_total\{backend="b",status="200",priority="normal"\} 4$/m);
  });
});

describe("model listings are the gateway's", () => {
  const listingPaths = ["/v1/models", "/openai/models?api-version=2024-10-21", "/openai/v1/models"];

  it("are answered after authentication, filtered by the caller's profile, and never reach a backend", async () => {
    const oa = await sim("oa");
    const an = await sim("an");
    const keyA = "sk-a";
    const hash = async (k: string) => `sha256:${Buffer.from(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(k))).toString("hex")}`;
    const gw = await gateway({
      auth: { apiKeys: [{ hash: await hash(keyA), caller: "a", profile: "minis" }] },
      profiles: { minis: { models: ["gpt-4o-mini*"] } },
      backends: [
        { name: "oa", url: oa.url, kind: "openai", models: ["gpt-4o", "gpt-4o-mini"], passThrough: true },
        { name: "an", url: an.url, kind: "anthropic", models: ["claude-sonnet-4"], auth: { type: "api-key", key: "anthropic-secret" } },
      ],
    });
    for (const path of listingPaths) {
      expect((await fetch(gw.url + path)).status).toBe(401);
      const r = await fetch(gw.url + path, { headers: { "api-key": keyA } });
      expect(r.status).toBe(200);
      expect((await r.json()).data.map((m: { id: string }) => m.id)).toEqual(["gpt-4o-mini"]);
    }
    expect((await fetch(`${gw.url}/v1/models/gpt-4o-mini`, { headers: { "api-key": keyA } })).status).toBe(200);
    expect((await fetch(`${gw.url}/v1/models/gpt-4o`, { headers: { "api-key": keyA } })).status).toBe(404);
    expect(oa.sim.stats().requests).toHaveLength(0);
    expect(an.sim.stats().requests).toHaveLength(0);
  });

  it("a request that names no model goes only to a backend declared passThrough, never to another kind with its key", async () => {
    const an = await sim("an");
    const gw = await gateway({ backends: [{ name: "an", url: an.url, kind: "anthropic", models: ["*"], auth: { type: "api-key", key: "anthropic-secret" } }] });
    const r = await fetch(`${gw.url}/openai/files?api-version=2024-10-21`);
    expect(r.status).toBe(404);
    expect(an.sim.stats().requests).toHaveLength(0);

    const oa = await sim("oa");
    const gw2 = await gateway({ backends: [{ name: "oa", url: oa.url, kind: "openai", models: ["gpt-4o"], passThrough: true }, { name: "an", url: an.url, kind: "anthropic", models: ["*"] }] });
    const r2 = await fetch(`${gw2.url}/v1/files`);
    expect(r2.headers.get("x-sluice-backend")).toBe("oa");
    expect(oa.sim.stats().requests.map((q) => q.path)).toEqual(["/v1/files"]);
    expect(an.sim.stats().requests).toHaveLength(0);
  });
});

describe("what reaches the client and the backend", () => {
  it("x-request-id is sent upstream (the client's when it is a safe token, else a new one) and returned", async () => {
    const b = await sim("b");
    const gw = await gateway({ backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] });
    const r1 = await post(`${gw.url}/v1/chat/completions`, chat(), { "x-request-id": "req-123.abc" });
    await r1.arrayBuffer();
    expect(r1.headers.get("x-request-id")).toBe("req-123.abc");
    const r2 = await post(`${gw.url}/v1/chat/completions`, chat(), { "x-request-id": "bad id with spaces <script>" });
    await r2.arrayBuffer();
    expect(r2.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    expect(b.sim.stats().requests.map((q) => q.headers["x-request-id"])).toEqual(["req-123.abc", r2.headers.get("x-request-id")]);
  });

  it("a backend header named constructor (or __proto__) reaches the client intact", async () => {
    const b = await sim("b");
    b.sim.script([{ headers: { constructor: "c-value", "x-extra": "1" } }]);
    const gw = await gateway({ backends: [{ name: "b", url: b.url, models: ["gpt-4o"] }] });
    const r = await post(`${gw.url}/v1/chat/completions`, chat());
    await r.arrayBuffer();
    expect(r.headers.get("constructor")).toBe("c-value");
    expect(r.headers.get("x-extra")).toBe("1");
  });

  it("Anthropic cache writes (cache_creation_input_tokens) are in the usage event", async () => {
    const b = await sim("b");
    const message = {
      id: "msg_1",
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4",
      content: [{ type: "text", text: "ok" }],
      stop_reason: "end_turn",
      usage: { input_tokens: 12, cache_creation_input_tokens: 2048, cache_read_input_tokens: 0, output_tokens: 3 },
    };
    b.sim.script([{ status: 200, headers: { "content-type": "application/json" }, body: JSON.stringify(message) }]);
    const gw = await gateway({ backends: [{ name: "b", url: b.url, kind: "anthropic", models: ["claude-sonnet-4"] }] });
    const r = await post(`${gw.url}/v1/messages`, JSON.stringify({ model: "claude-sonnet-4", max_tokens: 10, messages: [{ role: "user", content: "hi" }] }));
    expect(r.status).toBe(200);
    await r.arrayBuffer();
    await until("usage events", () => gw.events().length === 1);
    expect(gw.events()[0]).toMatchObject({ promptTokens: 12, completionTokens: 3, cacheCreationTokens: 2048, cachedTokens: 0, usageSource: "provider" });
  });
});
