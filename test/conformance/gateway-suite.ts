/**
 * The gateway conformance suite: one file, run against every runtime (Node with real sockets,
 * workerd via miniflare, ...). Backends are LLM simulators listening on 127.0.0.1; the client
 * is the global `fetch`. Each test asserts what a user of the gateway would notice: which
 * backend got the request, status, headers and bytes.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { StartGateway } from "../harness/types.ts";
import { HAVE_SHARED_FIXTURES, needsFixtures } from "../harness/shared-fixtures.ts";
import {
  azureBackend,
  azurePath,
  chatBody,
  closedPortUrl,
  deploymentOf,
  fixtureBytes,
  gatewayConfig,
  lastRequest,
  OPENAI_PATH,
  openaiBackend,
  pathWithQuery,
  pollUntil,
  queueMsOf,
  received,
  sseData,
  sseEventName,
  sseEvents,
  tally,
  TestEnv,
  type BackendInput,
  type Gateway,
  type Reply,
  type Sim,
  type SimFault,
  type SimRequest,
} from "./helpers.ts";


/** Status codes that must fail over to the next backend within the same request. */
const FAILOVER_STATUSES = [408, 500, 502, 503, 504];
/** Client errors that pass through unchanged, without failover. */
const PASS_THROUGH_STATUSES = [400, 401, 403, 404, 413, 422];

/** What a runtime can do that the suite adapts to. */
export interface RuntimeCapabilities {
  /**
   * The runtime tells the core when a client goes away (Node, workerd). Azure Functions does
   * not: its stream proxy keeps reading the response to the end (see adapters/azure-functions).
   */
  seesClientLeave?: boolean;
}

export function gatewayConformance(runtime: string, startGateway: StartGateway, caps: RuntimeCapabilities = {}): void {
  const seesClientLeave = caps.seesClientLeave ?? true;
  describe(`gateway conformance [${runtime}]`, () => {
    const env = new TestEnv(startGateway);
    afterEach(() => env.closeAll());

    /** b1 in group 1, b2 in group 2: b2 only gets what b1 cannot take. */
    async function primaryAndSpare(
      opts: Parameters<typeof gatewayConfig>[1] = {},
      extra: { b1?: Partial<BackendInput>; b2?: Partial<BackendInput> } = {},
    ): Promise<{ gw: Gateway; b1: Sim; b2: Sim }> {
      const [b1, b2] = await env.sims(["b1", "b2"]);
      const gw = await env.gateway(
        gatewayConfig(
          [azureBackend("b1", b1!.url, { group: 1, ...extra.b1 }), azureBackend("b2", b2!.url, { group: 2, ...extra.b2 })],
          opts,
        ),
      );
      return { gw, b1: b1!, b2: b2! };
    }

    /** One request through the gateway (so a slow first request on some runtime does not skew timing), then clean stats. */
    async function warmUp(gw: Gateway, sims: Sim[]): Promise<void> {
      const r = await gw.chat();
      expect(r.status, `warm-up request: ${r.text}`).toBe(200);
      for (const s of sims) s.sim.reset();
    }

    function expectGatewayHeaders(r: Reply): void {
      expect(r.headers.get("x-request-id"), "x-request-id").toBeTruthy();
      expect(r.headers.get("x-sluice-attempts"), "x-sluice-attempts").toMatch(/^\d+$/);
      expect(r.headers.get("x-sluice-queue-ms"), "x-sluice-queue-ms").toMatch(/^\d+(\.\d+)?$/);
    }

    /**
     * A success answered by `backend` after `attempts` attempts, with the gateway's headers
     * consistent; a request that never had to wait says so (x-sluice-queue-ms: 0).
     */
    function expectServedBy(r: Reply, backend: string, attempts = 1, o: { queued?: boolean } = {}): void {
      expect(r.status, `status (body: ${r.text.slice(0, 300)})`).toBe(200);
      expect(r.backend, "x-sluice-backend").toBe(backend);
      expect(r.headers.get("x-sim-backend"), "the simulator that produced the body").toBe(backend);
      expect(r.attempts, "x-sluice-attempts").toBe(attempts);
      expect(r.headers.get("x-backend-affinity"), "x-backend-affinity").toBe(backend);
      expectGatewayHeaders(r);
      if (!o.queued) expect(r.headers.get("x-sluice-queue-ms"), "x-sluice-queue-ms of a request that never waited").toBe("0");
    }

    /**
     * `r` waited in the gateway's queue for the slot a request held on `s` for `holdMs`: it
     * reached the backend only after that slot was freed (as the simulator counted), and its
     * x-sluice-queue-ms covers at least the time from when the gateway showed it waiting
     * (`waitingSeenAt`) to when the slot was freed.
     */
    function expectWaitedForSlot(r: Reply, s: Sim, holdMs: number, waitingSeenAt: number): void {
      const reqs = s.sim.stats().requests;
      expect(reqs, `${s.name}: the holder, then the request that waited`).toHaveLength(2);
      const [holder, waited] = reqs as [SimRequest, SimRequest];
      expect(waited.at - holder.at, "the waiting request reached the backend before the slot was freed").toBeGreaterThanOrEqual(holdMs - 20);
      const q = queueMsOf(r);
      expect(q, "x-sluice-queue-ms").toBeGreaterThanOrEqual(holder.at + holdMs - waitingSeenAt - 50);
      expect(q, "x-sluice-queue-ms is time spent queued, within the request's own time").toBeLessThanOrEqual(r.ms + 5);
    }

    /** A gateway-made error: OpenAI-style body of type sluice_error, no backend named as the answerer. */
    function sluiceError(r: Reply): { message: string; type: string; code: unknown; attempts?: Array<Record<string, unknown>> } {
      expectGatewayHeaders(r);
      expect(r.backend, "x-sluice-backend on a gateway error").toBeNull();
      expect(r.headers.get("content-type") ?? "").toContain("application/json");
      const body = r.json();
      expect(body).toHaveProperty("error");
      expect(typeof body.error.message).toBe("string");
      expect(body.error.type).toBe("sluice_error");
      expect(body.error).toHaveProperty("code");
      return body.error;
    }

    function expectAttempts(error: { attempts?: Array<Record<string, unknown>> }, expected: Array<{ backend: string; status?: number }>): void {
      const attempts = error.attempts ?? [];
      expect(attempts.map((a) => a.backend)).toEqual(expected.map((e) => e.backend));
      expected.forEach((e, i) => {
        const a = attempts[i]!;
        expect(typeof a.ms, `attempts[${i}].ms`).toBe("number");
        if (e.status !== undefined) expect(a.status, `attempts[${i}].status`).toBe(e.status);
      });
    }

    // -----------------------------------------------------------------------------------------
    describe("paths, credentials and bytes", () => {
      const shared = new TestEnv(startGateway);
      let gw: Gateway;
      let az: Sim;
      let oa: Sim;
      let ap: Sim;

      beforeAll(async () => {
        [az, oa, ap] = (await shared.sims(["az", "oa", "ap"])) as [Sim, Sim, Sim];
        gw = await shared.gateway(
          gatewayConfig([
            azureBackend("az", az.url),
            openaiBackend("oa", oa.url),
            {
              name: "ap",
              url: ap.url,
              kind: "apim",
              models: [{ name: "gpt-35-turbo", deployment: "ap-gpt35" }],
              auth: { type: "api-key", key: "ap-key" },
            },
          ]),
        );
      });
      afterAll(() => shared.closeAll());
      beforeEach(() => {
        for (const s of [az, oa, ap]) s.sim.reset();
      });

      it("Azure path, JSON: reaches the Azure backend under its own deployment name, query kept", async () => {
        const body = chatBody();
        const r = await gw.send(azurePath("gpt-4o"), { body });
        expectServedBy(r, "az");
        expect(r.headers.get("content-type")).toContain("application/json");
        expect(Array.isArray(r.json().choices)).toBe(true);
        expect([received(az), received(oa), received(ap)]).toEqual([1, 0, 0]);
        const seen = lastRequest(az);
        expect(seen.method).toBe("POST");
        expect(pathWithQuery(seen)).toBe(`/openai/deployments/${deploymentOf("az")}/chat/completions?api-version=2024-10-21`);
        expect(seen.body).toBe(body);
      });

      it("Azure path, stream: SSE from the Azure backend, ending with [DONE]", async () => {
        const body = chatBody({ stream: true });
        const r = await gw.send(azurePath("gpt-4o"), { body });
        expectServedBy(r, "az");
        expect(r.headers.get("content-type")).toContain("text/event-stream");
        const events = sseEvents(r.text);
        expect(events.length).toBeGreaterThan(2);
        expect(sseData(events[events.length - 1]!)).toBe("[DONE]");
        expect(JSON.parse(sseData(events[0]!))).toHaveProperty("choices");
        expect([received(az), received(oa), received(ap)]).toEqual([1, 0, 0]);
        expect(pathWithQuery(lastRequest(az))).toBe(`/openai/deployments/${deploymentOf("az")}/chat/completions?api-version=2024-10-21`);
        expect(lastRequest(az).body).toBe(body);
      });

      it("OpenAI path, JSON: model from the body, same path on the OpenAI backend", async () => {
        const body = chatBody({ model: "gpt-4o-mini" });
        const r = await gw.send(OPENAI_PATH, { body });
        expectServedBy(r, "oa");
        expect(Array.isArray(r.json().choices)).toBe(true);
        expect([received(az), received(oa), received(ap)]).toEqual([0, 1, 0]);
        const seen = lastRequest(oa);
        expect(seen.method).toBe("POST");
        expect(pathWithQuery(seen)).toBe("/v1/chat/completions");
        expect(seen.body).toBe(body);
      });

      it("OpenAI path, stream: SSE from the OpenAI backend, ending with [DONE]", async () => {
        const body = chatBody({ model: "gpt-4o-mini", stream: true });
        const r = await gw.send(OPENAI_PATH, { body });
        expectServedBy(r, "oa");
        expect(r.headers.get("content-type")).toContain("text/event-stream");
        const events = sseEvents(r.text);
        expect(events.length).toBeGreaterThan(2);
        expect(sseData(events[events.length - 1]!)).toBe("[DONE]");
        expect([received(az), received(oa), received(ap)]).toEqual([0, 1, 0]);
        expect(pathWithQuery(lastRequest(oa))).toBe("/v1/chat/completions");
        expect(lastRequest(oa).body).toBe(body);
      });

      it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("bytes are identical both ways: odd request body in, aoai2.txt stream out (Azure path)"), async () => {
        // Odd spacing, escapes, non-ASCII and an emoji; no "model" (Azure takes it from the URL).
        const body =
          '{ "messages" :[ {"role":"system","content":"Tu es un assistant \\u00e9l\\u00e9gant."},\n\t{"role": "user" , "content":"h\u00e9llo \u2014 \u65e5\u672c\u8a9e \ud83d\ude80 \\"quoted\\" \\n"}],' +
          '   "stream":true ,"stream_options":{ "include_usage" :true},"temperature":0.70}\n';
        const r = await gw.send(azurePath("gpt-4o"), { body, headers: { "x-sim-fixture": "aoai2.txt" } });
        expectServedBy(r, "az");
        expect(r.headers.get("content-type")).toContain("text/event-stream");
        expect(lastRequest(az).body).toBe(body);
        const expected = fixtureBytes("aoai2.txt");
        expect(r.bytes.length).toBe(expected.length);
        expect(r.bytes.equals(expected), "response bytes equal aoai2.txt").toBe(true);
      });

      it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("bytes are identical both ways: odd request body in, openAI.txt stream out (OpenAI path)"), async () => {
        const body =
          '{"model":"gpt-4o-mini",   "messages":[{"role":"user","content":"\u00c7a va? \u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9 \ud83e\udd16\\t\\u0041"}],\r\n' +
          '"stream": true, "stream_options": {"include_usage": true}, "max_tokens":  1e3 }';
        const r = await gw.send(OPENAI_PATH, { body, headers: { "x-sim-fixture": "openAI.txt" } });
        expectServedBy(r, "oa");
        expect(lastRequest(oa).body).toBe(body);
        const expected = fixtureBytes("openAI.txt");
        expect(r.bytes.length).toBe(expected.length);
        expect(r.bytes.equals(expected), "response bytes equal openAI.txt").toBe(true);
      });

      it("bytes are identical both ways for a non-streamed JSON answer", async () => {
        const body = '{"messages":[{"role":"user","content":"\u00bfqu\u00e9 tal? \u2603"}]  ,"max_tokens":5}';
        const answer =
          '{ "id":"chatcmpl-x", "object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"\u00a1Hola! \u2603\\u2603"},' +
          '"finish_reason":"stop"}],\n  "usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n';
        az.sim.script([{ status: 200, body: answer }]);
        const r = await gw.send(azurePath("gpt-4o"), { body });
        expectServedBy(r, "az");
        expect(lastRequest(az).body).toBe(body);
        expect(r.text).toBe(answer);
      });

      it("each backend sees its own credential, never the client's", async () => {
        const client = {
          "api-key": "client-secret-apikey",
          authorization: "Bearer client-secret-token",
          "ocp-apim-subscription-key": "client-secret-apim",
          "x-api-key": "client-secret-x",
        };
        const replies = [
          await gw.send(azurePath("gpt-4o"), { body: chatBody(), headers: client }),
          await gw.send(OPENAI_PATH, { body: chatBody({ model: "gpt-4o-mini" }), headers: client }),
          await gw.send(azurePath("gpt-35-turbo"), { body: chatBody(), headers: client }),
        ];
        expectServedBy(replies[0]!, "az");
        expectServedBy(replies[1]!, "oa");
        expectServedBy(replies[2]!, "ap");

        for (const s of [az, oa, ap]) {
          const h = lastRequest(s).headers;
          for (const [name, value] of Object.entries(h)) {
            expect(value, `${s.name} received header ${name}`).not.toContain("client-secret");
          }
          expect(h["x-api-key"], `${s.name}: x-api-key`).toBeUndefined();
        }
        expect(lastRequest(az).headers["api-key"]).toBe("az-key");
        expect(lastRequest(az).headers["authorization"]).toBeUndefined();
        expect(lastRequest(oa).headers["authorization"]).toBe("Bearer oa-token");
        expect(lastRequest(oa).headers["api-key"]).toBeUndefined();
        expect(lastRequest(ap).headers["ocp-apim-subscription-key"]).toBe("ap-key");
        expect(pathWithQuery(lastRequest(ap))).toBe("/openai/deployments/ap-gpt35/chat/completions?api-version=2024-10-21");

        // Backend keys never come back to the client.
        for (const r of replies) {
          r.headers.forEach((value, name) => {
            for (const key of ["az-key", "oa-token", "ap-key"]) expect(value, `response header ${name}`).not.toContain(key);
          });
          for (const key of ["az-key", "oa-token", "ap-key"]) expect(r.text).not.toContain(key);
        }
      });

      it("an unknown model gets a 404 OpenAI-style error and no backend is contacted", async () => {
        const viaAzure = await gw.send(azurePath("no-such-model"), { body: chatBody() });
        const viaOpenAI = await gw.send(OPENAI_PATH, { body: chatBody({ model: "no-such-model" }) });
        for (const r of [viaAzure, viaOpenAI]) {
          expect(r.status, r.text).toBe(404);
          expectGatewayHeaders(r);
          expect(r.backend).toBeNull();
          expect(r.attempts).toBe(0);
          const body = r.json();
          expect(typeof body.error?.message).toBe("string");
          expect(typeof body.error?.type).toBe("string");
          expect(body.error).toHaveProperty("code");
        }
        expect([received(az), received(oa), received(ap)]).toEqual([0, 0, 0]);
      });

      it("x-request-id is echoed when sent and generated when not, on successes and gateway errors", async () => {
        const ok = await gw.send(azurePath("gpt-4o"), { body: chatBody(), headers: { "x-request-id": "conf-req-123" } });
        expectServedBy(ok, "az");
        expect(ok.headers.get("x-request-id")).toBe("conf-req-123");

        const err = await gw.send(azurePath("no-such-model"), { body: chatBody(), headers: { "x-request-id": "conf-req-404" } });
        expect(err.status).toBe(404);
        expect(err.headers.get("x-request-id")).toBe("conf-req-404");

        const a = await gw.chat();
        const b = await gw.chat();
        const idA = a.headers.get("x-request-id");
        const idB = b.headers.get("x-request-id");
        expect(idA).toBeTruthy();
        expect(idB).toBeTruthy();
        expect(idA).not.toBe(idB);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe("client errors pass through", () => {
      const shared = new TestEnv(startGateway);
      let gw: Gateway;
      let b1: Sim;
      let b2: Sim;
      beforeAll(async () => {
        [b1, b2] = (await shared.sims(["b1", "b2"])) as [Sim, Sim];
        gw = await shared.gateway(
          gatewayConfig([azureBackend("b1", b1.url, { group: 1 }), azureBackend("b2", b2.url, { group: 2 })], { defaultCooldownMs: 60_000, failureThreshold: 1 }),
        );
      });
      afterAll(() => shared.closeAll());
      beforeEach(() => {
        b1.sim.reset();
        b2.sim.reset();
      });

      for (const status of PASS_THROUGH_STATUSES) {
        it(`${status} from the backend reaches the client unchanged; no other backend receives anything`, async () => {
          const errBody = `{"error":{"message":"backend says ${status} \u2014 nope","type":"invalid_request_error","code":"e${status}"}}`;
          b1.sim.script([{ status, body: errBody, headers: { "x-backend-detail": `d${status}` } }]);
          const r = await gw.chat();
          expect(r.status).toBe(status);
          expect(r.text).toBe(errBody);
          expect(r.headers.get("x-backend-detail")).toBe(`d${status}`);
          expect(r.backend).toBe("b1");
          expect(r.attempts).toBe(1);
          expectGatewayHeaders(r);
          expect(received(b1)).toBe(1);
          expect(received(b2)).toBe(0);

          // A client error is not the backend's fault: no cooldown, no open circuit.
          const next = await gw.chat();
          expectServedBy(next, "b1");
          expect(received(b2)).toBe(0);
        });
      }
    });

    // -----------------------------------------------------------------------------------------
    describe("failover within the same request", () => {
      async function expectFailover(gw: Gateway, b1: Sim | null, b2: Sim, body = chatBody()): Promise<Reply> {
        const r = await gw.send(azurePath("gpt-4o"), { body });
        expectServedBy(r, "b2", 2);
        if (b1) expect(received(b1)).toBe(1);
        expect(received(b2)).toBe(1);
        const seen = lastRequest(b2);
        expect(pathWithQuery(seen)).toBe(`/openai/deployments/${deploymentOf("b2")}/chat/completions?api-version=2024-10-21`);
        expect(seen.headers["api-key"]).toBe("b2-key");
        expect(seen.body, "the retried body is the client's body").toBe(body);
        return r;
      }

      for (const status of FAILOVER_STATUSES) {
        it(`${status} from the first backend fails over to the next one`, async () => {
          const { gw, b1, b2 } = await primaryAndSpare();
          await warmUp(gw, [b1, b2]);
          b1.sim.script([{ status }]);
          const r = await expectFailover(gw, b1, b2);
          expect(r.ms, "no sleep before failing over").toBeLessThan(2_000);
        });
      }

      it("connection refused fails over", async () => {
        const [b2] = (await env.sims(["b2"])) as [Sim];
        const gw = await env.gateway(
          gatewayConfig([azureBackend("b1", await closedPortUrl(), { group: 1 }), azureBackend("b2", b2.url, { group: 2 })]),
        );
        await expectFailover(gw, null, b2);
      });

      it("a reset before the first byte fails over", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ reset: "before-headers" }]);
        await expectFailover(gw, b1, b2);
      });

      it("a reset before the first byte of a stream request fails over, and the stream comes from the next backend", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ reset: "before-headers" }]);
        const r = await expectFailover(gw, b1, b2, chatBody({ stream: true }));
        expect(r.headers.get("content-type")).toContain("text/event-stream");
        const events = sseEvents(r.text);
        expect(sseData(events[events.length - 1]!)).toBe("[DONE]");
      });

      it("a backend hanging past its per-attempt timeout fails over", async () => {
        // The backend's own timeoutMs overrides resilience.timeoutMs (5 s here); the 504 test covers the global one.
        const { gw, b1, b2 } = await primaryAndSpare({ timeoutMs: 5_000 }, { b1: { timeoutMs: 600 } });
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ hang: true }]);
        const r = await expectFailover(gw, b1, b2);
        expect(r.ms, "waited for the timeout").toBeGreaterThanOrEqual(550);
        expect(r.ms, "did not wait much longer than the timeout").toBeLessThan(3_000);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe("cooldown after 429 / 503", () => {
      interface CooldownCase {
        label: string;
        /** Headers for the 429, the cooldown they mean (ms from now) or an absolute end (epoch ms). */
        make(): { headers: Record<string, string>; ms?: number; endsAt?: number };
        defaultCooldownMs?: number;
        /** The throttling status; default 429. */
        status?: number;
      }
      const cases: CooldownCase[] = [
        { label: "retry-after-ms: 1200", make: () => ({ headers: { "retry-after-ms": "1200" }, ms: 1200 }) },
        { label: "x-ms-retry-after-ms: 1000", make: () => ({ headers: { "x-ms-retry-after-ms": "1000" }, ms: 1000 }) },
        { label: "retry-after: 1 (seconds)", make: () => ({ headers: { "retry-after": "1" }, ms: 1000 }) },
        {
          label: "retry-after as an HTTP date",
          make: () => {
            // A whole second 1.5–2.5 s ahead, so the date (second precision) is exact.
            const endsAt = Math.ceil((Date.now() + 1_500) / 1000) * 1000;
            return { headers: { "retry-after": new Date(endsAt).toUTCString() }, endsAt };
          },
        },
        { label: "x-ratelimit-reset-requests: 1s", make: () => ({ headers: { "x-ratelimit-reset-requests": "1s" }, ms: 1000 }) },
        { label: "x-ratelimit-reset-tokens: 1000ms", make: () => ({ headers: { "x-ratelimit-reset-tokens": "1000ms" }, ms: 1000 }) },
        { label: "no header (resilience.defaultCooldownMs 1000)", make: () => ({ headers: {}, ms: 1000 }), defaultCooldownMs: 1000 },
        { label: "status 503 and retry-after-ms: 1000", make: () => ({ headers: { "retry-after-ms": "1000" }, ms: 1000 }), status: 503 },
      ];

      for (const c of cases) {
        it(`${c.status ? "" : "429 with "}${c.label}: fails over at once, the backend gets nothing until the cooldown ends, then traffic returns`, async () => {
          const { gw, b1, b2 } = await primaryAndSpare({ defaultCooldownMs: c.defaultCooldownMs ?? 10_000 });
          await warmUp(gw, [b1, b2]);

          const spec = c.make();
          b1.sim.script([{ status: c.status ?? 429, headers: spec.headers }]);
          const tStart = Date.now();
          const first = await gw.chat();
          const t0 = Date.now();
          expectServedBy(first, "b2", 2);
          expect([received(b1), received(b2)]).toEqual([1, 1]);
          // Earliest moment the cooldown can end, and latest by which it must have ended.
          const earliest = spec.endsAt ?? tStart + spec.ms!;
          const latest = spec.endsAt ?? t0 + spec.ms!;
          expect(first.ms, "no sleep before failing over").toBeLessThan(Math.min(1_000, (earliest - tStart) / 2));

          // Every 50 ms until b1 serves again: throughout the cooldown, the spare answers and b1 is not even tried.
          let duringCooldown = 0;
          const back = await pollUntil(
            "b1 to serve again after its cooldown",
            async () => {
              const r = await gw.chat();
              if (r.backend === "b1") return { r, at: Date.now() };
              expectServedBy(r, "b2");
              expect(received(b1), "b1 received a request during its cooldown").toBe(1);
              duringCooldown++;
              return undefined;
            },
            { timeoutMs: latest - Date.now() + 3_000, intervalMs: 50 },
          );
          expect(duringCooldown, "requests answered by the spare during the cooldown").toBeGreaterThanOrEqual(3);
          expectServedBy(back.r, "b1");
          expect(back.at, "b1 used again before its cooldown ended").toBeGreaterThanOrEqual(earliest - 60);
          expect(back.at - latest, "b1 used again long after its cooldown ended").toBeLessThan(1_000);
          expect(received(b1)).toBe(2);
        });
      }
    });

    // -----------------------------------------------------------------------------------------
    describe("exhaustion", () => {
      it("every backend answers 429, cooling down past the TTL → 429 naming both attempts, Retry-After of the earliest cooldown end", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        b1.sim.script([{ status: 429, headers: { "retry-after-ms": "5000" } }]);
        b2.sim.script([{ status: 429, headers: { "retry-after-ms": "4000" } }]);
        const r = await gw.chat({ S7PTTL: "1" });
        expect(r.status, r.text).toBe(429);
        expect(r.attempts).toBe(2);
        // A gateway-made 429 says when to come back: when b2's 4 s cooldown ends.
        const ms = Number(r.headers.get("retry-after-ms"));
        expect(r.headers.get("retry-after-ms")).toMatch(/^\d+$/);
        expect(ms).toBeLessThanOrEqual(4_000);
        expect(ms).toBeGreaterThanOrEqual(4_000 - r.ms - 50);
        expect(r.headers.get("retry-after")).toBe(String(Math.ceil(ms / 1000)));
        expectAttempts(sluiceError(r), [
          { backend: "b1", status: 429 },
          { backend: "b2", status: 429 },
        ]);
        expect([received(b1), received(b2)]).toEqual([1, 1]);
      });

      it("every backend answers 429, the earliest cooldown ending within the TTL → back to the queue until it ends, then served", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ status: 429, headers: { "retry-after-ms": "1500" } }]);
        b2.sim.script([{ status: 429, headers: { "retry-after-ms": "1000" } }]);
        const r = await gw.chat();
        // b2's cooldown ends first (b1 still cools): b2 serves the third attempt.
        expectServedBy(r, "b2", 3, { queued: true });
        expect([received(b1), received(b2)]).toEqual([1, 2]);
        const [throttled, served] = b2.sim.stats().requests as [SimRequest, SimRequest];
        expect(served.at - throttled.at, "b2 was called again before its cooldown ended").toBeGreaterThanOrEqual(1_000 - 20);
        expect(served.at - throttled.at, "the request was not sent as soon as the cooldown ended").toBeLessThan(1_000 + 500);
        expect(queueMsOf(r), "the wait for the cooldown is time spent queued").toBeGreaterThanOrEqual(1_000 - 100);
        expect(queueMsOf(r)).toBeLessThanOrEqual(r.ms + 5);
      });

      it("every backend answers 500 → 500 naming both attempts", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        b1.sim.script([{ status: 500 }]);
        b2.sim.script([{ status: 500 }]);
        const r = await gw.chat();
        expect(r.status, r.text).toBe(500);
        expect(r.attempts).toBe(2);
        expectAttempts(sluiceError(r), [
          { backend: "b1", status: 500 },
          { backend: "b2", status: 500 },
        ]);
      });

      it("mixed failures (500 then 503) → 502", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        b1.sim.script([{ status: 500 }]);
        b2.sim.script([{ status: 503 }]);
        const r = await gw.chat();
        expect(r.status, r.text).toBe(502);
        expect(r.attempts).toBe(2);
        expectAttempts(sluiceError(r), [
          { backend: "b1", status: 500 },
          { backend: "b2", status: 503 },
        ]);
      });

      it("every attempt timed out → 504", async () => {
        const { gw, b1, b2 } = await primaryAndSpare({ timeoutMs: 400 });
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ hang: true }]);
        b2.sim.script([{ hang: true }]);
        const r = await gw.chat();
        expect(r.status, r.text).toBe(504);
        expect(r.attempts).toBe(2);
        const error = sluiceError(r);
        expectAttempts(error, [{ backend: "b1" }, { backend: "b2" }]);
        for (const a of error.attempts!) expect(a.ms as number).toBeGreaterThanOrEqual(350);
        expect(r.ms).toBeLessThan(3_000);
      });

      it("no backend serves the model at this priority → 503, nothing contacted", async () => {
        const { gw, b1, b2 } = await primaryAndSpare({}, { b1: { priorities: ["high"] }, b2: { priorities: ["high"] } });
        const tries: Array<Record<string, string>> = [{}, { "x-priority": "low" }, { "x-priority": "normal" }];
        for (const headers of tries) {
          const r = await gw.chat(headers);
          expect(r.status, `${JSON.stringify(headers)}: ${r.text}`).toBe(503);
          expect(r.attempts).toBe(0);
          sluiceError(r);
        }
        expect([received(b1), received(b2)]).toEqual([0, 0]);
        // The same request at an accepted priority is served: it was the priority that mattered.
        expectServedBy(await gw.chat({ "x-priority": "high" }), "b1");
      });

      it("every eligible backend cooling down past the TTL → 429 with Retry-After / retry-after-ms of the earliest cooldown end, no attempt; within the TTL → waits and is served", async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ status: 429, headers: { "retry-after-ms": "2000" } }]);
        b2.sim.script([{ status: 429, headers: { "retry-after-ms": "4000" } }]);
        const tStart = Date.now();
        // A TTL shorter than either cooldown: answered at once (the test above checks that answer).
        const first = await gw.chat({ S7PTTL: "1" });
        expect(first.status, first.text).toBe(429);
        expect([received(b1), received(b2)]).toEqual([1, 1]);

        const r = await gw.chat({ S7PTTL: "1" });
        const elapsed = Date.now() - tStart;
        expect(r.status, r.text).toBe(429);
        expect(r.attempts).toBe(0);
        expect([received(b1), received(b2)], "no backend contacted while all are cooling").toEqual([1, 1]);
        const error = sluiceError(r);
        expect(error.attempts ?? []).toEqual([]);
        const ms = Number(r.headers.get("retry-after-ms"));
        expect(r.headers.get("retry-after-ms")).toMatch(/^\d+$/);
        expect(ms).toBeLessThanOrEqual(2_000);
        expect(ms).toBeGreaterThanOrEqual(2_000 - elapsed - 100);
        expect(r.headers.get("retry-after")).toBe(String(Math.ceil(ms / 1000)));

        // With the default TTL the request waits in the queue until b1's cooldown ends.
        const sent = Date.now();
        const waited = await gw.chat();
        expectServedBy(waited, "b1", 1, { queued: true });
        expect(received(b1)).toBe(2);
        expect(lastRequest(b1).at - tStart, "b1 was called again before its cooldown ended").toBeGreaterThanOrEqual(2_000 - 20);
        expect(queueMsOf(waited), "x-sluice-queue-ms").toBeGreaterThanOrEqual(tStart + 2_000 - sent - 100);
        expect(queueMsOf(waited)).toBeLessThanOrEqual(waited.ms + 5);
      });

      it("the only backend at its concurrency limit: the next request waits in the queue and reaches it only after the first finished", async () => {
        const HOLD = 600;
        const [b1] = (await env.sims(["b1"])) as [Sim];
        const gw = await env.gateway(gatewayConfig([azureBackend("b1", b1.url, { maxConcurrency: 1 })]));
        await warmUp(gw, [b1]);
        b1.sim.script([{ firstByteDelayMs: HOLD }]);
        const a = gw.chat();
        await pollUntil("b1 to receive the first request", () => received(b1) === 1, { timeoutMs: 3_000 });
        const b = gw.chat();
        const waitingSeenAt = await pollUntil("the second request to wait in the gateway's queue", async () => (await gw.waiting()) === 1 && Date.now(), {
          timeoutMs: 3_000,
          intervalMs: 10,
        });
        expect(received(b1), "b1 got a second request beyond its limit").toBe(1);
        expectServedBy(await a, "b1");
        const waited = await b;
        expectServedBy(waited, "b1", 1, { queued: true });
        expectWaitedForSlot(waited, b1, HOLD, waitingSeenAt);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe("streams", () => {
      it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("a stream failing after its first byte: the client gets the 5 events sent, then an SSE error event, no [DONE], no replay"), async () => {
        const { gw, b1, b2 } = await primaryAndSpare();
        b1.sim.script([{ reset: 5 }]);
        const res = await gw.fetch(azurePath("gpt-4o"), { body: chatBody({ stream: true }), headers: { "x-sim-fixture": "aoai2.txt" } });
        expect(res.status).toBe(200);
        expect(res.headers.get("x-sluice-backend")).toBe("b1");
        let text: string;
        try {
          text = await res.text();
        } catch (err) {
          throw new Error(`the stream was cut without an SSE error event: ${String(err)}`);
        }
        const fixture = fixtureBytes("aoai2.txt").toString("utf8");
        const sent = fixture.split("\n\n").slice(0, 5).map((e) => e + "\n\n").join("");
        expect(text.startsWith(sent), `the first 5 events pass through byte for byte; got: ${text.slice(0, 200)}`).toBe(true);
        const rest = text.slice(sent.length);
        const m = /^event: error\r?\ndata: (.*)\r?\n\r?\n$/.exec(rest);
        expect(m, `after the 5 events, exactly one SSE error event; got: ${JSON.stringify(rest)}`).not.toBeNull();
        const data = JSON.parse(m![1]!);
        expect(typeof data.error).toBe("object");
        expect(typeof data.error.message).toBe("string");
        expect(text).not.toContain("[DONE]");
        expect(sseEvents(text).map(sseEventName).filter((n) => n === "error")).toHaveLength(1);
        expect(received(b1)).toBe(1);
        expect(received(b2), "a stream that started is never replayed elsewhere").toBe(0);
      });

      it(
        seesClientLeave
          ? "a client disconnecting mid-stream cancels the upstream request at once; the stream is not buffered"
          : "a client disconnecting mid-stream is not seen by this runtime: the upstream runs to its end and then gives its lease back; the stream is not buffered",
        async () => {
        const [b1] = (await env.sims(["b1"])) as [Sim];
        const gw = await env.gateway(gatewayConfig([azureBackend("b1", b1.url, { maxConcurrency: 1 })]));
        await warmUp(gw, [b1]);
        b1.sim.script([{ paceMs: 50, chunks: seesClientLeave ? 200 : 20 }]);
        const ac = new AbortController();
        const t0 = Date.now();
        const res = await gw.fetch(azurePath("gpt-4o"), { body: chatBody({ stream: true }), signal: ac.signal });
        expect(res.status).toBe(200);
        const reader = res.body!.getReader();
        const first = await reader.read();
        expect(first.done).toBe(false);
        expect(first.value!.byteLength).toBeGreaterThan(0);
        // The whole stream takes ~10 s; the first bytes must arrive long before that.
        expect(Date.now() - t0, "first chunk arrived late: is the stream buffered?").toBeLessThan(2_000);
        expect(b1.sim.stats().open).toBe(1);
        ac.abort();
        await reader.cancel().catch(() => undefined);
        if (seesClientLeave) {
          await pollUntil("the simulator to see the stream cancelled", () => b1.sim.stats().cancelled === 1, { timeoutMs: 1_000 });
          expect(b1.sim.stats().completed).toBe(0);
        } else {
          // The bound: the stream's own end (~1 s here); then the lease is back.
          await pollUntil("the upstream stream to end", () => b1.sim.stats().completed === 1, { timeoutMs: 3_000 });
          expect(b1.sim.stats().cancelled).toBe(0);
          await pollUntil("the lease back", async () => (await gw.backendState("b1")).inFlight === 0, { timeoutMs: 1_000 });
        }
        const next = await gw.chat();
        expectServedBy(next, "b1");
        },
      );
    });

    // -----------------------------------------------------------------------------------------
    describe("circuit breaker", () => {
      const threshold = 3;
      const openMs = 1_000;

      /** Makes b1 fail `threshold` times (each request failing over to b2); returns when the last was sent. */
      async function tripBreaker(gw: Gateway, b1: Sim, b2: Sim, fault: SimFault): Promise<number> {
        b1.sim.setAlways(fault);
        let lastSent = 0;
        for (let i = 0; i < threshold; i++) {
          lastSent = Date.now();
          expectServedBy(await gw.chat(), "b2", 2);
        }
        expect(received(b1)).toBe(threshold);
        // Open: b1 is skipped, not tried.
        expectServedBy(await gw.chat(), "b2", 1);
        expect(received(b1)).toBe(threshold);
        expect(received(b2)).toBe(threshold + 1);
        return lastSent;
      }

      it("opens after consecutive failures, lets one half-open probe through after openMs, closes on success", async () => {
        const { gw, b1, b2 } = await primaryAndSpare({ failureThreshold: threshold, openMs });
        await warmUp(gw, [b1, b2]);
        const openedNotBefore = await tripBreaker(gw, b1, b2, { status: 500 });
        b1.sim.setAlways(null); // b1 recovers; only a probe can tell
        const back = await pollUntil(
          "a half-open probe to reach b1",
          async () => {
            const r = await gw.chat();
            if (r.backend === "b1") return { r, at: Date.now() };
            expectServedBy(r, "b2");
            expect(received(b1), "b1 received traffic while its circuit was open").toBe(threshold);
            return undefined;
          },
          { timeoutMs: openMs + 3_000, intervalMs: 50 },
        );
        expectServedBy(back.r, "b1");
        expect(back.at, "probe before openMs elapsed").toBeGreaterThanOrEqual(openedNotBefore + openMs - 60);
        // Closed again: group 1 takes everything.
        for (let i = 0; i < 5; i++) expectServedBy(await gw.chat(), "b1");
        expect(received(b1)).toBe(threshold + 6);
      });

      it("exactly one half-open probe; a failed probe reopens the circuit", async () => {
        const { gw, b1, b2 } = await primaryAndSpare({ failureThreshold: threshold, openMs });
        await warmUp(gw, [b1, b2]);
        const fault: SimFault = { status: 500, firstByteDelayMs: 300 };
        const openedNotBefore = await tripBreaker(gw, b1, b2, fault);
        // The gateway itself says when the circuit lets a probe through.
        await pollUntil("b1's circuit to turn half-open", async () => (await gw.backendState("b1")).breaker === "half-open", {
          timeoutMs: openMs + 3_000,
          intervalMs: 20,
        });
        expect(Date.now(), "half-open before openMs elapsed").toBeGreaterThanOrEqual(openedNotBefore + openMs - 60);
        const replies = await Promise.all(Array.from({ length: 5 }, () => gw.chat()));
        for (const r of replies) {
          expect(r.status, r.text).toBe(200);
          expect(r.backend).toBe("b2");
        }
        expect(received(b1), "exactly one probe while half-open").toBe(threshold + 1);
        expect(replies.map((r) => r.attempts).sort()).toEqual([1, 1, 1, 1, 2]);
        // The probe failed: open again, b1 skipped.
        for (let i = 0; i < 3; i++) expectServedBy(await gw.chat(), "b2", 1);
        expect(received(b1)).toBe(threshold + 1);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe("priority groups", () => {
      it("the lowest group takes all traffic while it can; the next group gets none", async () => {
        const [b1, b2, b3] = (await env.sims(["b1", "b2", "b3"])) as [Sim, Sim, Sim];
        const gw = await env.gateway(
          gatewayConfig([
            azureBackend("b1", b1.url, { group: 1 }),
            azureBackend("b2", b2.url, { group: 1 }),
            azureBackend("b3", b3.url, { group: 2 }),
          ]),
        );
        const replies: Reply[] = [];
        for (let i = 0; i < 10; i++) replies.push(await gw.chat());
        for (const r of replies) expect(r.status).toBe(200);
        // Round-robin within group 1: five each, as the backends counted them.
        expect(tally(replies.map((r) => r.backend))).toEqual({ b1: 5, b2: 5 });
        expect([received(b1), received(b2), received(b3)]).toEqual([5, 5, 0]);
      });

      it("overflow: group 2 takes a request while group 1 is at maxConcurrency, and traffic returns to group 1", async () => {
        const { gw, b1, b2 } = await primaryAndSpare({}, { b1: { maxConcurrency: 1 } });
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ firstByteDelayMs: 700 }]);
        const a = gw.chat();
        await pollUntil("b1 to receive the first request", () => received(b1) === 1, { timeoutMs: 3_000 });
        const b = await gw.chat();
        expectServedBy(b, "b2");
        expect(received(b1)).toBe(1);
        expectServedBy(await a, "b1");
        expectServedBy(await gw.chat(), "b1");
        expect(received(b2)).toBe(1);
      });

      it("backends with priorities: [high] only receive x-priority: high (name or number)", async () => {
        const { gw, b1, b2 } = await primaryAndSpare({}, { b1: { priorities: ["high"] } });
        const cases: Array<[Record<string, string>, string]> = [
          [{}, "b2"],
          [{ "x-priority": "normal" }, "b2"],
          [{ "x-priority": "low" }, "b2"],
          [{ "x-priority": "3" }, "b2"],
          [{ "x-priority": "high" }, "b1"],
          [{ "x-priority": "1" }, "b1"],
        ];
        for (const [headers, expected] of cases) {
          const r = await gw.chat(headers);
          expect(r.backend, JSON.stringify(headers)).toBe(expected);
          expectServedBy(r, expected);
        }
        expect([received(b1), received(b2)]).toEqual([2, 4]);
      });

      it("a priority group 2 does not accept never reaches it, even when group 1 is full: it waits in the queue for group 1", async () => {
        const HOLD = 800;
        const { gw, b1, b2 } = await primaryAndSpare({}, { b1: { maxConcurrency: 1 }, b2: { priorities: ["high"] } });
        await warmUp(gw, [b1, b2]);
        b1.sim.script([{ firstByteDelayMs: HOLD }]);
        const a = gw.chat();
        await pollUntil("b1 to receive the first request", () => received(b1) === 1, { timeoutMs: 3_000 });

        // high is accepted by group 2: it spills over while group 1 is full.
        expectServedBy(await gw.chat({ "x-priority": "high" }), "b2");
        expect(received(b2)).toBe(1);

        // normal is not: it waits in the gateway's queue for b1's slot.
        const normal = gw.chat({ "x-priority": "normal" });
        const waitingSeenAt = await pollUntil("the normal request to wait in the gateway's queue", async () => (await gw.waiting()) === 1 && Date.now(), {
          timeoutMs: 3_000,
          intervalMs: 10,
        });
        expect(received(b1), "b1 got a second request beyond its limit").toBe(1);
        expect(received(b2), "a normal request spilled to a high-only group").toBe(1);
        expectServedBy(await a, "b1");
        const served = await normal;
        expectServedBy(served, "b1", 1, { queued: true });
        expectWaitedForSlot(served, b1, HOLD, waitingSeenAt);
        expect(received(b2)).toBe(1);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe("strategies", () => {
      it("weighted-round-robin 2:1 over 300 sequential requests → 66.7% / 33.3% (±3 points)", { timeout: 90_000 }, async () => {
        const [b1, b2] = (await env.sims(["b1", "b2"])) as [Sim, Sim];
        const gw = await env.gateway(
          gatewayConfig([azureBackend("b1", b1.url, { weight: 2 }), azureBackend("b2", b2.url, { weight: 1 })], { strategy: "weighted-round-robin" }),
        );
        const backends: Array<string | null> = [];
        for (let i = 0; i < 300; i++) {
          const r = await gw.chat();
          expect(r.status).toBe(200);
          backends.push(r.backend);
        }
        const t = tally(backends);
        expect((t["b1"] ?? 0) + (t["b2"] ?? 0)).toBe(300);
        expect([received(b1), received(b2)]).toEqual([t["b1"] ?? 0, t["b2"] ?? 0]);
        const share = ((t["b1"] ?? 0) / 300) * 100;
        expect(share).toBeGreaterThanOrEqual(66.7 - 3);
        expect(share).toBeLessThanOrEqual(66.7 + 3);
      });

      it("latency: most traffic goes to the faster backend, and follows when the speeds swap", { timeout: 90_000 }, async () => {
        const [b1, b2] = (await env.sims(["b1", "b2"])) as [Sim, Sim];
        const gw = await env.gateway(
          gatewayConfig([azureBackend("b1", b1.url), azureBackend("b2", b2.url)], { strategy: "latency", latencyExploration: 0.2 }),
        );
        const run = async (n: number): Promise<Array<string | null>> => {
          const out: Array<string | null> = [];
          for (let i = 0; i < n; i++) {
            const r = await gw.chat();
            expect(r.status).toBe(200);
            out.push(r.backend);
          }
          return out;
        };

        b1.sim.setAlways({ firstByteDelayMs: 150 });
        const phase1 = tally((await run(40)).slice(-20));
        expect(phase1["b2"] ?? 0, `b1 slow: last 20 went ${JSON.stringify(phase1)}`).toBeGreaterThanOrEqual(12);

        b1.sim.setAlways(null);
        b2.sim.setAlways({ firstByteDelayMs: 250 });
        const phase2 = tally((await run(60)).slice(-20));
        expect(phase2["b1"] ?? 0, `b2 slow: last 20 went ${JSON.stringify(phase2)}`).toBeGreaterThanOrEqual(12);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe("affinity", () => {
      it("x-backend-affinity sends the request to that backend first, and the response names the backend", async () => {
        const [b1, b2] = (await env.sims(["b1", "b2"])) as [Sim, Sim];
        const gw = await env.gateway(gatewayConfig([azureBackend("b1", b1.url), azureBackend("b2", b2.url)], { strategy: "round-robin" }));
        // Without affinity, round-robin alternates.
        const free: Array<string | null> = [];
        for (let i = 0; i < 4; i++) free.push((await gw.chat()).backend);
        expect(tally(free)).toEqual({ b1: 2, b2: 2 });
        expect([received(b1), received(b2)]).toEqual([2, 2]);

        for (const target of ["b2", "b1"]) {
          for (let i = 0; i < 5; i++) {
            const r = await gw.chat({ "x-backend-affinity": target });
            expectServedBy(r, target);
          }
        }
        // Each backend received exactly the five sent to it.
        expect([received(b1), received(b2)]).toEqual([7, 7]);
      });

      it("affinity to a busy, failing or unknown backend falls back to another one", async () => {
        const [b1, b2] = (await env.sims(["b1", "b2"])) as [Sim, Sim];
        const gw = await env.gateway(
          gatewayConfig([azureBackend("b1", b1.url, { maxConcurrency: 1 }), azureBackend("b2", b2.url)], { strategy: "round-robin" }),
        );
        await warmUp(gw, [b1, b2]);

        // Failing: b1 answers 500 → failover to b2, which the response names.
        b1.sim.script([{ status: 500 }]);
        const failed = await gw.chat({ "x-backend-affinity": "b1" });
        expectServedBy(failed, "b2", 2);
        expect(received(b1)).toBe(1);

        // Busy: b1 at its concurrency limit.
        b1.sim.script([{ firstByteDelayMs: 600 }]);
        const hold = gw.chat({ "x-backend-affinity": "b1" });
        await pollUntil("b1 to receive the held request", () => received(b1) === 2, { timeoutMs: 3_000 });
        const busy = await gw.chat({ "x-backend-affinity": "b1" });
        expectServedBy(busy, "b2");
        expect([received(b1), received(b2)]).toEqual([2, 2]);
        expectServedBy(await hold, "b1");

        // Unknown name: ignored, so round-robin alternates as without affinity; each response names
        // the backend that counted the request.
        const unknown = [await gw.chat({ "x-backend-affinity": "no-such-backend" }), await gw.chat({ "x-backend-affinity": "no-such-backend" })];
        for (const r of unknown) expectServedBy(r, r.backend ?? "(none)");
        expect(tally(unknown.map((r) => r.backend))).toEqual({ b1: 1, b2: 1 });
        expect([received(b1), received(b2)]).toEqual([3, 3]);
      });
    });
  });
}
