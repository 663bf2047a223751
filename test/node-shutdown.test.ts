import { freePort, processCwd } from "./harness/node.ts";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";

const root = fileURLToPath(new URL("..", import.meta.url));

describe("Node process: graceful SIGTERM", () => {
  let sim: RunningSimulator;
  beforeAll(async () => {
    sim = await startSimulator({ name: "slow" });
  });
  afterAll(() => sim.close());

  it("stops accepting, finishes the in-flight stream, exits 0", async () => {
    const port = await freePort();
    const file = join(mkdtempSync(join(tmpdir(), "sluice-sigterm-")), "config.json");
    writeFileSync(file, JSON.stringify({ server: { host: "127.0.0.1", port, shutdownGraceMs: 10_000 }, backends: [{ name: "slow", url: sim.url, models: ["gpt-4o"] }] }));
    const child = spawn(join(root, "node_modules/.bin/tsx"), [join(root, "adapters/node/main.ts"), "--config", file], { cwd: processCwd(), stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    for (let i = 0; i < 200 && !out.includes("listening"); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).toContain("listening");

    const url = `http://127.0.0.1:${port}/v1/chat/completions`;
    const res = await fetch(url, {
      method: "POST",
      headers: { "x-sim-fault": JSON.stringify({ paceMs: 40, chunks: 20 }) },
      body: JSON.stringify({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: "hi" }] }),
    });
    expect(res.status).toBe(200);
    const text = res.text();
    child.kill("SIGTERM");
    const body = await text;
    expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
    expect(await exited).toBe(0);
    await expect(fetch(url, { method: "POST", body: "{}" })).rejects.toThrow();
  });
});
