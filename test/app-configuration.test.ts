/**
 * The Azure App Configuration source against a local stand-in for the service: an HTTP server
 * that answers the one call the SDK makes here, GET /kv/{key}?api-version=...&label=...,
 * with etags and If-None-Match → 304, and checks the HMAC-SHA256 signature every request carries.
 */
import { createHash, createHmac } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { appConfigSettingsFromEnv, AppConfigurationSource } from "../adapters/node/app-configuration.ts";
import { GatewayHolder, openNodeConfigSource, type ConfigFollower } from "../adapters/node/reload.ts";
import { startGatewayServer, type RunningGateway } from "../adapters/node/server.ts";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import { ConfigError } from "../src/config/load.ts";
import { createGateway } from "../src/gateway.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 3000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const ID = "test-credential-id";
const SECRET = Buffer.from("a secret of thirty-two bytes....").toString("base64");

interface Seen {
  key: string;
  label: string | null;
  ifNoneMatch: string | null;
  status: number;
}

/** A key-value store speaking the App Configuration REST API for GET /kv/{key}. */
class FakeAppConfiguration {
  private server!: Server;
  private readonly kv = new Map<string, { value: string; etag: string; lastModified: string }>();
  private revision = 0;
  readonly seen: Seen[] = [];
  readonly authProblems: string[] = [];
  /** While set, every request gets this status (an outage). */
  failWith: number | undefined;
  url = "";

  private id(key: string, label: string | null): string {
    return `${label ?? "\0"}\n${key}`;
  }

  set(key: string, value: string, label: string | null = null): string {
    const etag = `etag-${++this.revision}`;
    this.kv.set(this.id(key, label), { value, etag, lastModified: new Date().toISOString() });
    return etag;
  }

  delete(key: string, label: string | null = null): void {
    this.kv.delete(this.id(key, label));
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const url = new URL(req.url!, "http://store");
      this.checkAuth(req);
      if (req.method !== "GET" || !url.pathname.startsWith("/kv/") || !url.searchParams.get("api-version")) {
        res.writeHead(400, { "content-type": "application/problem+json" }).end(JSON.stringify({ title: `unexpected ${req.method} ${req.url}` }));
        return;
      }
      const key = decodeURIComponent(url.pathname.slice("/kv/".length));
      const label = url.searchParams.get("label");
      const ifNoneMatch = req.headers["if-none-match"] ?? null;
      const status = (s: number) => this.seen.push({ key, label, ifNoneMatch, status: s });
      if (this.failWith) {
        status(this.failWith);
        res.writeHead(this.failWith, { "content-type": "application/problem+json" }).end(JSON.stringify({ title: "Service Unavailable", status: this.failWith }));
        return;
      }
      const entry = this.kv.get(this.id(key, label));
      if (!entry) {
        status(404);
        res.writeHead(404).end();
        return;
      }
      if (ifNoneMatch === `"${entry.etag}"`) {
        status(304);
        res.writeHead(304, { etag: `"${entry.etag}"` }).end();
        return;
      }
      status(200);
      const body = { etag: entry.etag, key, label, content_type: "application/json", value: entry.value, tags: {}, locked: false, last_modified: entry.lastModified };
      res
        .writeHead(200, { "content-type": "application/vnd.microsoft.appconfig.kv+json; charset=utf-8", etag: `"${entry.etag}"`, "last-modified": new Date(entry.lastModified).toUTCString() })
        .end(JSON.stringify(body));
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** The HMAC scheme of App Configuration: the headers must be there and the signature must match. */
  private checkAuth(req: IncomingMessage): void {
    const date = req.headers["x-ms-date"];
    const contentHash = req.headers["x-ms-content-sha256"];
    const auth = req.headers.authorization;
    if (typeof date !== "string" || typeof contentHash !== "string" || typeof auth !== "string") {
      this.authProblems.push(`missing auth headers on ${req.url}`);
      return;
    }
    const m = /^HMAC-SHA256 Credential=([^&]+)&SignedHeaders=([^&]+)&Signature=(.+)$/.exec(auth);
    if (!m || m[1] !== ID || m[2] !== "x-ms-date;host;x-ms-content-sha256") {
      this.authProblems.push(`malformed Authorization on ${req.url}: ${auth}`);
      return;
    }
    if (contentHash !== createHash("sha256").update("").digest("base64")) this.authProblems.push(`content hash of an empty body expected on ${req.url}`);
    const toSign = `${req.method}\n${req.url}\n${date};${req.headers.host};${contentHash}`;
    const expected = createHmac("sha256", Buffer.from(SECRET, "base64")).update(toSign).digest("base64");
    if (m[3] !== expected) this.authProblems.push(`bad signature on ${req.url}`);
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

const clientOptions = { allowInsecureConnection: true, retryOptions: { maxRetries: 0 } };

describe("Azure App Configuration source: sentinel polling, swap, refusal (Node, real sockets)", () => {
  const store = new FakeAppConfiguration();
  const sims: Record<string, RunningSimulator> = {};
  let running: RunningGateway;
  let follower: ConfigFollower | undefined;
  let env: Record<string, string>;
  const errors = vi.spyOn(console, "error");
  const infos = vi.spyOn(console, "log");

  const configJson = (names: string[], kind = "openai") =>
    JSON.stringify({ metering: { sinks: [] }, routing: { strategy: "round-robin" }, backends: names.map((name) => ({ name, kind, url: sims[name]!.url, models: ["gpt-4o"] })) });
  const backendOf = async () => {
    const res = await fetch(`${running.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }) });
    await res.arrayBuffer();
    expect(res.status).toBe(200);
    return res.headers.get("x-sluice-backend");
  };
  const health = async () => (await (await fetch(`${running.url}/_gateway/health`)).json()) as { config: { version: string; loadedAt: string; lastReloadError: string | null; lastReloadErrorAt: string | null } };

  beforeAll(async () => {
    errors.mockImplementation(() => undefined);
    infos.mockImplementation(() => undefined);
    for (const name of ["a", "b"]) sims[name] = await startSimulator({ name });
    await store.start();
    env = {
      SLUICE_APPCONFIG_CONNECTION_STRING: `Endpoint=${store.url};Id=${ID};Secret=${SECRET}`,
      SLUICE_APPCONFIG_LABEL: "prod",
      SLUICE_APPCONFIG_POLL_MS: "100",
    };
  });

  afterAll(async () => {
    follower?.close();
    await running?.close(0);
    await store.close();
    await Promise.all(Object.values(sims).map((s) => s.close()));
    errors.mockRestore();
    infos.mockRestore();
  });

  it("loads the config key at start, reloads when the sentinel changes, refuses an invalid version, records an outage", async () => {
    const e1 = store.set("sluice:config", configJson(["a"]), "prod");
    store.set("sluice:sentinel", "1", "prod");
    // Same keys without the label: must not be what is read.
    store.set("sluice:config", configJson(["b"]));

    const source = await openNodeConfigSource([], env, { appConfiguration: { clientOptions } });
    expect(source!.initial.version).toBe(e1);
    running = await startGatewayServer(source!.initial.config, { host: "127.0.0.1", port: 0, version: source!.initial.version, origin: source!.initial.origin });
    follower = source!.follow(running.holder);
    expect(await backendOf()).toBe("a");
    expect((await health()).config).toMatchObject({ version: e1, lastReloadError: null });

    // The config key changes, the sentinel not yet: nothing happens; polls are conditional (304).
    const e2 = store.set("sluice:config", configJson(["b"]), "prod");
    await sleep(400);
    expect(running.holder.version).toBe(e1);
    expect(await backendOf()).toBe("a");
    const polls = store.seen.filter((s) => s.key === "sluice:sentinel" && s.ifNoneMatch !== null);
    expect(polls.length).toBeGreaterThanOrEqual(2);
    expect(polls.every((s) => s.status === 304 && s.label === "prod")).toBe(true);

    // The sentinel changes: the new version is read, validated and swapped in.
    const published = Date.now();
    store.set("sluice:sentinel", "2", "prod");
    await until("the swap to e2", () => running.holder.version === e2);
    expect(Date.now() - published).toBeLessThan(1000);
    expect(await backendOf()).toBe("b");
    expect((await health()).config.version).toBe(e2);
    expect(infos.mock.calls.some((c) => String(c[0]).includes(`config reloaded: version ${e2}`))).toBe(true);

    // An invalid version: refused, logged naming the field, e2 keeps serving.
    const e3 = store.set("sluice:config", configJson(["a"], "grpc"), "prod");
    store.set("sluice:sentinel", "3", "prod");
    const refusal = await until("the refusal of e3", () => errors.mock.calls.map((c) => String(c[0])).find((l) => l.startsWith("sluice: config reload refused:")));
    expect(refusal).toContain("backends[0].kind");
    expect(refusal).toContain(`version ${e3}`);
    expect(running.holder.version).toBe(e2);
    expect(await backendOf()).toBe("b");
    const h3 = (await health()).config;
    expect(h3.version).toBe(e2);
    expect(h3.lastReloadError).toContain("backends[0].kind");
    expect(h3.lastReloadErrorAt).not.toBeNull();

    // The sentinel touched again with the same invalid config: no second log line.
    const refusals = () => errors.mock.calls.filter((c) => String(c[0]).startsWith("sluice: config reload refused:")).length;
    store.set("sluice:sentinel", "4", "prod");
    await sleep(300);
    expect(refusals()).toBe(1);

    // Fixed: swapped; the last error stays in health, with its time.
    const e5 = store.set("sluice:config", configJson(["a", "b"]), "prod");
    store.set("sluice:sentinel", "5", "prod");
    await until("the swap to e5", () => running.holder.version === e5);
    const h5 = (await health()).config;
    expect(h5.version).toBe(e5);
    expect(h5.lastReloadError).toContain("backends[0].kind");
    expect(Date.parse(h5.lastReloadErrorAt!)).toBeLessThanOrEqual(Date.parse(h5.loadedAt));

    // An outage of the store: logged and shown in health; e5 keeps serving.
    store.failWith = 503;
    await until("the failed poll", () => errors.mock.calls.some((c) => String(c[0]).startsWith("sluice: config reload failed:")));
    expect(await backendOf()).toMatch(/^[ab]$/);
    const h6 = (await health()).config;
    expect(h6.version).toBe(e5);
    expect(h6.lastReloadError).toContain("App Configuration");
    store.failWith = undefined;

    expect(store.authProblems).toEqual([]);
    expect(store.seen.every((s) => s.label === "prod")).toBe(true);
  });
});

describe("Azure App Configuration source: start-up and settings", () => {
  const store = new FakeAppConfiguration();
  let sim: RunningSimulator;
  const envFor = (extra: Record<string, string> = {}) => ({ SLUICE_APPCONFIG_CONNECTION_STRING: `Endpoint=${store.url};Id=${ID};Secret=${SECRET}`, ...extra });
  const config = (name: string) => JSON.stringify({ metering: { sinks: [] }, backends: [{ name, url: sim.url }] });

  beforeAll(async () => {
    sim = await startSimulator({ name: "s" });
    await store.start();
  });
  afterAll(async () => {
    await store.close();
    await sim.close();
  });

  it("settings from the environment: defaults, and errors that never show the secret", () => {
    expect(appConfigSettingsFromEnv({})).toBeUndefined();
    const s = appConfigSettingsFromEnv({ SLUICE_APPCONFIG_CONNECTION_STRING: `Endpoint=https://x.azconfig.io;Id=abc;Secret=${SECRET}` });
    expect(s).toMatchObject({ endpoint: "https://x.azconfig.io", key: "sluice:config", sentinel: "sluice:sentinel", pollMs: 30_000 });
    expect(s!.label).toBeUndefined();
    expect(() => appConfigSettingsFromEnv({ SLUICE_APPCONFIG_CONNECTION_STRING: "Endpoint=https://x.azconfig.io;Secret=hush" })).toThrow(/missing Id/);
    expect(() => appConfigSettingsFromEnv({ SLUICE_APPCONFIG_CONNECTION_STRING: "Endpoint=https://x.azconfig.io;Secret=hush" })).not.toThrow(/hush/);
    expect(() => appConfigSettingsFromEnv({ SLUICE_APPCONFIG_CONNECTION_STRING: `Endpoint=https://x.azconfig.io;Id=a;Secret=${SECRET}`, SLUICE_APPCONFIG_POLL_MS: "soon" })).toThrow(/SLUICE_APPCONFIG_POLL_MS/);
  });

  it("start-up: a missing key or an invalid config is an error naming it (the process exits 2)", async () => {
    await expect(openNodeConfigSource([], envFor({ SLUICE_APPCONFIG_KEY: "nothing:here" }), { appConfiguration: { clientOptions } })).rejects.toThrow(/key "nothing:here".*no such key/);
    store.set("bad:config", JSON.stringify({ backends: [{ name: "x", url: "not a url" }] }));
    const err = await openNodeConfigSource([], envFor({ SLUICE_APPCONFIG_KEY: "bad:config" }), { appConfiguration: { clientOptions } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toContain("backends[0].url");
  });

  it("--config on the command line wins over App Configuration", async () => {
    await expect(openNodeConfigSource(["--config", "/nonexistent/sluice.json"], envFor(), { appConfiguration: { clientOptions } })).rejects.toThrow(/cannot read config file \/nonexistent\/sluice.json/);
  });

  it("without a sentinel key, the config key itself is polled (conditionally)", async () => {
    const e1 = store.set("solo:config", config("one"));
    const source = new AppConfigurationSource(appConfigSettingsFromEnv(envFor({ SLUICE_APPCONFIG_KEY: "solo:config", SLUICE_APPCONFIG_SENTINEL: "solo:sentinel", SLUICE_APPCONFIG_POLL_MS: "3600000" }))!, { clientOptions });
    const first = await source.load();
    expect(first.version).toBe(e1);
    const { parseConfigText } = await import("../src/config/load.ts");
    const holder = new GatewayHolder((cfg, configStatus) => createGateway({ config: cfg, configStatus }), { config: parseConfigText(first.text), version: first.version, origin: first.origin }, { info: () => undefined, warn: () => undefined });
    source.follow(holder);
    try {
      const before = store.seen.length;
      expect(await source.check()).toBeUndefined();
      const conditional = store.seen.slice(before).find((s) => s.key === "solo:config");
      expect(conditional).toMatchObject({ ifNoneMatch: `"${e1}"`, status: 304 });

      const e2 = store.set("solo:config", config("two"));
      expect(await source.check()).toEqual({ kind: "swapped", version: e2 });
      expect(holder.config.backends.map((b) => b.name)).toEqual(["two"]);

      // A sentinel appears later: from then on it is what is watched.
      store.set("solo:sentinel", "1");
      const e3 = store.set("solo:config", config("three"));
      expect(await source.check()).toEqual({ kind: "swapped", version: e3 });
      store.set("solo:config", config("four"));
      expect(await source.check()).toBeUndefined(); // sentinel unchanged
      expect(holder.version).toBe(e3);
      expect(store.authProblems).toEqual([]);
    } finally {
      source.close();
    }
  });
});
