/**
 * Async jobs on Azure Functions (CONTRACT §7): the HTTP function stores a job and queues its id
 * on a Storage Queue; the queue-triggered function main.ts registers runs it and writes its
 * result blob; the job resource reads it back. All of it through adapters/azure-functions/main.ts's
 * real registration with @azure/functions and the harness's host (test/harness/azure-functions.ts):
 * HTTP through the package's stream proxy, queue messages through its InvocationModel (the
 * package's own InvocationContext and typed-data conversion), against Azurite, with the retry and
 * poison-queue rules of host.json.
 */
import { randomUUID } from "node:crypto";
import { BlobServiceClient } from "@azure/storage-blob";
import { QueueServiceClient } from "@azure/storage-queue";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../src/config/schema.ts";
import { functionsGatewayWithEvents, startFunctionsApp, type FunctionsAppOptions, type RunningFunctionsApp } from "./harness/azure-functions.ts";
import { useAzurite } from "./harness/azurite.ts";
import { until } from "./harness/until.ts";
import { jobConformance } from "./jobs/job-suite.ts";

const azurite = useAzurite();

/** Container and queue names: 3-63 lowercase letters, digits and single hyphens. */
const freshName = () => `fjobs-${randomUUID().replaceAll("-", "").slice(0, 20)}`;

async function dropStorage(connectionString: string, name: string): Promise<void> {
  const queues = QueueServiceClient.fromConnectionString(connectionString);
  await Promise.allSettled([
    BlobServiceClient.fromConnectionString(connectionString).getContainerClient(name).deleteIfExists(),
    queues.getQueueClient(name).deleteIfExists(),
    queues.getQueueClient(`${name}-poison`).deleteIfExists(),
  ]);
}

/** jobs.store on the account in the app setting SLUICE_JOBS_STORAGE, on a container and queue of its own. */
const azureStore = (name: string) => ({ type: "azure" as const, connectionString: "${SLUICE_JOBS_STORAGE}", container: name, queue: name });

// A fresh container and queue per gateway, so no test sees another's jobs; polling as host.json says.
jobConformance(
  "azure functions (handlers + Azurite)",
  async (config) => {
    const name = freshName();
    const conn = azurite().connectionString;
    const start = functionsGatewayWithEvents({ AzureWebJobsStorage: conn, SLUICE_JOBS_STORAGE: conn });
    const gw = await start({ ...config, jobs: { ...config.jobs, store: azureStore(name) } });
    return {
      ...gw,
      close: async () => {
        await gw.close();
        await dropStorage(conn, name);
      },
    };
  },
  { settleMs: 15_000 },
);

const CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const ALICE = { "api-key": "alice-key" };
const body = () => JSON.stringify({ messages: [{ role: "user", content: "a long job" }], max_tokens: 8 });

describe("Azure Functions jobs: the queue trigger, the Storage Queue and the result blob", () => {
  let closers: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    closers = [];
  });

  async function sim(): Promise<RunningSimulator> {
    const s = await startSimulator({ name: "b", port: 0, paceMs: 0 });
    closers.push(() => s.close());
    return s;
  }

  const config = (backend: RunningSimulator, extra: Partial<SluiceConfigInput> = {}): SluiceConfigInput => ({
    metering: { sinks: [] },
    profiles: { jobs: { async: true } },
    auth: { defaultProfile: "jobs" },
    ...extra,
    backends: [{ name: "b", url: backend.url, kind: "azure-openai", models: ["gpt-4o"] }],
  });

  /** The app with jobs on a fresh container and queue; `settings` replaces the default app settings. */
  async function app(
    backend: RunningSimulator,
    extra: Partial<SluiceConfigInput> = {},
    options: FunctionsAppOptions = {},
    settings?: Record<string, string>,
  ): Promise<{ app: RunningFunctionsApp; name: string; conn: string }> {
    const name = freshName();
    const conn = azurite().connectionString;
    const cfg = config(backend, { ...extra, jobs: { ...extra.jobs, store: azureStore(name) } });
    const running = await startFunctionsApp({ AzureWebJobsStorage: conn, SLUICE_JOBS_STORAGE: conn, ...settings, SLUICE_CONFIG: JSON.stringify(cfg) }, options);
    closers.push(() => dropStorage(conn, name));
    closers.push(() => running.close());
    return { app: running, name, conn };
  }

  async function submit(url: string, headers: Record<string, string> = {}): Promise<{ id: string; requestId: string }> {
    const res = await fetch(url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async", ...ALICE, ...headers }, body: body() });
    const text = await res.text();
    expect(res.status, text).toBe(202);
    return JSON.parse(text) as { id: string; requestId: string };
  }

  const jobOf = async (url: string, id: string) => (await (await fetch(`${url}/_gateway/jobs/${id}`, { headers: ALICE })).json()) as { status: string; error: string | null; [k: string]: unknown };
  const waitStatus = (url: string, id: string, want: string, ms = 15_000) => until(`job ${id} ${want}`, async () => ((await jobOf(url, id)).status === want ? true : undefined), ms, 50);

  it("registers the job queue trigger on the store's queue with its connection as an app setting name, a poison-queue trigger and a sweep timer", async () => {
    const { app: running, name } = await app(await sim());
    expect([...running.functions.keys()].sort()).toEqual(["sluice", "sluice-jobs", "sluice-jobs-poison", "sluice-jobs-sweep"]);
    const trigger = (fn: string) => Object.values(running.functions.get(fn)!.bindings).find((b) => b.direction === "in");
    expect(trigger("sluice-jobs")).toMatchObject({ type: "queueTrigger", queueName: name, connection: "SLUICE_JOBS_STORAGE" });
    expect(trigger("sluice-jobs-poison")).toMatchObject({ type: "queueTrigger", queueName: `${name}-poison`, connection: "SLUICE_JOBS_STORAGE" });
    expect(trigger("sluice-jobs-sweep")).toMatchObject({ type: "timerTrigger", schedule: "0 */5 * * * *" });
    // The host's queue settings come from host.json.
    expect(running.queueHost.settings).toMatchObject({ messageEncoding: "base64", maxDequeueCount: 5, visibilityTimeoutMs: 15_000, maxPollingIntervalMs: 2_000 });
  });

  it("the HTTP function's 202 leaves a message in the Storage Queue that the registered storageQueue handler turns into a stored result blob", async () => {
    const b = await sim();
    const answer = '{"id":"chatcmpl-fn","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}';
    b.sim.script([{ status: 200, body: answer }]);
    const { app: running, name, conn } = await app(b, {}, { queues: { autoStart: false } });
    const job = await submit(running.url);

    // The message: base64 of {"id":...}, what the trigger decodes by default.
    const queue = QueueServiceClient.fromConnectionString(conn).getQueueClient(name);
    const peeked = await queue.peekMessages({ numberOfMessages: 32 });
    expect(peeked.peekedMessageItems).toHaveLength(1);
    expect(JSON.parse(Buffer.from(peeked.peekedMessageItems[0]!.messageText, "base64").toString("utf8"))).toEqual({ id: job.id });
    const container = BlobServiceClient.fromConnectionString(conn).getContainerClient(name);
    const blobs = async () => {
      const names: string[] = [];
      for await (const item of container.listBlobsFlat({ prefix: `jobs/${job.id}/` })) names.push(item.name);
      return names.sort();
    };
    expect(await blobs()).toEqual([`jobs/${job.id}/record.json`, `jobs/${job.id}/request`]);
    expect((await jobOf(running.url, job.id)).status).toBe("queued");
    expect(b.sim.stats().received).toBe(0);

    // The host's listener takes it, invokes the handler, and deletes it once it returned.
    running.queueHost.start();
    const invocation = await until("the queue trigger's invocation", () => running.queueHost.invocations.find((i) => i.function === "sluice-jobs"), 15_000, 25);
    expect(invocation).toMatchObject({ outcome: "succeeded", dequeueCount: 1, text: JSON.stringify({ id: job.id }) });
    expect(await blobs()).toEqual([`jobs/${job.id}/record.json`, `jobs/${job.id}/request`, `jobs/${job.id}/result`]);
    const props = await queue.getProperties();
    expect(props.approximateMessagesCount).toBe(0);
    expect(await jobOf(running.url, job.id)).toMatchObject({ status: "succeeded", resultStatus: 200, backend: "b" });
    const result = await fetch(`${running.url}/_gateway/jobs/${job.id}/result`, { headers: ALICE });
    expect(result.status).toBe(200);
    expect(await result.text()).toBe(answer);
    expect(b.sim.stats().received).toBe(1);
  });

  it("without jobs.store the jobs live in the app's own storage account (AzureWebJobsStorage), container and queue sluice-jobs", async () => {
    const b = await sim();
    const conn = azurite().connectionString;
    closers.push(() => dropStorage(conn, "sluice-jobs"));
    const running = await startFunctionsApp({ AzureWebJobsStorage: conn, SLUICE_CONFIG: JSON.stringify(config(b)) });
    closers.push(() => running.close());
    const trigger = Object.values(running.functions.get("sluice-jobs")!.bindings).find((x) => x.direction === "in");
    expect(trigger).toMatchObject({ queueName: "sluice-jobs", connection: "AzureWebJobsStorage" });
    const job = await submit(running.url);
    await waitStatus(running.url, job.id, "succeeded");
    expect(await BlobServiceClient.fromConnectionString(conn).getContainerClient("sluice-jobs").getBlockBlobClient(`jobs/${job.id}/result`).exists()).toBe(true);
  });

  it("a job still running on this worker is seen again later and not run twice: the handler queues its id again with the service's delay", async () => {
    const b = await sim();
    // wait=1 hands the job off after 1 s and queues its id 1 s (leaseMs) ahead; the backend takes 4 s.
    const { app: running, name, conn } = await app(b, { jobs: { leaseMs: 1000 } });
    const res = await fetch(running.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async, wait=1", ...ALICE, "x-sim-fault": JSON.stringify({ firstByteDelayMs: 4000 }) }, body: body() });
    expect(res.status).toBe(202);
    const job = (await res.json()) as { id: string };
    await waitStatus(running.url, job.id, "succeeded");
    const mine = () => running.queueHost.invocations.filter((i) => i.text.includes(job.id));
    // Delivered while it ran here (each time queued again), then once more after it ended.
    await until("a delivery after the job ended", async () => mine().length >= 2 && (await QueueServiceClient.fromConnectionString(conn).getQueueClient(name).getProperties()).approximateMessagesCount === 0, 10_000, 100);
    expect(mine().every((i) => i.outcome === "succeeded")).toBe(true);
    expect(b.sim.stats().received).toBe(1);
  });

  it("a delivery that keeps failing is retried by the host, then moved to the poison queue, whose trigger records the job failed", async () => {
    const b = await sim();
    const { app: running, name, conn } = await app(b, {}, { queues: { autoStart: false, visibilityTimeoutMs: 0 } });
    const job = await submit(running.url);
    // A request blob the store cannot read: every delivery throws.
    await BlobServiceClient.fromConnectionString(conn).getContainerClient(name).getBlockBlobClient(`jobs/${job.id}/request`).upload("junk", 4);
    running.queueHost.start();
    await waitStatus(running.url, job.id, "failed", 20_000);
    const runs = running.queueHost.invocations.filter((i) => i.function === "sluice-jobs");
    expect(runs.map((i) => [i.dequeueCount, i.outcome])).toEqual([[1, "failed"], [2, "failed"], [3, "failed"], [4, "failed"], [5, "poisoned"]]);
    expect(runs[0]!.error).toMatch(/headbytes/);
    await until("the poison trigger's invocation", () => running.queueHost.invocations.find((i) => i.function === "sluice-jobs-poison" && i.outcome === "succeeded"), 5_000, 25);
    expect((await jobOf(running.url, job.id)).error).toMatch(/could not be run/);
    expect(b.sim.stats().received).toBe(0);
  });

  it("the sweep timer deletes results past jobs.resultTtlMs", async () => {
    const b = await sim();
    const { app: running, name, conn } = await app(b, { jobs: { resultTtlMs: 1000 } });
    const job = await submit(running.url);
    await waitStatus(running.url, job.id, "succeeded");
    const container = BlobServiceClient.fromConnectionString(conn).getContainerClient(name);
    expect(await container.getBlockBlobClient(`jobs/${job.id}/result`).exists()).toBe(true);
    await new Promise((r) => setTimeout(r, 1100));
    await running.runTimer("sluice-jobs-sweep");
    expect(await container.getBlockBlobClient(`jobs/${job.id}/result`).exists()).toBe(false);
    expect((await container.getBlockBlobClient(`jobs/${job.id}/record.json`).getProperties()).metadata?.status).toBe("expired");
  });

  // close() marks the runs it stops as stopped by a shutdown, so nothing records them cancelled.
  it("a worker shutting down puts the job it runs back in the queue, queued, for another instance", async () => {
    const b = await sim();
    const { app: running, name, conn } = await app(b, { server: { shutdownGraceMs: 0 } });
    const job = await submit(running.url, { "x-sim-fault": JSON.stringify({ firstByteDelayMs: 10_000 }) });
    await until("the job at the backend", () => b.sim.stats().received === 1, 15_000, 25);
    await running.close();
    const container = BlobServiceClient.fromConnectionString(conn).getContainerClient(name);
    // Queued, and it stays so (nothing runs it any more): for two seconds after the shutdown.
    const end = Date.now() + 2000;
    while (Date.now() < end) {
      expect((await container.getBlockBlobClient(`jobs/${job.id}/record.json`).getProperties()).metadata?.status).toBe("queued");
      await new Promise((r) => setTimeout(r, 100));
    }
    const peeked = await QueueServiceClient.fromConnectionString(conn).getQueueClient(name).peekMessages({ numberOfMessages: 32 });
    expect(peeked.peekedMessageItems.map((m) => Buffer.from(m.messageText, "base64").toString("utf8"))).toContain(JSON.stringify({ id: job.id }));
  });

  it("refuses a directory job store, and an azure store whose connection string is in no app setting, at start; without storage there is no trigger and async is 501", async () => {
    const b = await sim();
    const before = { ...process.env };
    await expect(startFunctionsApp({ SLUICE_CONFIG: JSON.stringify(config(b, { jobs: { store: { type: "directory", path: "/tmp/x" } } })) })).rejects.toThrow(/"directory" cannot be used on Azure Functions/);
    const conn = azurite().connectionString;
    await expect(startFunctionsApp({ SLUICE_CONFIG: JSON.stringify(config(b, { jobs: { store: { type: "azure", connectionString: conn } } })) })).rejects.toThrow(/must be the value of an app setting/);
    expect(process.env).toEqual(before);

    const plain = await startFunctionsApp({ SLUICE_CONFIG: JSON.stringify(config(b)) });
    closers.push(() => plain.close());
    expect([...plain.functions.keys()]).toEqual(["sluice"]);
    const res = await fetch(plain.url + CHAT, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async", ...ALICE }, body: body() });
    expect(res.status).toBe(501);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("async_unavailable");
  });
});
