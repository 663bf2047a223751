/**
 * The async jobs conformance suite (CONTRACT §7): one file, run on every runtime and job store
 * (Node with the directory store and with Azure Blob + Storage Queue on Azurite, Azure
 * Functions with its queue trigger, Workers with Queues + R2 + a Durable Object). Backends are
 * simulators on 127.0.0.1; clients are the global fetch; what is asserted is what a caller sees:
 * the 202 and its headers, the job's status as it changes, the stored result's bytes, who may
 * see a job, what the backend saw of a cancel, the usage events.
 */
import { createHash, createHmac } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { UsageEvent } from "../../src/metering/events.ts";
import { fixtureBytes } from "../conformance/helpers.ts";
import { HAVE_SHARED_FIXTURES, needsFixtures } from "../harness/shared-fixtures.ts";
import type { GatewayWithEvents, StartGatewayWithEvents } from "../harness/types.ts";
import { until } from "../harness/until.ts";

const CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const ALICE = { "api-key": "alice-key" };
const BOB = { "api-key": "bob-key" };
const SECRET = "a-webhook-secret-of-some-length";

export interface JobSuiteOptions {
  /** How long a status poll may take to see a change (a queue trigger polls on its own schedule). */
  settleMs?: number;
}

interface Job {
  id: string;
  status: string;
  [k: string]: unknown;
}

export function jobConformance(runtime: string, start: StartGatewayWithEvents, options: JobSuiteOptions = {}): void {
  const settleMs = options.settleMs ?? 10_000;
  describe(`async jobs conformance [${runtime}]`, () => {
    let closers: Array<() => Promise<unknown>> = [];
    afterEach(async () => {
      for (const c of closers.reverse()) await c().catch(() => undefined);
      closers = [];
    });

    async function sim(name: string): Promise<RunningSimulator> {
      const s = await startSimulator({ name, port: 0, paceMs: 0 });
      closers.push(() => s.close());
      return s;
    }

    async function gateway(backend: RunningSimulator, extra: Partial<SluiceConfigInput> = {}, backendExtra: Record<string, unknown> = {}): Promise<GatewayWithEvents> {
      const gw = await start({
        profiles: { jobs: { async: true }, sync: {} },
        auth: { defaultProfile: "jobs" },
        ...extra,
        backends: [{ name: "b", url: backend.url, kind: "azure-openai", models: ["gpt-4o"], ...backendExtra }],
      });
      closers.push(() => gw.close());
      return gw;
    }

    const body = (extra: Record<string, unknown> = {}) => JSON.stringify({ messages: [{ role: "user", content: "a long job" }], max_tokens: 8, ...extra });

    async function submit(gw: GatewayWithEvents, headers: Record<string, string>, payload = body()): Promise<{ res: Response; job: Job; ms: number }> {
      const t = Date.now();
      const res = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async", ...headers }, body: payload });
      const ms = Date.now() - t;
      const text = await res.text();
      expect(res.status, text).toBe(202);
      return { res, job: JSON.parse(text) as Job, ms };
    }

    const getJob = async (gw: GatewayWithEvents, id: string, who = ALICE) => {
      const r = await fetch(`${gw.url}/_gateway/jobs/${id}`, { headers: who });
      return { status: r.status, job: (await r.json()) as Job };
    };

    const statusOf = async (gw: GatewayWithEvents, id: string) => (await getJob(gw, id)).job.status;

    /** Polls the job until its status is `want`, recording every status seen on the way. */
    async function waitFor(gw: GatewayWithEvents, id: string, want: string, seen: string[] = [], timeoutMs = settleMs): Promise<Job> {
      return until(
        `job ${id} ${want}`,
        async () => {
          const { job } = await getJob(gw, id);
          if (seen.at(-1) !== job.status) seen.push(job.status);
          return job.status === want ? job : undefined;
        },
        timeoutMs,
        25,
      );
    }

    const asyncEvents = (gw: GatewayWithEvents, requestId: string): UsageEvent[] => gw.events().filter((e) => e.requestId === requestId);

    it("202 at once for a backend that takes 20 s, with Location, Operation-Location and Preference-Applied; DELETE while it runs cancels the backend request", async () => {
      const b = await sim("b");
      const gw = await gateway(b);
      // Ten chunks two seconds apart: the answer takes 20 s.
      const { res, job, ms } = await submit(gw, { ...ALICE, "x-sim-fault": JSON.stringify({ paceMs: 2000, chunks: 10 }) }, body({ stream: true }));
      expect(ms).toBeLessThan(1000);
      expect(res.headers.get("location")).toBe(`/_gateway/jobs/${job.id}`);
      expect(res.headers.get("operation-location")).toBe(`${gw.url}/_gateway/jobs/${job.id}`);
      expect(res.headers.get("preference-applied")).toBe("respond-async");
      expect(res.headers.get("retry-after")).toMatch(/^\d+$/);
      expect(job).toMatchObject({ status: "queued", object: "sluice.job" });
      expect(job.id).toMatch(/^[0-9a-f-]{36}$/);

      await waitFor(gw, job.id, "running");
      await until("the backend streaming the job's answer", () => b.sim.stats().open === 1, settleMs);
      const del = await fetch(`${gw.url}/_gateway/jobs/${job.id}`, { method: "DELETE", headers: ALICE });
      expect(del.status).toBe(200);
      expect(((await del.json()) as Job).status).toBe("cancelled");
      await until("the backend seeing its connection closed", () => b.sim.stats().cancelled === 1, settleMs);
      expect(b.sim.stats().completed).toBe(0);
      expect(await statusOf(gw, job.id)).toBe("cancelled");
      const result = await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE });
      expect(result.status).toBe(410);
      expect(((await result.json()) as { error: { code: string } }).error.code).toBe("job_cancelled");
      const events = await until("the job's usage event", () => (asyncEvents(gw, job.requestId as string).length ? asyncEvents(gw, job.requestId as string) : undefined), settleMs);
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ async: true, backend: "b" });
    });

    it("status goes queued → running → succeeded; the result is the backend's JSON byte for byte, with its status and headers; one usage event with async: true", async () => {
      const b = await sim("b");
      const gw = await gateway(b, {}, { maxConcurrency: 1 });
      // The backend's one slot is taken for 1.5 s: the job waits in the gateway's queue.
      const blocker = fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", ...ALICE, "x-sim-fault": JSON.stringify({ firstByteDelayMs: 1500 }) }, body: body() });
      await until("the blocker at the backend", () => b.sim.stats().received === 1, settleMs);
      const answer = '{ "id":"chatcmpl-job", "object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"\u00a1Hecho! \u2603"},"finish_reason":"stop"}],\n "usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}}\n';
      // The job's answer takes 800 ms to start: long enough to be seen running.
      b.sim.script([{ status: 200, body: answer, headers: { "x-backend-says": "hello" }, firstByteDelayMs: 800 }]);
      const { job } = await submit(gw, ALICE);
      const seen: string[] = [await statusOf(gw, job.id)];
      expect(seen).toEqual(["queued"]);
      expect((await blocker).status).toBe(200);
      const done = await waitFor(gw, job.id, "succeeded", seen);
      expect(seen).toEqual(["queued", "running", "succeeded"]);
      expect(done).toMatchObject({ status: "succeeded", backend: "b", resultStatus: 200, attempts: 1, usage: { promptTokens: 11, completionTokens: 4, totalTokens: 15 } });
      expect(b.sim.stats().received).toBe(2);

      const result = await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE });
      expect(result.status).toBe(200);
      expect(result.headers.get("x-backend-says")).toBe("hello");
      expect(result.headers.get("content-type")).toContain("application/json");
      expect(result.headers.get("x-sluice-job-status")).toBe("succeeded");
      expect(result.headers.get("x-sluice-backend")).toBe("b");
      expect(Buffer.from(await result.arrayBuffer()).equals(Buffer.from(answer)), "result bytes equal the backend's").toBe(true);
      // Read twice: the result stays until it expires.
      expect(await (await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE })).text()).toBe(answer);

      const events = await until("the job's usage event", () => (asyncEvents(gw, job.requestId as string).length ? asyncEvents(gw, job.requestId as string) : undefined), settleMs);
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ async: true, status: 200, backend: "b", totalTokens: 15, caller: expect.stringMatching(/^key:/) });
      // The blocker's own event is not async.
      expect(gw.events().filter((e) => e.async)).toHaveLength(1);
    });

    it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("a streamed answer is stored as the SSE bytes the backend sent (aoai2.txt), and the job's usage comes from the stream"), async () => {
      const b = await sim("b");
      const gw = await gateway(b);
      const { job } = await submit(gw, { ...ALICE, "x-sim-fixture": "aoai2.txt" }, body({ stream: true, stream_options: { include_usage: true } }));
      const done = await waitFor(gw, job.id, "succeeded");
      const result = await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE });
      expect(result.status).toBe(200);
      expect(result.headers.get("content-type")).toContain("text/event-stream");
      const bytes = Buffer.from(await result.arrayBuffer());
      const expected = fixtureBytes("aoai2.txt");
      expect(bytes.length).toBe(expected.length);
      expect(createHash("sha256").update(bytes).digest("hex")).toBe(createHash("sha256").update(expected).digest("hex"));
      expect((done.usage as { totalTokens: number }).totalTokens).toBeGreaterThan(0);
      const events = await until("the job's usage event", () => (asyncEvents(gw, job.requestId as string).length ? asyncEvents(gw, job.requestId as string) : undefined), settleMs);
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ async: true, stream: true, totalTokens: (done.usage as { totalTokens: number }).totalTokens });
    });

    it("only the caller that created a job sees it: another caller gets 404 for the job, its result and DELETE, and its DELETE changes nothing", async () => {
      const b = await sim("b");
      const gw = await gateway(b);
      const { job } = await submit(gw, ALICE);
      await waitFor(gw, job.id, "succeeded");
      for (const [method, path] of [["GET", ""], ["GET", "/result"], ["DELETE", ""]] as const) {
        const r = await fetch(`${gw.url}/_gateway/jobs/${job.id}${path}`, { method, headers: BOB });
        expect(r.status, `${method} ${path} as another caller`).toBe(404);
        expect(((await r.json()) as { error: { code: string } }).error.code).toBe("job_not_found");
      }
      expect((await fetch(`${gw.url}/_gateway/jobs/00000000-0000-0000-0000-000000000000`, { headers: ALICE })).status).toBe(404);
      expect((await fetch(`${gw.url}/_gateway/jobs/not..an..id`, { headers: ALICE })).status).toBe(404);
      expect((await getJob(gw, job.id)).job.status).toBe("succeeded");
      expect((await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE })).status).toBe(200);
      // DELETE of a job that has ended is a conflict, not a cancel.
      expect((await fetch(`${gw.url}/_gateway/jobs/${job.id}`, { method: "DELETE", headers: ALICE })).status).toBe(409);
    });

    it("a result past jobs.resultTtlMs is gone: the job says expired and its result is 410", async () => {
      const b = await sim("b");
      const gw = await gateway(b, { jobs: { resultTtlMs: 1000 } });
      const { job } = await submit(gw, ALICE);
      const done = await waitFor(gw, job.id, "succeeded");
      expect(done.expiresAt).toEqual(expect.any(String));
      await new Promise((r) => setTimeout(r, 1100));
      expect(await statusOf(gw, job.id)).toBe("expired");
      const result = await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE });
      expect(result.status).toBe(410);
      expect(((await result.json()) as { error: { code: string } }).error.code).toBe("job_expired");
    });

    it("Prefer: respond-async, wait=2: a backend answering in 0.5 s gives a normal 200; one taking 5 s gives a 202 after about 2 s, and the job completes", async () => {
      const b = await sim("b");
      const gw = await gateway(b);
      const quick = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async, wait=2", ...ALICE, "x-sim-fault": JSON.stringify({ firstByteDelayMs: 500 }) }, body: body() });
      expect(quick.status).toBe(200);
      expect(quick.headers.get("preference-applied")).toBeNull();
      expect(((await quick.json()) as { object: string }).object).toBe("chat.completion");

      const t = Date.now();
      const slow = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async, wait=2", ...ALICE, "x-sim-fault": JSON.stringify({ firstByteDelayMs: 5000 }) }, body: body() });
      const ms = Date.now() - t;
      expect(slow.status).toBe(202);
      expect(ms).toBeGreaterThanOrEqual(1900);
      expect(ms).toBeLessThan(4500);
      const job = (await slow.json()) as Job;
      expect(job.status).toBe("running");
      const done = await waitFor(gw, job.id, "succeeded");
      expect(done).toMatchObject({ backend: "b", resultStatus: 200 });
      // One backend request for the handed-off job: it ran on, it was not sent again.
      expect(b.sim.stats().received).toBe(2);
      const events = gw.events();
      expect(events.filter((e) => !e.async)).toHaveLength(1);
      await until("the job's usage event", () => gw.events().some((e) => e.async && e.requestId === job.requestId), settleMs);
      expect(gw.events().filter((e) => e.async)).toHaveLength(1);
    });

    it("priority holds for jobs: with the backend full, a high job runs before low jobs queued earlier", async () => {
      const b = await sim("b");
      const gw = await gateway(b, {}, { maxConcurrency: 1 });
      const blocker = fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", ...ALICE, "x-sim-fault": JSON.stringify({ firstByteDelayMs: 2500 }) }, body: body() });
      await until("the blocker at the backend", () => b.sim.stats().received === 1, settleMs);
      const lows: Job[] = [];
      for (let i = 0; i < 3; i++) lows.push((await submit(gw, { ...ALICE, "x-priority": "low" }, body({ user: `low-${i}` }))).job);
      const high = (await submit(gw, { ...ALICE, "x-priority": "high" }, body({ user: "high" }))).job;
      expect((await blocker).status).toBe(200);
      for (const j of [...lows, high]) await waitFor(gw, j.id, "succeeded");
      const order = b.sim
        .stats()
        .requests.slice(1)
        .map((r) => (JSON.parse(r.body) as { user: string }).user);
      // High first; the low ones in any order among themselves (a platform queue may deliver them in any order).
      expect(order[0]).toBe("high");
      expect(order.slice(1).sort()).toEqual(["low-0", "low-1", "low-2"]);
      expect((await getJob(gw, high.id)).job.priority).toBeLessThan((await getJob(gw, lows[0]!.id)).job.priority as number);
    });

    it("a job that cannot get a backend within its TTL (S7PTTL) fails with the 412 stored as its answer, and never reaches the backend", async () => {
      const b = await sim("b");
      const gw = await gateway(b, {}, { maxConcurrency: 1 });
      const blocker = fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", ...ALICE, "x-sim-fault": JSON.stringify({ firstByteDelayMs: 2500 }) }, body: body() });
      await until("the blocker at the backend", () => b.sim.stats().received === 1, settleMs);
      const { job } = await submit(gw, { ...ALICE, s7pttl: "1" });
      const failed = await waitFor(gw, job.id, "failed");
      expect(failed).toMatchObject({ resultStatus: 412, backend: null });
      const result = await fetch(`${gw.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE });
      expect(result.status).toBe(412);
      expect(((await result.json()) as { error: { code: string } }).error.code).toBe("ttl_expired");
      expect((await blocker).status).toBe(200);
      expect(b.sim.stats().received).toBe(1);
    });

    it("refusals: a caller whose profile has no async gets 403, a malformed Prefer 400, and neither reaches the backend", async () => {
      const b = await sim("b");
      const gw = await gateway(b, { auth: { defaultProfile: "sync" } });
      const denied = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async", ...ALICE }, body: body() });
      expect(denied.status).toBe(403);
      expect(((await denied.json()) as { error: { code: string } }).error.code).toBe("async_not_allowed");
      const s7p = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", s7pasyncmode: "true", ...ALICE }, body: body() });
      expect(s7p.status).toBe(403);
      for (const prefer of ["respond-async, wait=soon", "respond-async; =", "wait=-1, respond-async"]) {
        const bad = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer, ...ALICE }, body: body() });
        expect(bad.status, prefer).toBe(400);
        expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("invalid_prefer");
      }
      expect(b.sim.stats().received).toBe(0);
      // A preference the gateway does not know is ignored (RFC 7240): a normal answer.
      const other = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "return=minimal", ...ALICE }, body: body() });
      expect(other.status).toBe(200);
    });

    it("S7PAsyncMode: true is a job too; the webhook gets exactly one signed notification per finished job, and a retry when the first delivery fails", async () => {
      const b = await sim("b");
      const hook = await webhookReceiver([500]);
      closers.push(() => hook.close());
      const gw = await gateway(b, { profiles: { jobs: { async: true, notify: { webhook: { url: hook.url, secret: SECRET, backoffMs: 50 } } } } });
      const res = await fetch(gw.url + CHAT, { method: "POST", headers: { "content-type": "application/json", s7pasyncmode: "true", ...ALICE }, body: body() });
      expect(res.status).toBe(202);
      const job = (await res.json()) as Job;
      await waitFor(gw, job.id, "succeeded");
      await until("two deliveries", () => hook.received.length === 2, settleMs);
      await new Promise((r) => setTimeout(r, 300));
      expect(hook.received).toHaveLength(2);
      for (const [i, d] of hook.received.entries()) {
        expect(d.headers["x-sluice-delivery-attempt"]).toBe(String(i + 1));
        expect(d.headers["x-sluice-job-id"]).toBe(job.id);
        const expected = createHmac("sha256", SECRET).update(`${d.headers["x-sluice-timestamp"]}.${d.body}`).digest("hex");
        expect(d.headers["x-sluice-signature"]).toBe(`sha256=${expected}`);
        expect(JSON.parse(d.body)).toMatchObject({ type: "job.finished", job: { id: job.id, status: "succeeded", resultStatus: 200 } });
      }
    });
  });
}

interface Delivery {
  headers: Record<string, string>;
  body: string;
}

/** A webhook endpoint that answers the given statuses in turn (then 200), keeping what it received. */
async function webhookReceiver(statuses: number[]): Promise<{ url: string; received: Delivery[]; close(): Promise<void> }> {
  const received: Delivery[] = [];
  const plan = [...statuses];
  const server: Server = createServer((req: IncomingMessage, res) => {
    const parts: Buffer[] = [];
    req.on("data", (c: Buffer) => parts.push(c));
    req.on("end", () => {
      received.push({ headers: req.headers as Record<string, string>, body: Buffer.concat(parts).toString("utf8") });
      res.writeHead(plan.shift() ?? 200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    received,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
