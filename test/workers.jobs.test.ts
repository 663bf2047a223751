/**
 * The async jobs conformance suite on workerd (miniflare): the gateway Worker with the bindings
 * wrangler.toml declares for jobs — the JOBS Queue (the Worker its own consumer), JOB_RESULTS in
 * R2 and the JobStateObject — so a job is submitted over HTTP, delivered by the queue to the
 * Worker's `queue` handler, run through the Durable Object scheduler, and its result streamed
 * to R2.
 *
 * jobs.leaseMs is lowered to 3 s (unless the suite sets it), so the Workers-only paths come up
 * within a test: a running job heartbeats every second (how a runner in another isolate sees a
 * DELETE; in this one isolate the DELETE reaches the run at once, which the last test checks with
 * a lease too long to help), and a handoff's safety copy in the queue is delivered while the job
 * still runs here (the consumer retries it). The consumer lets a batch fill for 1 s, so each job
 * starts about a second after its 202. Miniflare dispatches one batch of a queue at a time, where
 * the platform runs several consumer invocations at once.
 */
import type { Readable } from "node:stream";
import { Miniflare } from "miniflare";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator } from "../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../src/config/schema.ts";
import { until } from "./harness/until.ts";
import { bundleWorker, COMPATIBILITY_DATE, COMPATIBILITY_FLAGS, JOB_STATE_CLASS, jobOptions, LIMITER_CLASS, SCHEDULER_CLASS, startWorkersJobsGatewayWithEvents } from "./harness/workers.ts";
import { jobConformance } from "./jobs/job-suite.ts";

const LEASE_MS = 3000;

jobConformance(
  "workers (miniflare)",
  (config: SluiceConfigInput) => startWorkersJobsGatewayWithEvents({ ...config, jobs: { leaseMs: LEASE_MS, ...config.jobs } }),
  { settleMs: 15_000 },
);

/** A gateway Worker with some of the job bindings, its stderr kept, R2 reachable from the test. */
async function startWith(config: SluiceConfigInput, bind: { queue?: boolean; bucket?: boolean; state?: boolean }) {
  const stderr: string[] = [];
  const all = jobOptions();
  const mf = new Miniflare({
    modules: [{ type: "ESModule", path: "worker.js", contents: await bundleWorker() }],
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: COMPATIBILITY_FLAGS,
    bindings: { SLUICE_CONFIG: JSON.stringify({ metering: { sinks: [] }, ...config }) },
    durableObjects: { SCHEDULER: SCHEDULER_CLASS, LIMITER: LIMITER_CLASS, ...(bind.state ? { JOB_STATE: JOB_STATE_CLASS } : {}) },
    ...(bind.queue ? { queueProducers: all.queueProducers, queueConsumers: all.queueConsumers } : {}),
    ...(bind.bucket ? { r2Buckets: all.r2Buckets } : {}),
    host: "127.0.0.1",
    port: 0,
    handleRuntimeStdio(out: Readable, err: Readable) {
      out.resume();
      err.setEncoding("utf8");
      err.on("data", (d: string) => stderr.push(d));
    },
  });
  const url = (await mf.ready).origin;
  return { mf, url, stderr: () => stderr.join("") };
}

describe("jobs on Workers: bindings and config", () => {
  const CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
  const request = (url: string, headers: Record<string, string> = {}) =>
    fetch(url + CHAT, { method: "POST", headers: { "content-type": "application/json", "api-key": "k", ...headers }, body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 4 }) });
  let closers: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    closers = [];
  });
  async function backend() {
    const s = await startSimulator({ name: "b", port: 0, paceMs: 0 });
    closers.push(() => s.close());
    return s;
  }
  const base = (url: string, extra: Partial<SluiceConfigInput> = {}): SluiceConfigInput => ({
    profiles: { jobs: { async: true } },
    auth: { defaultProfile: "jobs" },
    backends: [{ name: "b", url, kind: "azure-openai", models: ["gpt-4o"] }],
    ...extra,
  });

  it("refuses a config naming jobs.store: the gateway answers 503 invalid_config and its log names the field", async () => {
    const b = await backend();
    const gw = await startWith(base(b.url, { jobs: { store: { type: "directory", path: "/tmp/x" } } }), { queue: true, bucket: true, state: true });
    closers.push(() => gw.mf.dispose());
    const res = await request(gw.url);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_config");
    await until("the log line", () => gw.stderr().includes("jobs.store"), 5000);
    expect(gw.stderr()).toMatch(/jobs\.store: .*not available on Workers.*JOBS.*JOB_RESULTS.*JOB_STATE/);
    expect(b.sim.stats().received).toBe(0);
  });

  it("with only some of the bindings, logs the missing ones and serves without jobs (async is 501, the rest works)", async () => {
    const b = await backend();
    const gw = await startWith(base(b.url), { queue: true });
    closers.push(() => gw.mf.dispose());
    expect((await request(gw.url)).status).toBe(200);
    const async = await request(gw.url, { prefer: "respond-async" });
    expect(async.status).toBe(501);
    expect(((await async.json()) as { error: { code: string } }).error.code).toBe("async_unavailable");
    await until("the log line", () => gw.stderr().includes("async jobs are off"), 5000);
    expect(gw.stderr()).toMatch(/bindings JOB_RESULTS, JOB_STATE are missing/);
    expect(gw.stderr()).not.toMatch(/bindings [A-Z_, ]*\bJOBS\b[A-Z_, ]* are missing/);
  });

  it("the cron trigger sweeps results past their retention out of R2 (and the job says expired)", async () => {
    const b = await backend();
    const gw = await startWith(base(b.url, { jobs: { resultTtlMs: 1000, leaseMs: LEASE_MS } }), { queue: true, bucket: true, state: true });
    closers.push(() => gw.mf.dispose());
    const submitted = await request(gw.url, { prefer: "respond-async" });
    expect(submitted.status).toBe(202);
    const { id } = (await submitted.json()) as { id: string };
    const status = async () => ((await (await fetch(`${gw.url}/_gateway/jobs/${id}`, { headers: { "api-key": "k" } })).json()) as { status: string }).status;
    await until("the job done", async () => (await status()) === "succeeded", 15_000, 50);
    const bucket = await gw.mf.getR2Bucket("JOB_RESULTS");
    const keys = async () => (await bucket.list()).objects.map((o) => o.key).sort();
    expect(await keys()).toEqual([`jobs/${id}/request`, `jobs/${id}/result`]);
    await new Promise((r) => setTimeout(r, 1100));
    const worker = await gw.mf.getWorker();
    await worker.scheduled({ cron: "*/15 * * * *" });
    expect(await keys()).toEqual([]);
    expect(await status()).toBe("expired");
  });
});

describe("jobs on Workers: cancelling across invocations", () => {
  const CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
  let closers: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    closers = [];
  });

  it("a DELETE (one invocation) of a handed-off job (running in its request's invocation) cancels the backend request at once", async () => {
    const b = await startSimulator({ name: "b", port: 0, paceMs: 0 });
    closers.push(() => b.close());
    // A lease far longer than the test: the cancel cannot come from the run's heartbeat.
    const gw = await startWorkersJobsGatewayWithEvents({
      profiles: { jobs: { async: true } },
      auth: { defaultProfile: "jobs" },
      jobs: { leaseMs: 600_000 },
      backends: [{ name: "b", url: b.url, kind: "azure-openai", models: ["gpt-4o"] }],
    });
    closers.push(() => gw.close());
    const res = await fetch(gw.url + CHAT, {
      method: "POST",
      headers: { "content-type": "application/json", "api-key": "k", prefer: "respond-async, wait=1", "x-sim-fault": JSON.stringify({ firstByteDelayMs: 3000, paceMs: 2000, chunks: 10 }) },
      body: JSON.stringify({ messages: [{ role: "user", content: "a long job" }], max_tokens: 8, stream: true }),
    });
    expect(res.status).toBe(202);
    const job = (await res.json()) as { id: string; status: string };
    await until("the backend streaming", () => b.sim.stats().open === 1, 10_000);
    const del = await fetch(`${gw.url}/_gateway/jobs/${job.id}`, { method: "DELETE", headers: { "api-key": "k" } });
    expect(del.status).toBe(200);
    expect(((await del.json()) as { status: string }).status).toBe("cancelled");
    await until("the backend seeing its connection closed", () => b.sim.stats().cancelled === 1, 10_000);
    expect(b.sim.stats().completed).toBe(0);
  });
});
