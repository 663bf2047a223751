/**
 * Workers (workerd via miniflare): a config naming a managed-identity backend is refused when the
 * Worker loads it — 503 invalid_config, a log line naming the field — and no backend is contacted.
 */
import type { Readable } from "node:stream";
import { Miniflare } from "miniflare";
import { describe, expect, it } from "vitest";
import { startSimulator } from "../../adapters/node/simulator-server.ts";
import { until } from "../harness/until.ts";
import { bundleWorker, COMPATIBILITY_DATE, COMPATIBILITY_FLAGS, LIMITER_CLASS, SCHEDULER_CLASS } from "../harness/workers.ts";

describe("Workers: managed identity is refused at config validation", () => {
  it("503 invalid_config, the log names backends[0].auth, the backend is never called", async () => {
    const b = await startSimulator({ name: "b" });
    const stderr: string[] = [];
    const mf = new Miniflare({
      modules: [{ type: "ESModule", path: "worker.js", contents: await bundleWorker() }],
      compatibilityDate: COMPATIBILITY_DATE,
      compatibilityFlags: COMPATIBILITY_FLAGS,
      bindings: { SLUICE_CONFIG: JSON.stringify({ metering: { sinks: [] }, backends: [{ name: "aoai", url: b.url, kind: "azure-openai", models: ["gpt-4o"], auth: { type: "managed-identity" } }] }) },
      durableObjects: { SCHEDULER: SCHEDULER_CLASS, LIMITER: LIMITER_CLASS },
      host: "127.0.0.1",
      port: 0,
      handleRuntimeStdio(out: Readable, err: Readable) {
        out.resume();
        err.setEncoding("utf8");
        err.on("data", (d: string) => stderr.push(d));
      },
    });
    try {
      const url = (await mf.ready).origin;
      const res = await fetch(`${url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }),
      });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_config");
      await until("the log line", () => stderr.join("").includes("managed-identity"), 5000);
      expect(stderr.join("")).toMatch(/backends\[0\]\.auth: backend "aoai" uses "managed-identity", which is not available on Workers/);
      expect(b.sim.stats().received).toBe(0);
    } finally {
      await mf.dispose();
      await b.close();
    }
  });
});
