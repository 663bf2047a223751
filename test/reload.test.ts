import { processCwd } from "./harness/node.ts";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { configVersion, openNodeConfigSource, type ConfigFollower } from "../adapters/node/reload.ts";
import { startGatewayServer, type RunningGateway } from "../adapters/node/server.ts";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import { until } from "./harness/until.ts";

const root = fileURLToPath(new URL("..", import.meta.url));


interface Sample {
  start: number;
  end: number;
  status: number;
  backend: string | null;
  error?: string;
}

describe("hot reload of the config file (Node, real sockets)", () => {
  const sims: Record<string, RunningSimulator> = {};
  let dir: string;
  let file: string;
  let running: RunningGateway;
  let follower: ConfigFollower | undefined;
  const errors = vi.spyOn(console, "error");
  const infos = vi.spyOn(console, "log");

  const configText = (names: string[], extra: Record<string, unknown> = {}) =>
    JSON.stringify(
      {
        routing: { strategy: "round-robin" },
        metering: { sinks: [] },
        backends: names.map((name) => ({ name, url: sims[name]!.url, models: ["gpt-4o"] })),
        ...extra,
      },
      null,
      2,
    );
  /** Like an editor's "safe write": a new file renamed over the old one. */
  const replaceFile = (text: string) => {
    const tmp = join(dir, `.config.json.${Date.now()}.tmp`);
    writeFileSync(tmp, text);
    renameSync(tmp, file);
  };
  const health = async () => (await (await fetch(`${running.url}/_gateway/health`)).json()) as { config: { version: string; loadedAt: string; lastReloadError: string | null; lastReloadErrorAt: string | null } };

  beforeAll(async () => {
    errors.mockImplementation(() => undefined);
    infos.mockImplementation(() => undefined);
    for (const name of ["a", "b", "c"]) sims[name] = await startSimulator({ name });
    dir = mkdtempSync(join(tmpdir(), "sluice-reload-"));
    file = join(dir, "config.json");
    writeFileSync(file, configText(["a", "b"]));
    const source = await openNodeConfigSource(["--config", file], {});
    expect(source).toBeDefined();
    running = await startGatewayServer(source!.initial.config, { host: "127.0.0.1", port: 0, version: source!.initial.version, origin: source!.initial.origin });
    follower = source!.follow(running.holder);
    expect(follower).toBeDefined();
  });

  afterAll(async () => {
    follower?.close();
    await running?.close(0);
    await Promise.all(Object.values(sims).map((s) => s.close()));
    errors.mockRestore();
    infos.mockRestore();
  });

  const chat = (headers: Record<string, string> = {}, stream = false) =>
    fetch(`${running.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ model: "gpt-4o", stream, messages: [{ role: "user", content: "hi" }] }),
    });

  /** A few clients sending requests back to back until stopped. */
  function steadyTraffic(clients = 4) {
    const samples: Sample[] = [];
    let stopped = false;
    const loops = Array.from({ length: clients }, async () => {
      while (!stopped) {
        const start = Date.now();
        try {
          const res = await chat();
          await res.arrayBuffer();
          samples.push({ start, end: Date.now(), status: res.status, backend: res.headers.get("x-sluice-backend") });
        } catch (err) {
          samples.push({ start, end: Date.now(), status: 0, backend: null, error: String(err) });
        }
      }
    });
    return {
      samples,
      stop: async () => {
        stopped = true;
        await Promise.all(loops);
        return samples;
      },
    };
  }

  it("swaps a changed config under load: new requests see it within a second, an in-flight stream finishes on the old one, nothing fails; an invalid version is refused and the old keeps serving", async () => {
    const v1 = running.holder.version;
    expect(v1).toBe(configVersion(configText(["a", "b"])));
    expect((await health()).config).toMatchObject({ version: v1, lastReloadError: null, lastReloadErrorAt: null });

    const traffic = steadyTraffic();
    const servedBy = (from: number) => new Set(traffic.samples.filter((s) => s.start > from && s.status === 200).map((s) => s.backend));
    await until("traffic served by both a and b", () => servedBy(0).has("a") && servedBy(0).has("b"), 3000);

    // A slow stream on backend a (which the next version removes), started before the change.
    const streamRes = await chat({ "x-backend-affinity": "a", "x-sim-fault": JSON.stringify({ paceMs: 50, chunks: 30 }) }, true);
    expect(streamRes.status).toBe(200);
    expect(streamRes.headers.get("x-sluice-backend")).toBe("a");
    const streamBody = streamRes.text().then((text) => ({ text, end: Date.now() }));

    // v2: a removed, c added.
    const v2Text = configText(["b", "c"]);
    const written = Date.now();
    replaceFile(v2Text);
    await until("the swap to v2", () => running.holder.version === configVersion(v2Text), 2000);
    const swapped = Date.now();
    expect(swapped - written).toBeLessThan(1000);
    await until("traffic after the swap served by b and c", () => {
      const after = traffic.samples.filter((s) => s.start > swapped);
      return after.length > 20 && servedBy(swapped).has("b") && servedBy(swapped).has("c");
    }, 3000);

    const stream = await streamBody;
    expect(stream.text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    expect(stream.end).toBeGreaterThan(swapped); // it really was in flight across the swap

    // v3 (invalid: an unknown backend kind) written in place; refused, v2 keeps serving.
    const v3Text = configText(["b", "c"]).replace(`"name": "c",`, `"name": "c",\n      "kind": "grpc",`);
    writeFileSync(file, v3Text);
    const refusal = await until("the refusal of v3", () => errors.mock.calls.map((c) => String(c[0])).find((l) => l.startsWith("sluice: config reload refused:")), 2000);
    expect(refusal).toContain("backends[1].kind");
    expect(refusal).toContain(`version ${configVersion(v2Text)} keeps serving`);
    const refusedAt = Date.now();
    await until("traffic served after the refusal", () => traffic.samples.filter((s) => s.start > refusedAt).length >= 10, 3000);

    const samples = await traffic.stop();
    expect(samples.filter((s) => s.status !== 200)).toEqual([]);
    expect(samples.length).toBeGreaterThan(50);
    // Before the change: a and b. After the swap was seen: never a, and c within the first second.
    expect(new Set(samples.filter((s) => s.end < written).map((s) => s.backend))).toEqual(new Set(["a", "b"]));
    const after = samples.filter((s) => s.start > swapped);
    expect(after.length).toBeGreaterThan(20);
    expect(after.filter((s) => s.backend === "a")).toEqual([]);
    expect(new Set(after.map((s) => s.backend))).toEqual(new Set(["b", "c"]));
    const firstC = Math.min(...samples.filter((s) => s.backend === "c").map((s) => s.end));
    expect(firstC - written).toBeLessThan(1000);

    const h = (await health()).config;
    expect(h.version).toBe(configVersion(v2Text));
    expect(h.lastReloadError).toContain("backends[1].kind");
    expect(Date.parse(h.lastReloadErrorAt!)).toBeGreaterThanOrEqual(Date.parse(h.loadedAt));
    expect((await chat()).headers.get("x-sluice-backend")).toMatch(/^[bc]$/);

    // Not JSON at all (a half-written file that stays that way): refused too, naming the file.
    writeFileSync(file, v2Text.slice(0, 40));
    await until("the refusal of truncated JSON", () => errors.mock.calls.some((c) => String(c[0]).includes("not valid JSON")), 2000);
    expect(running.holder.version).toBe(configVersion(v2Text));

    // v4: valid again, and it moves the port (which needs a restart: logged, not applied).
    const v4Text = configText(["c"], { server: { port: 8123 } });
    replaceFile(v4Text);
    await until("the swap to v4", () => running.holder.version === configVersion(v4Text), 2000);
    expect(errors.mock.calls.some((c) => String(c[0]).includes("server.port changed (8000 → 8123); it takes effect after a restart"))).toBe(true);
    expect(infos.mock.calls.some((c) => String(c[0]).includes(`config reloaded: version ${configVersion(v4Text)}`) && String(c[0]).includes("removed b"))).toBe(true);
    const res = await chat();
    expect(res.status).toBe(200);
    expect(res.headers.get("x-sluice-backend")).toBe("c");
    const h4 = (await health()).config;
    expect(h4.version).toBe(configVersion(v4Text));
    // The last error is kept, with its time: before the version now in use was loaded.
    expect(h4.lastReloadError).toContain("not valid JSON");
    expect(Date.parse(h4.lastReloadErrorAt!)).toBeLessThanOrEqual(Date.parse(h4.loadedAt));
  });

  it("an unchanged rewrite (same text) is not a new version; SIGHUP-style check() re-reads on demand", async () => {
    const before = running.holder.version;
    const loadedAt = (await health()).config.loadedAt;
    const text = configText(["c"], { server: { port: 8123 } });
    writeFileSync(file, text);
    // The read the watcher makes on that write, made now (reads are serialised): the same text is the same version.
    expect(await follower!.check()).toEqual({ kind: "unchanged", version: before });
    expect(running.holder.version).toBe(before);
    expect((await health()).config.loadedAt).toBe(loadedAt);
  });

  it("a key removed from the config loses access within a second of the change; the other keeps it", async () => {
    const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;
    const keys = (...names: string[]) => ({ auth: { apiKeys: names.map((n) => ({ hash: sha(`key-${n}`), caller: n })) } });
    replaceFile(configText(["a"], keys("alice", "bob")));
    const ask = (key: string) =>
      fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: { "api-key": key }, body: JSON.stringify({ model: "gpt-4o", messages: [] }) }).then((r) => r.status);
    await until("both keys to be accepted", async () => (await ask("key-alice")) === 200 && (await ask("key-bob")) === 200, 3000);
    replaceFile(configText(["a"], keys("alice")));
    const changed = Date.now();
    await until("bob's key to be refused", async () => (await ask("key-bob")) === 401, 3000);
    expect(Date.now() - changed).toBeLessThan(1000);
    expect(await ask("key-alice")).toBe(200);
  });
});

describe("startup with an invalid config file (Node process)", () => {
  it("exits with code 2 and names the field", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "sluice-badstart-")), "config.json");
    writeFileSync(file, JSON.stringify({ backends: [{ name: "x", url: "http://127.0.0.1:1", kind: "grpc" }] }));
    const child = spawn(join(root, "node_modules/.bin/tsx"), [join(root, "adapters/node/main.ts"), "--config", file], { cwd: processCwd(), stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(code).toBe(2);
    expect(err).toContain("backends[0].kind");
  });
});
