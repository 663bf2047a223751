import { processCwd } from "./harness/node.ts";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, renameSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi, type MockInstance } from "vitest";
import { composedVersion, configVersion, openNodeConfigSource, type ConfigFollower } from "../adapters/node/reload.ts";
import { startGatewayServer, type RunningGateway } from "../adapters/node/server.ts";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import { until } from "./harness/until.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;


/** The operator key every config here carries: /_gateway/health needs one once API keys exist. */
const OPERATOR = { apiKeys: [{ hash: sha("ops-key"), name: "test" }] };

interface Health {
  config: { version: string; loadedAt: string; lastReloadError: string | null; lastReloadErrorAt: string | null };
}

/** A profiles document: the named callers' keys (key-<name>), each bound to profile `std` unless said otherwise. */
function profilesDoc(callers: string[], profiles: Record<string, unknown> = { std: { models: ["gpt-4o*"] } }, extra: Record<string, unknown> = {}) {
  return JSON.stringify({ profiles, apiKeys: callers.map((c) => ({ hash: sha(`key-${c}`), caller: c, profile: "std" })), ...extra }, null, 2);
}

function gatewayClient(url: () => string) {
  return {
    chat: (key: string | undefined, model = "gpt-4o", extraHeaders: Record<string, string> = {}, stream = false) =>
      fetch(`${url()}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(key ? { "api-key": key } : {}), ...extraHeaders },
        body: JSON.stringify({ model, stream, messages: [{ role: "user", content: "hi" }] }),
      }),
    status: async (key: string, model = "gpt-4o") => {
      const res = await fetch(`${url()}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "api-key": key },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
      });
      await res.arrayBuffer();
      return res.status;
    },
    health: async () => (await (await fetch(`${url()}/_gateway/health`, { headers: { "api-key": "ops-key" } })).json()) as Health,
  };
}

describe("caller profiles from a watched profiles file (Node, real sockets)", () => {
  let sim: RunningSimulator;
  let dir: string;
  let configFile: string;
  let profilesFile: string;
  let configText: string;
  let running: RunningGateway;
  let follower: ConfigFollower | undefined;
  let errors: MockInstance<typeof console.error>;
  let infos: MockInstance<typeof console.log>;
  const gw = gatewayClient(() => running.url);
  const refusals = () => errors.mock.calls.map((c) => String(c[0])).filter((l) => l.startsWith("sluice: config reload refused:"));

  /** Like an editor's "safe write": a new file renamed over the old one. */
  const replaceProfiles = (text: string) => {
    const tmp = join(dir, `.profiles.json.${Date.now()}.tmp`);
    writeFileSync(tmp, text);
    renameSync(tmp, profilesFile);
  };

  beforeAll(async () => {
    errors = vi.spyOn(console, "error").mockImplementation(() => undefined);
    infos = vi.spyOn(console, "log").mockImplementation(() => undefined);
    sim = await startSimulator({ name: "sim" });
    dir = mkdtempSync(join(tmpdir(), "sluice-profiles-"));
    configFile = join(dir, "config.json");
    profilesFile = join(dir, "profiles.json");
    configText = JSON.stringify(
      {
        metering: { sinks: [] },
        // Relative: to the config file's directory.
        profilesSource: { file: "profiles.json" },
        auth: { operator: OPERATOR },
        // A profile of the config's own, overridden by the file's of the same name.
        profiles: { std: { models: ["nothing-at-all"] } },
        backends: [{ name: "sim", url: sim.url, models: ["gpt-4o", "gpt-4o-mini"] }],
      },
      null,
      2,
    );
    writeFileSync(configFile, configText);
    writeFileSync(profilesFile, profilesDoc(["alice", "bob"]));
    const source = await openNodeConfigSource(["--config", configFile], {});
    expect(source).toBeDefined();
    running = await startGatewayServer(source!.initial.config, { host: "127.0.0.1", port: 0, version: source!.initial.version, origin: source!.initial.origin });
    follower = source!.follow(running.holder);
    expect(follower).toBeDefined();
  });

  afterAll(async () => {
    follower?.close();
    await running?.close(0);
    await sim?.close();
    errors.mockRestore();
    infos.mockRestore();
  });

  it("serves the keys of the profiles file; the version is a hash of both texts", async () => {
    expect(running.holder.version).toBe(composedVersion(configText, profilesDoc(["alice", "bob"])));
    expect((await gw.health()).config).toMatchObject({ version: running.holder.version, lastReloadError: null });
    expect(await gw.status("key-alice")).toBe(200);
    expect(await gw.status("key-bob")).toBe(200);
    expect(await gw.status("key-mallory")).toBe(401);
    // The file's `std` replaced the config's.
    expect(await gw.status("key-alice", "gpt-4o-mini")).toBe(200);
  });

  it("a key removed from the file loses access within a second; the other keeps it; requests in flight finish", async () => {
    // Alice keeps sending requests throughout; bob has a slow stream in flight across the change.
    let stopped = false;
    const aliceStatuses: number[] = [];
    const alice = (async () => {
      while (!stopped) aliceStatuses.push(await gw.status("key-alice"));
    })();
    const stream = await gw.chat("key-bob", "gpt-4o", { "x-sim-fault": JSON.stringify({ paceMs: 40, chunks: 30 }) }, true);
    expect(stream.status).toBe(200);
    const streamBody = stream.text().then((text) => ({ text, end: Date.now() }));

    const before = running.holder.version;
    const written = Date.now();
    replaceProfiles(profilesDoc(["alice"]));
    await until("bob's key to be refused", async () => (await gw.status("key-bob")) === 401, 3000);
    const refused = Date.now();
    expect(refused - written).toBeLessThan(1000);
    expect(running.holder.version).toBe(composedVersion(configText, profilesDoc(["alice"])));
    expect(running.holder.version).not.toBe(before);
    // Alice keeps being served after the change.
    const aliceBefore = aliceStatuses.length;
    await until("more of alice's requests after the change", () => aliceStatuses.length >= aliceBefore + 5, 3000);
    stopped = true;
    await alice;

    const body = await streamBody;
    expect(body.text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    expect(body.end).toBeGreaterThan(refused); // it really was in flight across the change
    // Served throughout: how many depends on the machine's speed, so the count is the one waited for above.
    expect(aliceStatuses.length).toBeGreaterThanOrEqual(aliceBefore + 5);
    expect(aliceStatuses.filter((s) => s !== 200)).toEqual([]);
    expect(await gw.status("key-alice")).toBe(200);
    expect(infos.mock.calls.some((c) => String(c[0]).includes(`config reloaded: version ${running.holder.version} from ${configFile} + ${profilesFile}`))).toBe(true);
  });

  it("a profile changed in the file takes effect (models narrowed)", async () => {
    replaceProfiles(profilesDoc(["alice"], { std: { models: ["gpt-4o-mini"] } }));
    await until("gpt-4o to be refused to alice", async () => (await gw.status("key-alice", "gpt-4o")) === 403, 3000);
    const res = await gw.chat("key-alice", "gpt-4o");
    expect((await res.json()).error.code).toBe("model_not_allowed");
    expect(await gw.status("key-alice", "gpt-4o-mini")).toBe(200);
  });

  it("an invalid profiles file is refused naming the field; the old version keeps serving; health shows the error", async () => {
    const serving = running.holder.version;
    const refusedBefore = refusals().length;

    // A bad profile: `models` must be a list.
    replaceProfiles(profilesDoc(["alice", "bob"], { std: { models: "gpt-4o" } }));
    const refusal = await until("the refusal of the bad profile", () => refusals().slice(refusedBefore)[0], 3000);
    expect(refusal).toContain("profiles.std.models");
    expect(refusal).toContain(`(in ${profilesFile})`);
    expect(refusal).toContain(`version ${serving} keeps serving`);
    expect(running.holder.version).toBe(serving);
    expect(await gw.status("key-alice", "gpt-4o-mini")).toBe(200);
    expect(await gw.status("key-bob", "gpt-4o-mini")).toBe(401); // bob is only in the refused version
    const h = (await gw.health()).config;
    expect(h.version).toBe(serving);
    expect(h.lastReloadError).toContain("profiles.std.models");

    // A bad key: named by its place in the file.
    replaceProfiles(JSON.stringify({ profiles: { std: { models: ["gpt-4o-mini"] } }, apiKeys: [{ hash: "sha256:nothex", caller: "carol" }] }));
    const badKey = await until("the refusal of the bad key", () => refusals().find((l) => l.includes("hash")), 3000);
    expect(badKey).toContain(`auth.apiKeys[0].hash (apiKeys[0].hash in ${profilesFile})`);

    // An unknown field, and then not JSON at all.
    replaceProfiles(JSON.stringify({ profile: {} }));
    await until("the refusal of an unknown field", () => refusals().some((l) => l.includes(`${profilesFile}: profile: unknown field`)), 3000);
    replaceProfiles(`{"profiles": {`);
    await until("the refusal of truncated JSON", () => refusals().some((l) => l.includes(`${profilesFile}: not valid JSON`)), 3000);
    expect(running.holder.version).toBe(serving);
    expect(await gw.status("key-alice", "gpt-4o-mini")).toBe(200);

    // Valid again: served.
    replaceProfiles(profilesDoc(["alice", "bob"]));
    await until("bob's key to be accepted again", async () => (await gw.status("key-bob")) === 200, 3000);
    expect(running.holder.version).toBe(composedVersion(configText, profilesDoc(["alice", "bob"])));
  });

  it("SIGHUP-style check() re-reads both documents; an unchanged pair is the same version", async () => {
    const before = running.holder.version;
    expect(await follower!.check()).toEqual({ kind: "unchanged", version: before });
  });

  it("a config change keeps the profiles file; a config that stops naming it drops its callers", async () => {
    const withDefault = JSON.stringify({ ...JSON.parse(configText), auth: { defaultProfile: "std", operator: OPERATOR } }, null, 2);
    writeFileSync(configFile, withDefault);
    await until("the new config version", () => running.holder.version === composedVersion(withDefault, profilesDoc(["alice", "bob"])), 3000);
    expect(await gw.status("key-bob")).toBe(200);

    const without = JSON.stringify({ metering: { sinks: [] }, backends: [{ name: "sim", url: sim.url, models: ["gpt-4o", "gpt-4o-mini"] }] }, null, 2);
    writeFileSync(configFile, without);
    await until("the version without profiles", () => running.holder.version === configVersion(without), 3000);
    // No keys configured any more: the gateway is open; the file's callers are not known.
    expect(running.holder.config.auth.apiKeys).toEqual([]);

    // And back: the file is read again.
    writeFileSync(configFile, configText);
    await until("keys to be required again", async () => (await gw.status("key-mallory")) === 401, 3000);
    expect(running.holder.version).toBe(composedVersion(configText, profilesDoc(["alice", "bob"])));
    expect(await gw.status("key-bob")).toBe(200);

    // A broken config file is refused; a key revoked in the profiles file meanwhile still loses access.
    const refusedBefore = refusals().length;
    writeFileSync(configFile, configText.replace('"name": "sim",', '"name": "sim", "kind": "grpc",'));
    await until("the refusal of the broken config", () => refusals().slice(refusedBefore).some((l) => l.includes("backends[0].kind")), 3000);
    replaceProfiles(profilesDoc(["alice"]));
    await until("bob's key to be refused", async () => (await gw.status("key-bob")) === 401, 3000);
    expect(running.holder.version).toBe(composedVersion(configText, profilesDoc(["alice"])));
    expect(await gw.status("key-alice")).toBe(200);
  });
});

describe("caller profiles from a polled URL (Node, real sockets)", () => {
  let sim: RunningSimulator;
  let server: Server;
  let serverUrl: string;
  let served: { status: number; body: string; etag: string };
  const seen: { ifNoneMatch: string | undefined; status: number }[] = [];
  let running: RunningGateway;
  let follower: ConfigFollower | undefined;
  let configText: string;
  let errors: MockInstance<typeof console.error>;
  let infos: MockInstance<typeof console.log>;
  const gw = gatewayClient(() => running.url);
  let etagSeq = 0;
  const serve = (body: string, status = 200) => {
    served = { status, body, etag: `"v${++etagSeq}"` };
  };

  beforeAll(async () => {
    errors = vi.spyOn(console, "error").mockImplementation(() => undefined);
    infos = vi.spyOn(console, "log").mockImplementation(() => undefined);
    sim = await startSimulator({ name: "sim" });
    serve(profilesDoc(["alice", "bob"]));
    server = createServer((req, res) => {
      const inm = req.headers["if-none-match"];
      if (served.status !== 200) {
        seen.push({ ifNoneMatch: inm, status: served.status });
        res.writeHead(served.status).end("no");
        return;
      }
      if (inm === served.etag) {
        seen.push({ ifNoneMatch: inm, status: 304 });
        res.writeHead(304, { etag: served.etag }).end();
        return;
      }
      seen.push({ ifNoneMatch: inm, status: 200 });
      res.writeHead(200, { "content-type": "application/json", etag: served.etag }).end(served.body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    serverUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/profiles.json`;
    configText = JSON.stringify({
      metering: { sinks: [] },
      profilesSource: { url: `${serverUrl}?sig=s3cret-token`, pollMs: 100 },
      auth: { operator: OPERATOR },
      backends: [{ name: "sim", url: sim.url, models: ["gpt-4o", "gpt-4o-mini"] }],
    });
    // Inline JSON: the config cannot change, the profiles document it names can.
    const source = await openNodeConfigSource([], { SLUICE_CONFIG: configText });
    running = await startGatewayServer(source!.initial.config, { host: "127.0.0.1", port: 0, version: source!.initial.version, origin: source!.initial.origin });
    follower = source!.follow(running.holder);
    expect(follower).toBeDefined();
  });

  afterAll(async () => {
    follower?.close();
    await running?.close(0);
    await sim?.close();
    await new Promise((r) => server?.close(r));
    errors.mockRestore();
    infos.mockRestore();
  });

  it("serves the URL's keys, polls with If-None-Match, and picks up a change after the poll interval", async () => {
    expect(running.holder.version).toBe(composedVersion(configText, profilesDoc(["alice", "bob"])));
    expect(await gw.status("key-alice")).toBe(200);
    expect(await gw.status("key-bob")).toBe(200);
    await until("a conditional poll answered 304", () => seen.some((s) => s.status === 304 && s.ifNoneMatch === '"v1"'), 2000);

    serve(profilesDoc(["alice"], { std: { models: ["gpt-4o-mini"] } }));
    const changed = Date.now();
    await until("bob's key to be refused", async () => (await gw.status("key-bob")) === 401, 3000);
    expect(Date.now() - changed).toBeLessThan(1000);
    expect(await gw.status("key-alice", "gpt-4o")).toBe(403);
    expect(await gw.status("key-alice", "gpt-4o-mini")).toBe(200);
    expect(running.holder.version).toBe(composedVersion(configText, served.body));
  });

  it("an invalid document, or a failing server, keeps the old version serving; the URL's query is never shown", async () => {
    const serving = running.holder.version;
    serve(profilesDoc(["alice", "bob"], { std: { maxPriority: "urgent" } }));
    const refusal = await until("the refusal", () => errors.mock.calls.map((c) => String(c[0])).find((l) => l.includes("config reload refused") && l.includes("profiles.std.maxPriority")), 3000);
    expect(refusal).toContain('unknown priority "urgent"');
    expect(refusal).toContain(`(in ${serverUrl}?…)`);
    expect(await gw.status("key-bob")).toBe(401);
    expect(running.holder.version).toBe(serving);

    serve("", 500);
    await until("the failure to be recorded", async () => (await gw.health()).config.lastReloadError?.includes("HTTP 500"), 3000);
    expect(await gw.status("key-alice", "gpt-4o-mini")).toBe(200);
    const failures = errors.mock.calls.map((c) => String(c[0])).filter((l) => l.includes("HTTP 500"));
    expect(failures).toHaveLength(1);
    // Three more failing polls handled (polls never overlap: the fourth one's arrival at the server
    // means the third was answered and dealt with): still reported once.
    const failedPolls = seen.filter((p) => p.status === 500).length;
    await until("three more failing polls", () => seen.filter((p) => p.status === 500).length >= failedPolls + 4, 3000);
    expect(errors.mock.calls.map((c) => String(c[0])).filter((l) => l.includes("HTTP 500"))).toHaveLength(1);
    for (const line of errors.mock.calls.map((c) => String(c[0]))) expect(line).not.toContain("s3cret");
    expect(JSON.stringify(await gw.health())).not.toContain("s3cret");

    serve(profilesDoc(["alice", "bob"]));
    await until("bob's key to be accepted again", async () => (await gw.status("key-bob")) === 200, 3000);
  });
});

describe("startup with an unreadable profiles source", () => {
  const configWith = (profilesSource: unknown) =>
    JSON.stringify({ metering: { sinks: [] }, profilesSource, backends: [{ name: "x", url: "http://127.0.0.1:1" }] });

  it("openNodeConfigSource refuses a missing file and an unreachable URL, saying which", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-profiles-bad-"));
    const file = join(dir, "config.json");
    writeFileSync(file, configWith({ file: "missing.json" }));
    await expect(openNodeConfigSource(["--config", file], {})).rejects.toThrow(`cannot read profiles file ${join(dir, "missing.json")} (profilesSource of ${file})`);
    writeFileSync(file, configWith({ url: "http://127.0.0.1:1/profiles.json?sig=secret" }));
    const err = (await openNodeConfigSource(["--config", file], {}).catch((e: unknown) => e)) as Error;
    expect(err.message).toContain("cannot read profiles from http://127.0.0.1:1/profiles.json?…");
    expect(err.message).not.toContain("secret");
    // A bad profile in the file at startup: a ConfigError naming the field.
    writeFileSync(join(dir, "profiles.json"), JSON.stringify({ profiles: { p: { suspended: "yes" } } }));
    writeFileSync(file, configWith({ file: "profiles.json" }));
    await expect(openNodeConfigSource(["--config", file], {})).rejects.toThrow(/profiles\.p\.suspended \(in .*profiles\.json\)/);
  });

  it("the process exits with code 2 and names the profiles file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-profiles-start-"));
    const file = join(dir, "config.json");
    writeFileSync(file, configWith({ file: "absent.json" }));
    const child = spawn(join(root, "node_modules/.bin/tsx"), [join(root, "adapters/node/main.ts"), "--config", file], { cwd: processCwd(), stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(code).toBe(2);
    expect(err).toContain(`sluice: cannot read profiles file ${join(dir, "absent.json")}`);
  });
});
