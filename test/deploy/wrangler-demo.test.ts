/**
 * `wrangler dev` with the repository's wrangler.toml as shipped serves the demo: wrangler's own
 * dev server (unstable_dev: the same config reading, bundling, bindings and miniflare/workerd as
 * `npx wrangler dev`), no variable set, answers from the simulated backends the Worker serves itself.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { unstable_dev, unstable_readConfig, type Unstable_DevWorker } from "wrangler";
import { parseConfigText } from "../../src/config/load.ts";

const root = fileURLToPath(new URL("../../", import.meta.url));
const entry = join(root, "adapters/cloudflare/worker.ts");

describe("wrangler.toml as shipped: `wrangler dev` serves the simulator demo", () => {
  let worker: Unstable_DevWorker;
  let url: string;
  let dir: string;

  beforeAll(async () => {
    // A copy of wrangler.toml in a directory of its own, so that a developer's .dev.vars (read
    // beside the config) or local state under .wrangler/ cannot change what is tested.
    dir = mkdtempSync(join(tmpdir(), "sluice-wrangler-"));
    const toml = readFileSync(join(root, "wrangler.toml"), "utf8").replace(/^main = .*$/m, `main = ${JSON.stringify(entry)}`);
    writeFileSync(join(dir, "wrangler.toml"), toml);
    copyFileSync(join(root, "package.json"), join(dir, "package.json"));
    process.env.WRANGLER_SEND_METRICS = "false";
    worker = await unstable_dev(entry, {
      config: join(dir, "wrangler.toml"),
      ip: "127.0.0.1",
      port: 0,
      persistTo: join(dir, ".wrangler/state"),
      logLevel: "error",
      experimental: { disableExperimentalWarning: true, testMode: true },
    });
    url = `http://${worker.address}:${worker.port}`;
  });

  afterAll(async () => {
    await worker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the shipped SLUICE_CONFIG var is a valid config naming only in-Worker simulator backends", () => {
    const config = unstable_readConfig({ config: join(root, "wrangler.toml") });
    const text = String((config.vars as Record<string, unknown>).SLUICE_CONFIG);
    const parsed = parseConfigText(text, {}, "SLUICE_CONFIG");
    expect(parsed.backends.map((b) => [b.name, new URL(b.url).hostname])).toEqual([
      ["ptu", "ptu.sluice-simulator.invalid"],
      ["payg", "payg.sluice-simulator.invalid"],
    ]);
  });

  it("a chat request is answered by the ptu simulator, no variable or secret set", async () => {
    const res = await fetch(`${url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21`, {
      method: "POST",
      headers: { "content-type": "application/json", "api-key": "any-key" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hello, Sluice" }] }),
    });
    const body = await res.text();
    expect(res.status, body).toBe(200);
    expect(res.headers.get("x-sluice-backend")).toBe("ptu");
    expect(JSON.parse(body)).toMatchObject({ object: "chat.completion", usage: { prompt_tokens: expect.any(Number) } });
  });

  it("a stream arrives chunk by chunk and ends with [DONE]; the models are listed", async () => {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: "hi" }] }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const text = await res.text();
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toEqual(expect.arrayContaining(["gpt-4o", "gpt-4o-mini"]));
  });

  it("ptu takes two at once; the overflow of normal-priority streams spills over to payg", async () => {
    const send = () =>
      fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-sim-fault": JSON.stringify({ paceMs: 100, chunks: 8 }) },
        body: JSON.stringify({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: "hi" }] }),
      }).then(async (r) => ({ status: r.status, backend: r.headers.get("x-sluice-backend"), text: await r.text() }));
    const answers = await Promise.all([send(), send(), send(), send()]);
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200]);
    const by = answers.map((a) => a.backend).sort();
    expect(by).toEqual(["payg", "payg", "ptu", "ptu"]);
  });

  it("readiness and liveness answer (the probes)", async () => {
    expect((await fetch(`${url}/readiness`)).status).toBe(200);
    expect(await (await fetch(`${url}/liveness`)).text()).toBe("ok");
  });
});
