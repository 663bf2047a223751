/**
 * `server.workers: 2`: the `sluice` command as two worker processes behind one port (Node's
 * cluster module), sharing one capacity through Redis. Counted at the backend: never more than
 * its maxConcurrency at once, though both workers serve; a worker that dies is replaced; SIGTERM
 * to the primary drains both and exits 0.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { chatBody, closeAfterEach, onClose, post, sim } from "../harness/e2e.ts";
import { freePort, gatewayProcess, processCwd } from "../harness/node.ts";
import { useRedis } from "../harness/redis.ts";
import { until } from "../harness/until.ts";

closeAfterEach();
const redis = useRedis();
const CHAT = "/v1/chat/completions";

/** The pids of the primary's worker processes. */
function workersOf(pid: number): number[] {
  try {
    return execFileSync("pgrep", ["-P", String(pid)], { encoding: "utf8" }).trim().split("\n").filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe("server.workers: several gateway processes behind one port", () => {
  it("two workers share one capacity through Redis; a killed worker is replaced; SIGTERM drains and exits 0", async () => {
    const b = await sim("b");
    b.sim.setAlways({ paceMs: 10 });
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "sluice-workers-"));
    const cwd = processCwd();
    onClose(async () => {
      rmSync(dir, { recursive: true, force: true });
      rmSync(cwd, { recursive: true, force: true });
    });
    const config: SluiceConfigInput = {
      server: { host: "127.0.0.1", port, workers: 2, shutdownGraceMs: 5_000 },
      metering: { sinks: [] },
      state: { redis: { url: redis().url, keyPrefix: `w${Date.now().toString(36)}:`, leaseMs: 2000 } },
      backends: [{ name: "b", url: b.url, kind: "openai", models: ["gpt-4o"], maxConcurrency: 2 }],
    };
    const file = join(dir, "config.json");
    writeFileSync(file, JSON.stringify(config));
    const gw = await gatewayProcess(file, cwd);
    onClose(gw.kill);
    const url = `http://127.0.0.1:${port}`;
    await until("two workers listening", () => (gw.output().match(/listening on/g) ?? []).length === 2, 20_000, 50);
    const [w1, w2] = workersOf(gw.child.pid!);
    expect(w2).toBeDefined();

    // Both workers are replicas of one shared state: the slots held against maxConcurrency add up across them.
    const streamed = chatBody("gpt-4o", { stream: true });
    const statuses = await Promise.all(Array.from({ length: 40 }, () => post(url + CHAT, streamed).then(async (r) => (await r.text(), r.status))));
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(b.sim.stats().received).toBe(40);
    expect(b.sim.stats().peakOpen).toBe(2);
    const replicas = new Set<number>();
    await until("both workers seen by the shared state", async () => {
      const h = (await (await fetch(`${url}/_gateway/health`)).json()) as { sharedState?: { backends?: { replicas: number }[] } };
      for (const x of h.sharedState?.backends ?? []) replicas.add(x.replicas);
      return replicas.has(2);
    }, 5_000, 50);

    // A worker killed outright: the primary starts another, and requests keep being answered.
    process.kill(w1!, "SIGKILL");
    await until("a replacement worker", () => {
      const now = workersOf(gw.child.pid!);
      return now.length === 2 && !now.includes(w1!);
    }, 10_000, 50);
    await until("the replacement listening", () => (gw.output().match(/listening on/g) ?? []).length === 3, 20_000, 50);
    for (let i = 0; i < 4; i++) expect((await post(url + CHAT, chatBody())).status).toBe(200);

    // SIGTERM to the primary: an answer in flight completes, then the process exits 0.
    b.sim.script([{ paceMs: 100 }]);
    const inFlight = post(url + CHAT, streamed).then(async (r) => ({ status: r.status, text: await r.text() }));
    await until("the slow answer at the backend", () => b.sim.stats().open === 1, 5_000, 5);
    gw.child.kill("SIGTERM");
    const done = await inFlight;
    expect(done.status).toBe(200);
    expect(done.text).toContain("[DONE]");
    await gw.exited;
    expect(gw.child.exitCode).toBe(0);
  });
});
