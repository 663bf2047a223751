/**
 * Nothing lost (CONTRACT §7): the Node gateway process is killed outright (SIGKILL), or stopped
 * (SIGTERM) with a grace shorter than its job, while one job runs at the backend and another
 * waits in its queue; a new process on the same store finishes both. Once with the embedded directory store, once with Azure Blob + Storage Queue
 * on Azurite (where the new process is another replica as far as the store knows).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { useAzurite } from "../harness/azurite.ts";
import { freePort, gatewayProcess, processCwd } from "../harness/node.ts";
import { until } from "../harness/until.ts";

const CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const azurite = useAzurite();

let cleanup: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function startProcess(configFile: string, cwd: string) {
  const p = await gatewayProcess(configFile, cwd);
  cleanup.push(p.kill);
  return p;
}

async function restartScenario(store: SluiceConfigInput["jobs"], signal: "SIGKILL" | "SIGTERM" = "SIGKILL"): Promise<void> {
  const b: RunningSimulator = await startSimulator({ name: "b" });
  cleanup.push(() => b.close());
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "sluice-restart-"));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "config.json");
  const config: SluiceConfigInput = {
    // SIGTERM: the running job outlasts the grace, so it goes back to the queue.
    server: { host: "127.0.0.1", port, shutdownGraceMs: 200 },
    metering: { sinks: [] },
    profiles: { jobs: { async: true } },
    auth: { defaultProfile: "jobs" },
    jobs: { leaseMs: 2000, ...store },
    backends: [{ name: "b", url: b.url, kind: "azure-openai", models: ["gpt-4o"], maxConcurrency: 1 }],
  };
  writeFileSync(file, JSON.stringify(config));
  const url = `http://127.0.0.1:${port}`;
  const cwd = processCwd();
  cleanup.push(() => rmSync(cwd, { recursive: true, force: true }));

  const first = await startProcess(file, cwd);
  const submit = async (user: string) => {
    const r = await fetch(url + CHAT, {
      method: "POST",
      headers: { "content-type": "application/json", prefer: "respond-async", "api-key": "k", "x-sim-fault": JSON.stringify({ firstByteDelayMs: 1500 }) },
      body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 4, user }),
    });
    expect(r.status).toBe(202);
    return ((await r.json()) as { id: string }).id;
  };
  const status = async (id: string) => ((await (await fetch(`${url}/_gateway/jobs/${id}`, { headers: { "api-key": "k" } })).json()) as { status: string; runs: number }).status;
  const running = await submit("running");
  await until("the first job at the backend", () => b.sim.stats().received === 1, 10_000);
  const queued = await submit("queued");
  expect(await status(running)).toBe("running");
  expect(await status(queued)).toBe("queued");

  first.child.kill(signal);
  await first.exited;
  await expect(fetch(url + "/liveness")).rejects.toThrow();

  await startProcess(file, cwd);
  for (const id of [running, queued]) await until(`job ${id} succeeded after the restart`, async () => (await status(id)) === "succeeded", 30_000, 100);
  // The running job ran again (at least once): the backend saw it twice, the queued one once.
  const users = b.sim.stats().requests.map((r) => (JSON.parse(r.body) as { user: string }).user);
  expect(users.filter((u) => u === "running")).toHaveLength(2);
  expect(users.filter((u) => u === "queued")).toHaveLength(1);
  const result = await fetch(`${url}/_gateway/jobs/${queued}/result`, { headers: { "api-key": "k" } });
  expect(result.status).toBe(200);
  expect(((await result.json()) as { object: string }).object).toBe("chat.completion");
}

describe("async jobs survive a stop of the Node gateway", () => {
  it("directory store: the running job runs again and the queued one runs, both succeed", async () => {
    const jobsDir = mkdtempSync(join(tmpdir(), "sluice-restart-jobs-"));
    cleanup.push(() => rmSync(jobsDir, { recursive: true, force: true }));
    await restartScenario({ store: { type: "directory", path: jobsDir } });
  }, 60_000);

  it("directory store, SIGTERM with a grace shorter than the running job: it goes back to the queue, not cancelled, and both succeed after the restart", async () => {
    const jobsDir = mkdtempSync(join(tmpdir(), "sluice-restart-jobs-"));
    cleanup.push(() => rmSync(jobsDir, { recursive: true, force: true }));
    await restartScenario({ store: { type: "directory", path: jobsDir } }, "SIGTERM");
  }, 60_000);

  it("Azure Blob + Storage Queue (Azurite): after the lease ends the new process finishes both", async () => {
    const name = `restart-${Date.now().toString(36)}`;
    await restartScenario({ store: { type: "azure", connectionString: azurite().connectionString, container: name, queue: name } });
  }, 60_000);
});
