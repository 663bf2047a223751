/**
 * Hardening (issue 11), black-box over real sockets: each defect found by attacking the gateway,
 * sent again as the same input; asserted is what the client, the backend and the usage events
 * see, and that the next normal request on a `maxConcurrency: 1` backend still succeeds.
 */
import { request as httpRequest } from "node:http";
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../src/config/schema.ts";
import { chatBody, closeAfterEach, eventedGateway, post, sim } from "./harness/e2e.ts";
import { until } from "./harness/until.ts";

closeAfterEach();

const one = (name: string, url: string, extra: Record<string, unknown> = {}) => ({ name, url, models: ["gpt-4o"], maxConcurrency: 1, ...extra });
const quiet: SluiceConfigInput["resilience"] = { idleTimeoutMs: 300, breaker: { failureThreshold: 1_000, openMs: 30_000 } };

/** The next plain request is served: nothing of the one before is still held. */
async function servedNext(url: string, backendName: string): Promise<void> {
  const r = await post(`${url}/v1/chat/completions`, chatBody(), { s7pttl: "2" });
  expect(r.status).toBe(200);
  expect(r.headers.get("x-sluice-backend")).toBe(backendName);
  await r.arrayBuffer();
}

describe("an idle timeout after the headers", () => {
  it("a JSON answer whose headers came but whose body never does fails over like a timeout", async () => {
    const b1 = await sim("b1");
    const b2 = await sim("b2");
    b1.sim.script([{ stallAfter: 0 }]);
    const gw = await eventedGateway({ resilience: quiet, backends: [one("b1", b1.url, { group: 1 }), one("b2", b2.url, { group: 2 })] });
    const started = Date.now();
    const r = await post(`${gw.url}/v1/chat/completions`, chatBody());
    expect(r.status).toBe(200);
    expect(r.headers.get("x-sluice-backend")).toBe("b2");
    expect(r.headers.get("x-sluice-attempts")).toBe("2");
    await r.arrayBuffer();
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    await until("b1's body cancelled", () => b1.sim.stats().cancelled === 1);
    await servedNext(gw.url, "b1");
  });

  it("a stream whose headers came but no event: fails over before the client sees anything", async () => {
    const b1 = await sim("b1");
    const b2 = await sim("b2");
    b1.sim.script([{ stallAfter: 0 }]);
    const gw = await eventedGateway({ resilience: quiet, backends: [one("b1", b1.url, { group: 1 }), one("b2", b2.url, { group: 2 })] });
    const r = await post(`${gw.url}/v1/chat/completions`, chatBody("gpt-4o", { stream: true }));
    expect(r.headers.get("x-sluice-backend")).toBe("b2");
    const text = await r.text();
    expect(text).toContain("data: [DONE]");
    await servedNext(gw.url, "b1");
  });

  it("a stream that goes silent after its first events ends with the SSE error event, no [DONE], one truncated usage event, the lease back", async () => {
    const b = await sim("b");
    b.sim.script([{ stallAfter: 3 }]);
    const gw = await eventedGateway({ resilience: quiet, backends: [one("b", b.url)] });
    const r = await post(`${gw.url}/v1/chat/completions`, chatBody("gpt-4o", { stream: true }));
    expect(r.status).toBe(200);
    const text = await r.text();
    expect(text).toMatch(/event: error\ndata: \{"error":\{[^\n]*"code":"stream_interrupted"/);
    expect(text).not.toContain("[DONE]");
    await until("the upstream cancelled", () => b.sim.stats().cancelled === 1);
    await until("one usage event", () => gw.events().length === 1);
    expect(gw.events()[0]).toMatchObject({ status: 200, truncated: true, backend: "b" });
    await servedNext(gw.url, "b");
  });
});

describe("timers that cannot overflow", () => {
  it("an S7PTTL past the 32-bit timer limit waits like any other TTL instead of expiring at once", async () => {
    const b = await sim("b");
    b.sim.script([{ firstByteDelayMs: 400 }]);
    const gw = await eventedGateway({ resilience: quiet, backends: [one("b", b.url)] });
    const first = post(`${gw.url}/v1/chat/completions`, chatBody());
    await until("the first request at the backend", () => b.sim.stats().requests.length === 1);
    for (const ttl of ["2147484", "99999999999", `+${Math.floor(Date.now() / 1000) + 400 * 86_400}`, "2099-01-01T00:00:00Z"]) {
      const queued = post(`${gw.url}/v1/chat/completions`, chatBody(), { s7pttl: ttl });
      const r = await queued;
      expect(r.status, `S7PTTL ${ttl}`).toBe(200);
      await r.arrayBuffer();
    }
    expect((await first).status).toBe(200);
  });

  it("config durations above their bound are refused naming the field", async () => {
    const { parseConfig } = await import("../src/config/load.ts");
    for (const [path, doc] of [
      ["resilience.timeoutMs", { resilience: { timeoutMs: 2_147_483_648 } }],
      ["scheduling.defaultTtlMs", { scheduling: { defaultTtlMs: 1e12 } }],
      ["server.shutdownGraceMs", { server: { shutdownGraceMs: 3e9 } }],
      ["resilience.idleTimeoutMs", { resilience: { idleTimeoutMs: 1e10 } }],
    ] as const) {
      expect(() => parseConfig({ ...doc, backends: [{ name: "a", url: "http://127.0.0.1:1" }] })).toThrow(new RegExp(path.replace(".", "\\.")));
    }
  });
});

describe("bounded request bodies", () => {
  it("a body over server.maxBodyBytes is 413 before any backend is contacted, with a usage event, and is not read past the limit", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ server: { maxBodyBytes: 64 * 1024 }, backends: [one("b", b.url)] });
    // Announced too big.
    const big = await post(`${gw.url}/v1/chat/completions`, chatBody("gpt-4o", { pad: "x".repeat(100_000) }));
    expect(big.status).toBe(413);
    expect((await big.json()).error.code).toBe("body_too_large");
    // Chunked, no content-length, 10 MB offered: refused once the limit is crossed.
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on("error", reject);
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      const pump = () => {
        while (sent < 160) {
          sent++;
          if (!req.write(chunk)) return void req.once("drain", pump);
        }
        req.end();
      };
      pump();
    }).catch(() => 413);
    expect(status).toBe(413);
    expect(b.sim.stats().requests).toHaveLength(0);
    await until("two usage events", () => gw.events().length === 2);
    expect(gw.events().map((e) => e.status)).toEqual([413, 413]);
    await servedNext(gw.url, "b");
  });
});

describe("inputs refused with a clear 4xx, nothing held", () => {
  it("only configured priority levels: x-priority -1000 is 400, and does not jump the queue", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [one("b", b.url)] });
    for (const p of ["-1000", "7", "urgent"]) {
      const r = await post(`${gw.url}/v1/chat/completions`, chatBody(), { "x-priority": p });
      expect(r.status, `x-priority ${p}`).toBe(400);
      expect((await r.json()).error.code).toBe("invalid_priority");
    }
    for (const p of ["high", "1", "low", "3"]) expect((await post(`${gw.url}/v1/chat/completions`, chatBody(), { "x-priority": p })).status).toBe(200);
    expect(b.sim.stats().requests).toHaveLength(4);
  });

  it("bad percent-encoding and dot segments in the path are 400 with a usage event, and reach no backend", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [one("b", b.url, { kind: "azure-openai", models: ["*"], passThrough: true })] });
    const raw = (path: string) =>
      new Promise<number>((resolve, reject) => {
        // The options form: a URL string would have the client resolve the dot segments itself.
        const req = httpRequest({ hostname: "127.0.0.1", port: gw.running.port, path, method: "POST", headers: { "content-type": "application/json" } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on("error", reject);
        req.end(chatBody());
      });
    const paths = ["/openai/deployments/%E0%A4%A/chat/completions", "/v1/chat/%", "/openai/deployments/%ED%A0%80/chat/completions", "/openai/deployments/../../x", "/openai/deployments/%2e%2e/%2E%2e/x", "/v1/./chat/completions"];
    for (const p of paths) expect(await raw(p), p).toBe(400);
    // A body model of ".." would collapse the deployment path.
    expect((await post(`${gw.url}/v1/chat/completions`, chatBody(".."))).status).toBe(400);
    // TRACE would echo the request back: never forwarded.
    expect(await new Promise<number>((resolve, reject) => {
      const req = httpRequest({ hostname: "127.0.0.1", port: gw.running.port, path: "/openai/files", method: "TRACE" }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on("error", reject);
      req.end();
    })).toBe(405);
    expect(b.sim.stats().requests).toHaveLength(0);
    await until("one event each", () => gw.events().length === paths.length + 2);
    expect(new Set(gw.events().map((e) => e.status))).toEqual(new Set([400, 405]));
    await servedNext(gw.url, "b");
  });

  it("a caller restricted by profile models cannot reach paths that name no model", async () => {
    const b = await sim("b");
    const key = "sk-restricted";
    const hash = `sha256:${Buffer.from(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key))).toString("hex")}`;
    const gw = await eventedGateway({
      auth: { apiKeys: [{ hash, caller: "r", profile: "p" }] },
      profiles: { p: { models: ["gpt-4o"] } },
      backends: [one("b", b.url, { passThrough: true })],
    });
    expect((await fetch(`${gw.url}/openai/files?api-version=2024-10-21`, { headers: { "api-key": key } })).status).toBe(403);
    expect(b.sim.stats().requests).toHaveLength(0);
  });

  it("credentials in the query string never reach the backend", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [one("b", b.url, { kind: "azure-openai" })] });
    const r = await post(`${gw.url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&api-key=secret1&subscription-key=secret2&code=fnkey`, chatBody());
    expect(r.status).toBe(200);
    await r.arrayBuffer();
    const seen = b.sim.stats().requests[0]!;
    expect(seen.query).toBe("api-version=2024-10-21");
  });

  it("a huge max_tokens or n cannot break fair share: the estimate is bounded", async () => {
    const { classify } = await import("../src/classify.ts");
    const { parseConfig } = await import("../src/config/load.ts");
    const config = parseConfig({ backends: [{ name: "a", url: "http://127.0.0.1:1" }] });
    const body = new TextEncoder().encode(JSON.stringify({ model: "m", max_tokens: 1e300, n: 1e9, messages: [] }));
    const cls = classify("/v1/chat/completions", new URL("http://x/v1/chat/completions"), new Headers(), body, config);
    expect(Number.isFinite(cls.cost)).toBe(true);
    expect(cls.completionBudget).toBe(1_000_000 * 128);
  });

  it("more than 1,000 headers is 431, not a request with some of them silently dropped", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [one("b", b.url)] });
    const headers: Record<string, string> = { "content-type": "application/json" };
    for (let i = 0; i < 1_500; i++) headers[`x-h-${i}`] = "1";
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${gw.url}/v1/chat/completions`, { method: "POST", headers }, (res) => {
        let b = "";
        res.on("data", (c) => (b += c));
        res.on("end", () => resolve(res.statusCode!));
      });
      req.on("error", reject);
      req.end(chatBody());
    });
    expect(status).toBe(431);
    expect(b.sim.stats().requests).toHaveLength(0);
    await servedNext(gw.url, "b");
  });
});

describe("shutdown", () => {
  it("a stream still open at the end of the grace period ends with the SSE error event, not as if finished", async () => {
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [one("b", b.url)] });
    const r = await post(`${gw.url}/v1/chat/completions`, chatBody("gpt-4o", { stream: true }), { "x-sim-fault": JSON.stringify({ paceMs: 100, chunks: 100 }) });
    expect(r.status).toBe(200);
    const text = r.text();
    await until("streaming", () => b.sim.stats().open === 1);
    await gw.running.close(200);
    const body = await text;
    expect(body).toContain("event: error");
    expect(body).not.toContain("[DONE]");
  });
});

describe("usage events of clients that left", () => {
  it("a client that leaves while its answer is on the way: one event, attempts 1, status 499, the lease back", async () => {
    const b = await sim("b");
    b.sim.script([{ firstByteDelayMs: 600 }]);
    const gw = await eventedGateway({ backends: [one("b", b.url)] });
    const req = httpRequest(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": "left-1" } });
    req.on("error", () => undefined);
    req.end(chatBody());
    await until("at the backend", () => b.sim.stats().requests.length === 1);
    req.destroy();
    await until("its usage event", () => gw.events().some((e) => e.requestId === "left-1"));
    const events = gw.events().filter((e) => e.requestId === "left-1");
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ status: 499, attempts: 1, backend: "b" });
    await servedNext(gw.url, "b");
  });
});

describe("requests the HTTP layer refuses", () => {
  it("a request Node or @hono/node-server cannot take (unknown method, backslash, bad Host, * target) gets the gateway's 400 with the client's request id and a usage event", async () => {
    const { connect } = await import("node:net");
    const b = await sim("b");
    const gw = await eventedGateway({ backends: [one("b", b.url)] });
    const raw = (head: string) =>
      new Promise<string>((resolve, reject) => {
        const s = connect(gw.running.port, "127.0.0.1", () => s.end(head));
        let out = "";
        s.on("data", (d) => (out += d));
        s.on("end", () => resolve(out));
        s.on("error", reject);
      });
    const cases = [
      "FOO /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-request-id: bad-1\r\n\r\n",
      "POST /v1\\chat/completions HTTP/1.1\r\nhost: x\r\nx-request-id: bad-2\r\ncontent-length: 2\r\n\r\n{}",
      "GET /v1/models HTTP/1.1\r\nhost: evil.example/x\r\nx-request-id: bad-3\r\n\r\n",
      "OPTIONS * HTTP/1.1\r\nhost: x\r\nx-request-id: bad-4\r\n\r\n",
    ];
    for (const [i, head] of cases.entries()) {
      const answer = await raw(head);
      expect(answer, head).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer.toLowerCase(), head).toContain(`x-request-id: bad-${i + 1}`);
      expect(answer, head).toContain('"type":"sluice_error"');
    }
    await until("one event each", () => cases.every((_, i) => gw.events().some((e) => e.requestId === `bad-${i + 1}`)));
    expect(gw.events().map((e) => e.status)).toEqual([400, 400, 400, 400]);
    expect(b.sim.stats().requests).toHaveLength(0);
  });
});
