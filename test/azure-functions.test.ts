/**
 * Azure Functions specifics the conformance suite (test/azure-functions.conformance.test.ts)
 * does not cover. Every test goes through adapters/azure-functions/main.ts's real registration
 * with @azure/functions, the package's HTTP-stream proxy and a host in front of it (see
 * test/harness/azure-functions.ts).
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../src/config/schema.ts";
import { azureBackend, azurePath, chatBody, gatewayConfig, pollUntil } from "./conformance/helpers.ts";
import { startFunctionsApp, startFunctionsGateway, type RunningFunctionsApp } from "./harness/azure-functions.ts";

const settings = (config: SluiceConfigInput) => ({ SLUICE_CONFIG: JSON.stringify({ metering: { sinks: [] }, ...config }) });

describe("Azure Functions: the app as main.ts registers it", () => {
  let sim: RunningSimulator;
  let app: RunningFunctionsApp;

  beforeAll(async () => {
    sim = await startSimulator({ name: "b1", port: 0 });
    app = await startFunctionsApp(settings(gatewayConfig([azureBackend("b1", sim.url)])));
  });
  afterAll(async () => {
    await app?.close();
    await sim?.close();
  });

  it("registers one anonymous catch-all HTTP function for every method, with an HTTP return", () => {
    expect(app.metadata.name).toBe("sluice");
    const bindings = Object.values(app.metadata.bindings);
    const trigger = bindings.find((b) => b.type === "httpTrigger");
    expect(trigger).toMatchObject({ direction: "in", route: "{*path}", authLevel: "anonymous" });
    expect(trigger!.methods).toEqual(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]);
    expect(bindings.find((b) => b.direction === "out")).toMatchObject({ type: "http" });
    // The package found the core API (no "test mode") and streams over its own proxy.
    expect(app.httpUri).toMatch(/^http:\/\/localhost:\d+\/$/);
  });

  it("serves a chat completion and the ops routes; the package logs no warning", async () => {
    const r = await fetch(`${app.url}${azurePath()}`, { method: "POST", headers: { "content-type": "application/json" }, body: chatBody() });
    expect(r.status).toBe(200);
    expect(r.headers.get("x-sluice-backend")).toBe("b1");
    expect((await r.json()).object).toBe("chat.completion");
    const health = await fetch(`${app.url}/_gateway/health`);
    expect(health.status).toBe(200);
    expect((await health.json()).status).toBe("ok");
    const head = await fetch(`${app.url}/_gateway/health`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
    expect(app.problems).toEqual([]);
  });
});

describe("Azure Functions: what the Functions path changes", () => {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
  });

  it("several Set-Cookie headers from a backend reach the client, each unchanged", async () => {
    const cookies = ["a=1; Path=/; HttpOnly", "b=x/y+z==; Secure; SameSite=None; Partitioned", "ARRAffinity=0123abcd; Path=/; Domain=example.com"];
    const backend: Server = createServer((req, res) => {
      req.resume();
      req.once("end", () => {
        res.setHeader("content-type", "application/json");
        res.setHeader("set-cookie", cookies);
        res.end(JSON.stringify({ object: "chat.completion", choices: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
      });
    });
    await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
    closers.push(() => new Promise<void>((resolve) => backend.close(() => resolve())));
    const url = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
    const gw = await startFunctionsGateway(gatewayConfig([azureBackend("b1", url)]));
    closers.push(() => gw.close());

    const r = await fetch(`${gw.url}${azurePath()}`, { method: "POST", headers: { "content-type": "application/json" }, body: chatBody() });
    expect(r.status).toBe(200);
    expect(r.headers.getSetCookie()).toEqual(cookies);
    expect(r.headers.get("x-sluice-backend")).toBe("b1");
    // One cookie is an ordinary header.
    const single = await startFunctionsGateway(gatewayConfig([azureBackend("b1", url)]));
    closers.push(() => single.close());
    cookies.splice(1);
    const one = await fetch(`${single.url}${azurePath()}`, { method: "POST", headers: { "content-type": "application/json" }, body: chatBody() });
    expect(one.headers.getSetCookie()).toEqual(["a=1; Path=/; HttpOnly"]);
  });

  it("a client leaving mid-stream is not seen: the package reads the stream to its end, the backend is not cancelled", async () => {
    // What the conformance test "a client disconnecting mid-stream cancels the upstream request
    // at once" finds on Functions: nothing in @azure/functions or the worker tells the handler
    // (see test/harness/azure-functions.ts). Should a later package pass the client's leaving on,
    // this test fails and that conformance test can pass.
    const sim = await startSimulator({ name: "b1", port: 0 });
    closers.push(() => sim.close());
    const gw = await startFunctionsGateway(gatewayConfig([azureBackend("b1", sim.url)]));
    closers.push(() => gw.close());
    sim.sim.script([{ paceMs: 40, chunks: 30 }]);
    const ac = new AbortController();
    const res = await fetch(`${gw.url}${azurePath()}`, { method: "POST", headers: { "content-type": "application/json" }, body: chatBody({ stream: true }), signal: ac.signal });
    const reader = res.body!.getReader();
    expect((await reader.read()).done).toBe(false);
    expect(sim.sim.stats().open).toBe(1);
    ac.abort();
    await reader.cancel().catch(() => undefined);
    await pollUntil("the stream to end", () => sim.sim.stats().open === 0, { timeoutMs: 5_000 });
    expect(sim.sim.stats()).toMatchObject({ completed: 1, cancelled: 0 });
  });

  it("a SLUICE_CONFIG file is followed: a change is served without a restart", async () => {
    const sim = await startSimulator({ name: "b1", port: 0 });
    closers.push(() => sim.close());
    const dir = mkdtempSync(join(tmpdir(), "sluice-func-"));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "sluice.json");
    const write = (timeoutMs: number) => writeFileSync(path, JSON.stringify({ metering: { sinks: [] }, ...gatewayConfig([azureBackend("b1", sim.url)], { timeoutMs }) }));
    write(5_000);
    const app = await startFunctionsApp({ SLUICE_CONFIG: path });
    closers.push(() => app.close());
    expect(process.env.SLUICE_CONFIG, "process.env is restored once the app has loaded").not.toBe(path);
    const version = async () => (await (await fetch(`${app.url}/_gateway/health`)).json()).config.version as string;
    const first = await version();
    write(6_000);
    await pollUntil("the new config version to serve", async () => (await version()) !== first, { timeoutMs: 5_000 });
  });

  it("without SLUICE_CONFIG (or App Configuration) the app fails to start, and process.env is left as it was", async () => {
    const before = { ...process.env };
    await expect(startFunctionsApp({})).rejects.toThrow(/set SLUICE_CONFIG/);
    expect(process.env).toEqual(before);
  });

  it("the entry as npm run build bundles it loads under Node's own ESM loader", async () => {
    // Vitest's interop accepts imports Node's loader refuses (a named import of one of the
    // package's classes, say): bundle main.ts as package.json's build does and run it with node.
    const root = fileURLToPath(new URL("..", import.meta.url));
    const dir = mkdtempSync(join(tmpdir(), "sluice-func-build-"));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    symlinkSync(join(root, "node_modules"), join(dir, "node_modules"), "dir");
    await build({ entryPoints: [join(root, "adapters/azure-functions/main.ts")], bundle: true, platform: "node", format: "esm", packages: "external", outfile: join(dir, "main.mjs"), logLevel: "error" });
    const env = { ...process.env, ...settings(gatewayConfig([azureBackend("b1", "http://127.0.0.1:9")])) };
    const run = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = execFile(process.execPath, [join(dir, "main.mjs")], { env, timeout: 20_000 }, (err, _stdout, stderr) => resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stderr }));
      child.stdin?.end();
    });
    // Without a Functions host the package only warns that it skips the registration: main.ts ran to its end.
    expect(run.stderr).toContain('Skipping call to register function "sluice"');
    expect(run.code, run.stderr).toBe(0);
  });
});
