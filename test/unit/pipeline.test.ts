/**
 * The pipeline's attempt loop and settlement, with the network replaced by a scripted
 * UpstreamFetch (the thing under test is the gateway, not the network) and a fake clock.
 */
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { RefreshingTokenCredentials, StaticCredentials, type CredentialProvider } from "../../src/credentials/port.ts";
import { createGateway } from "../../src/gateway.ts";
import type { UsageEvent } from "../../src/metering/events.ts";
import type { UpstreamFetch, UpstreamRequest } from "../../src/proxy/attempt.ts";

interface Sent {
  url: string;
  headers: Record<string, string>;
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
  const bytes = new TextEncoder().encode(JSON.stringify(body));
  return { status, headers: new Headers({ "content-type": "application/json", ...headers }), body: null, wholeBody: bytes };
};
const completion = { id: "c", object: "chat.completion", choices: [], usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } };

function harness(input: Partial<SluiceConfigInput>, answer: (url: string, r: UpstreamRequest, n: number) => ReturnType<typeof json>, credentials?: (name: string) => CredentialProvider) {
  let clock = 1_000_000;
  const sent: Sent[] = [];
  const events: UsageEvent[] = [];
  const upstream: UpstreamFetch = async (url, r) => {
    sent.push({ url, headers: Object.fromEntries(r.headers) });
    return answer(url, r, sent.length);
  };
  const config = parseConfig({ metering: { sinks: [] }, backends: [{ name: "a", url: "http://a.test", models: ["gpt-4o"], maxConcurrency: 1 }], ...input });
  const gw = createGateway({
    config,
    upstream,
    now: () => clock,
    usageSinks: [{ emit: (e) => events.push(e) }],
    ...(credentials ? { credentials: (b) => credentials(b.name) } : {}),
  });
  const call = (headers: Record<string, string> = {}) =>
    gw.fetch(new Request("http://gw.test/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json", ...headers }, body: '{"model":"gpt-4o","messages":[]}' }));
  const inFlight = async () => (await gw.scheduler.stats()).backends.map((b) => [b.name, b.inFlight]);
  return { gw, sent, events, call, inFlight, tick: (ms: number) => (clock += ms) };
}

describe("the attempt loop", () => {
  it("fails over at once from a 429 to the next backend, cooling the first down for its retry-after-ms", async () => {
    const h = harness(
      { backends: [{ name: "a", url: "http://a.test", models: ["gpt-4o"], group: 1 }, { name: "b", url: "http://b.test", models: ["gpt-4o"], group: 2 }] },
      (url) => (url.startsWith("http://a.test") ? json(429, { error: {} }, { "retry-after-ms": "5000" }) : json(200, completion)),
    );
    const r = await h.call();
    expect(r.status).toBe(200);
    expect(r.headers.get("x-sluice-backend")).toBe("b");
    expect(r.headers.get("x-sluice-attempts")).toBe("2");
    const a = (await h.gw.scheduler.stats()).backends.find((b) => b.name === "a")!;
    expect(a.coolingDownMs).toBe(5000);
    expect(await h.inFlight()).toEqual([["a", 0], ["b", 0]]);
    expect(h.events).toHaveLength(1);
    expect(h.events[0]).toMatchObject({ status: 200, backend: "b", attempts: 2, totalTokens: 7 });
  });

  it("takes a retry hint from an Azure error body when no header gives one", async () => {
    const h = harness(
      { backends: [{ name: "a", url: "http://a.test", kind: "azure-openai", models: ["gpt-4o"] }, { name: "b", url: "http://b.test", models: ["gpt-4o"], group: 2 }] },
      (url) => (url.startsWith("http://a.test") ? json(429, { error: { message: "Requests have exceeded the limit. Please retry after 7 seconds." } }) : json(200, completion)),
    );
    expect((await h.call()).status).toBe(200);
    expect((await h.gw.scheduler.stats()).backends.find((b) => b.name === "a")!.coolingDownMs).toBe(7000);
  });

  it("a 401 from a backend whose token can be refreshed: one refresh, one retry on the same backend with the new token", async () => {
    let issued = 0;
    const creds = new RefreshingTokenCredentials(async () => ({ token: `t${++issued}`, expiresAt: Date.now() + 3_600_000 }));
    const h = harness({}, (_u, r) => (r.headers.some(([k, v]) => k === "authorization" && v === "Bearer t2") ? json(200, completion) : json(401, { error: { message: "expired" } })), () => creds);
    const r = await h.call();
    expect(r.status).toBe(200);
    expect(h.sent.map((s) => s.headers.authorization)).toEqual(["Bearer t1", "Bearer t2"]);
    expect(h.events).toHaveLength(1);
    expect(h.events[0]).toMatchObject({ status: 200, attempts: 1, backend: "a" });
    creds.close();
  });

  it("a 401 with static credentials is passed through, sent once", async () => {
    const h = harness({}, () => json(401, { error: { message: "bad key" } }), () => new StaticCredentials([["api-key", "k"]]));
    const r = await h.call();
    expect(r.status).toBe(401);
    expect(h.sent).toHaveLength(1);
  });

  it("a throw after the lease was granted is a 500 with the request id; the lease goes back, one usage event goes out", async () => {
    let calls = 0;
    const throwing: CredentialProvider = {
      apply() {
        if (++calls === 1) throw new Error("boom");
      },
      ready: () => undefined,
      refresh: async () => false,
      close() {},
    };
    const h = harness({}, () => json(200, completion), () => throwing);
    const r = await h.call({ "x-request-id": "r-1" });
    expect(r.status).toBe(500);
    expect(r.headers.get("x-request-id")).toBe("r-1");
    expect((await r.json()).error.code).toBe("internal_error");
    expect(await h.inFlight()).toEqual([["a", 0]]);
    expect(h.events.map((e) => [e.requestId, e.status])).toEqual([["r-1", 500]]);
    // maxConcurrency 1: the next request is served at once.
    const next = await h.call();
    expect(next.status).toBe(200);
    expect(h.events).toHaveLength(2);
  });

  it("every attempt failing to connect is a 502 naming each attempt, with every lease back", async () => {
    const h = harness({ backends: [{ name: "a", url: "http://a.test", models: ["gpt-4o"] }, { name: "b", url: "http://b.test", models: ["gpt-4o"] }] }, () => {
      throw new (class extends Error {})("x");
    });
    const r = await h.call();
    expect(r.status).toBe(502);
    const body = await r.json();
    expect(body.error.attempts.map((a: { backend: string }) => a.backend).sort()).toEqual(["a", "b"]);
    expect(await h.inFlight()).toEqual([["a", 0], ["b", 0]]);
  });
});
