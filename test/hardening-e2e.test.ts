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
