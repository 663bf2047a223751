import { createHash } from "node:crypto";
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { composedVersion, configVersion } from "../adapters/node/reload.ts";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import { bundleWorker, COMPATIBILITY_DATE, COMPATIBILITY_FLAGS, LIMITER_CLASS, SCHEDULER_CLASS } from "./harness/workers.ts";
import { until as untilWithin } from "./harness/until.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;
/** What each isolate keeps of a KV read, in the tests (the default is 10 s). */
const TTL_MS = 200;

/** Isolates re-read KV on their own clock: allow a little longer than for Node. */
const until = <T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>) => untilWithin(what, probe, 5000, 20);


interface Health {
  config?: { version: string; loadedAt: string; lastReloadError: string | null; lastReloadErrorAt: string | null };
}

type Kv = Awaited<ReturnType<Miniflare["getKVNamespace"]>>;

/** The Worker under workerd with the SLUICE_CONFIG_KV namespace (and the Durable Objects wrangler.toml binds). */
async function startWorker(bindings: Record<string, string>, seed: (kv: Kv) => Promise<void>) {
  const mf = new Miniflare({
    modules: [{ type: "ESModule", path: "worker.js", contents: await bundleWorker() }],
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: COMPATIBILITY_FLAGS,
    kvNamespaces: ["SLUICE_CONFIG_KV"],
    bindings: { SLUICE_CONFIG_KV_TTL_MS: String(TTL_MS), ...bindings },
    durableObjects: { SCHEDULER: SCHEDULER_CLASS, LIMITER: LIMITER_CLASS },
    host: "127.0.0.1",
    port: 0,
  });
  const url = (await mf.ready).origin;
  const kv = await mf.getKVNamespace("SLUICE_CONFIG_KV");
  await seed(kv);
  const chat = async (key?: string, model = "gpt-4o") => {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(key ? { "api-key": key } : {}) },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
    });
    const body = await res.text();
    return { status: res.status, backend: res.headers.get("x-sluice-backend"), body };
  };
  // Every config here carries the operator key "ops-key": /_gateway/health needs one once API keys exist.
  const health = async () => (await (await fetch(`${url}/_gateway/health`, { headers: { "api-key": "ops-key" } })).json()) as Health;
  return { mf, url, kv, chat, health };
}

describe("Workers: config and profiles from a KV namespace (miniflare)", () => {
  const sims: Record<string, RunningSimulator> = {};
  let w: Awaited<ReturnType<typeof startWorker>>;
  const configText = (backend: string, extra: Record<string, unknown> = {}) =>
    JSON.stringify({
      metering: { sinks: [] },
      auth: { apiKeys: [{ hash: sha("key-alice"), caller: "alice" }], operator: { apiKeys: [{ hash: sha("ops-key"), name: "test" }] } },
      backends: [{ name: backend, url: sims[backend]!.url, models: ["gpt-4o", "gpt-4o-mini"] }],
      ...extra,
    });
  const profilesText = (callers: string[], profiles: Record<string, unknown> = { std: { models: ["gpt-4o*"] } }) =>
    JSON.stringify({ profiles, apiKeys: callers.map((c) => ({ hash: sha(`key-${c}`), caller: c, profile: "std" })) });

  beforeAll(async () => {
    for (const name of ["a", "b"]) sims[name] = await startSimulator({ name });
    // No SLUICE_CONFIG var at all: everything comes from KV.
    w = await startWorker({}, async (kv) => {
      await kv.put("config", configText("a"));
      await kv.put("profiles", profilesText(["bob", "carol"]));
    });
  });

  afterAll(async () => {
    await w?.mf.dispose();
    await Promise.all(Object.values(sims).map((s) => s.close()));
  });

  it("serves the config from KV, with the keys of the KV profiles document; the version is the one Node gives the same texts", async () => {
    for (const key of ["key-alice", "key-bob", "key-carol"]) {
      const r = await w.chat(key);
      expect(r.status, r.body).toBe(200);
      expect(r.backend).toBe("a");
    }
    expect((await w.chat("key-mallory")).status).toBe(401);
    const h = (await w.health()).config!;
    expect(h.version).toBe(composedVersion(configText("a"), profilesText(["bob", "carol"])));
    expect(h.lastReloadError).toBeNull();
  });

  it("a key removed from the KV profiles document loses access after the cache interval; the others keep it", async () => {
    await w.kv.put("profiles", profilesText(["carol"]));
    const written = Date.now();
    await until("bob's key to be refused", async () => (await w.chat("key-bob")).status === 401);
    // Not before the isolate's copy is TTL_MS old; well within a second after.
    expect(Date.now() - written).toBeLessThan(1500);
    expect((await w.chat("key-carol")).status).toBe(200);
    expect((await w.chat("key-alice")).status).toBe(200);
    expect((await w.health()).config!.version).toBe(composedVersion(configText("a"), profilesText(["carol"])));
  });

  it("a changed config value is picked up: a new backend serves", async () => {
    await w.kv.put("config", configText("b"));
    await until("backend b to serve", async () => (await w.chat("key-alice")).backend === "b");
    expect((await w.chat("key-carol")).status).toBe(200);
  });

  it("an invalid new config value, or profiles document, is refused and logged; the old version keeps serving", async () => {
    const serving = (await w.health()).config!.version;
    await w.kv.put("config", configText("b").replace('"models"', '"kind":"grpc","models"'));
    await until("the refusal to show in health", async () => (await w.health()).config!.lastReloadError?.includes("backends[0].kind"));
    await sleep(TTL_MS * 2);
    const r = await w.chat("key-alice");
    expect(r.status).toBe(200);
    expect(r.backend).toBe("b");
    expect((await w.health()).config!.version).toBe(serving);

    // The config is valid again, the profiles document is not: a bad profile, named with where it came from.
    await w.kv.put("config", configText("b"));
    await w.kv.put("profiles", profilesText(["carol", "dave"], { std: { models: "gpt-4o" } }));
    await until("the profiles refusal to show in health", async () => (await w.health()).config!.lastReloadError?.includes('profiles.std.models (in SLUICE_CONFIG_KV key "profiles")'));
    expect((await w.chat("key-dave")).status).toBe(401);
    expect((await w.chat("key-carol")).status).toBe(200);
    expect((await w.health()).config!.version).toBe(serving);

    // Fixed: served.
    await w.kv.put("profiles", profilesText(["carol", "dave"]));
    await until("dave's key to be accepted", async () => (await w.chat("key-dave")).status === 200);
    expect((await w.health()).config!.version).toBe(composedVersion(configText("b"), profilesText(["carol", "dave"])));
  });

  it("without a config key in KV, the SLUICE_CONFIG var is used (with no var either: the old version keeps serving)", async () => {
    await w.kv.delete("config");
    await sleep(TTL_MS * 2);
    const h = (await w.health()).config!;
    expect(h.lastReloadError).toContain("SLUICE_CONFIG: not set");
    expect((await w.chat("key-carol")).status).toBe(200);
  });
});

describe("Workers: KV edge cases (miniflare)", () => {
  let sim: RunningSimulator;
  beforeAll(async () => {
    sim = await startSimulator({ name: "s" });
  });
  afterAll(async () => {
    await sim?.close();
  });

  it("an invalid config in KV at the first load answers 503 invalid_config; a valid one written later serves", async () => {
    const valid = JSON.stringify({ metering: { sinks: [] }, backends: [{ name: "s", url: sim.url }] });
    const w = await startWorker({}, async (kv) => {
      await kv.put("config", JSON.stringify({ backends: [{ name: "s", url: sim.url, kind: "grpc", auth: { type: "api-key", key: "${SECRET_BACKEND_KEY_NAME}" } }] }));
    });
    try {
      const r = await w.chat();
      expect(r.status).toBe(503);
      expect(JSON.parse(r.body).error.code).toBe("invalid_config");
      // What is wrong goes to the log, not to callers.
      expect(r.body).not.toContain("backends[0].kind");
      expect(r.body).not.toContain("grpc");
      expect(r.body).not.toContain("SECRET_BACKEND_KEY_NAME");
      await w.kv.put("config", valid);
      await until("the valid config to serve", async () => (await w.chat()).status === 200);
      expect((await w.health()).config!.version).toBe(configVersion(valid));
    } finally {
      await w.mf.dispose();
    }
  });

  it("the SLUICE_CONFIG var with a KV profiles document: the keys come from KV", async () => {
    const varConfig = JSON.stringify({ metering: { sinks: [] }, backends: [{ name: "s", url: sim.url, models: ["gpt-4o"] }] });
    const w = await startWorker({ SLUICE_CONFIG: varConfig }, async (kv) => {
      await kv.put("profiles", JSON.stringify({ apiKeys: [{ hash: sha("key-erin"), caller: "erin" }] }));
    });
    try {
      expect((await w.chat("key-erin")).status).toBe(200);
      expect((await w.chat("key-frank")).status).toBe(401);
      // An empty profiles document: nobody has a key, the gateway is open again.
      await w.kv.put("profiles", JSON.stringify({}));
      await until("the open gateway", async () => (await w.chat()).status === 200);
      expect((await w.health()).config!.version).toBe(composedVersion(varConfig, "{}"));
    } finally {
      await w.mf.dispose();
    }
  });
});
