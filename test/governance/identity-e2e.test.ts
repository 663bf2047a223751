import { createHash } from "node:crypto";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { startNodeGateway } from "../harness/node.ts";
import type { GatewayUnderTest } from "../harness/types.ts";

const hash = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;

/** API keys, caller profiles and header policy, end to end on Node: who may call what, at which priority. */
describe("identity and governance [node]", () => {
  let sim: RunningSimulator;
  let urgent: RunningSimulator;
  let gw: GatewayUnderTest;

  beforeAll(async () => {
    sim = await startSimulator({ name: "main" });
    urgent = await startSimulator({ name: "urgent" });
    const config: SluiceConfigInput = {
      backends: [
        { name: "main", url: sim.url, kind: "apim", models: ["gpt-4o", "gpt-4o-mini", "o3"], group: 2, auth: { type: "api-key", key: "backend-key" } },
        // Only high priority reaches this one, and it is preferred: a request served there ran at high.
        { name: "urgent", url: urgent.url, kind: "openai", models: ["gpt-4o", "gpt-4o-mini", "o3"], group: 1, priorities: ["high"] },
      ],
      auth: {
        apiKeys: [
          { hash: hash("key-team-a"), caller: "team-a", app: "chat-ui", profile: "gpt4o-only" },
          { hash: hash("key-batch"), caller: "batch", profile: "capped" },
          { hash: hash("key-gone"), caller: "gone", profile: "suspended" },
          { hash: hash("key-tenant"), caller: "tenant", profile: "tenant" },
        ],
        forwardIdentity: true,
      },
      profiles: {
        "gpt4o-only": { models: ["gpt-4o*"], headers: { "x-team": "a" } },
        capped: { maxPriority: "normal", defaultPriority: "low" },
        suspended: { suspended: true },
        tenant: { validateHeaders: { "x-tenant": ["contoso", "fabrikam"] } },
      },
      headerPolicy: { strip: ["x-debug-secret"], require: [] },
    };
    gw = await startNodeGateway(config);
  });
  afterAll(async () => {
    await gw?.close();
    await Promise.all([sim?.close(), urgent?.close()]);
  });
  beforeEach(() => {
    sim.sim.reset();
    urgent.sim.reset();
  });

  const received = () => sim.sim.stats().received + urgent.sim.stats().received;
  const chat = (headers: Record<string, string>, model = "gpt-4o") =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
    });

  it("missing or unknown credentials → 401, and no backend is contacted", async () => {
    const none = await chat({});
    expect(none.status).toBe(401);
    expect((await none.json()).error.code).toBe("missing_credentials");
    for (const headers of [{ "api-key": "nope" }, { authorization: "Bearer nope" }, { "ocp-apim-subscription-key": "nope" }] as Record<string, string>[]) {
      const r = await chat(headers);
      expect(r.status).toBe(401);
      expect((await r.json()).error.code).toBe("invalid_api_key");
    }
    expect(received()).toBe(0);
  });

  it("a valid key in any of the three headers is accepted; the backend gets its own key and the verified identity", async () => {
    for (const headers of [{ "api-key": "key-team-a" }, { authorization: "Bearer key-team-a" }, { "ocp-apim-subscription-key": "key-team-a" }] as Record<string, string>[]) {
      const r = await chat(headers);
      expect(r.status, await r.clone().text()).toBe(200);
    }
    const seen = sim.sim.stats().requests;
    expect(seen).toHaveLength(3);
    for (const req of seen) {
      expect(req.headers["ocp-apim-subscription-key"]).toBe("backend-key");
      expect(req.headers["api-key"]).toBeUndefined();
      expect(req.headers.authorization).toBeUndefined();
      expect(req.headers["x-sluice-caller"]).toBe("team-a");
      expect(req.headers["x-sluice-app"]).toBe("chat-ui");
      expect(req.headers["x-team"]).toBe("a");
    }
  });

  it("a profile allowing gpt-4o* gets gpt-4o-mini and is refused o3 (403, nothing sent)", async () => {
    expect((await chat({ "api-key": "key-team-a" }, "gpt-4o-mini")).status).toBe(200);
    const o3 = await chat({ "api-key": "key-team-a" }, "o3");
    expect(o3.status).toBe(403);
    expect((await o3.json()).error.code).toBe("model_not_allowed");
    expect(received()).toBe(1);
  });

  it("a caller capped at normal asking for high is served at normal; its default is low", async () => {
    const asked = await chat({ "api-key": "key-batch", "x-priority": "high" });
    expect(asked.status).toBe(200);
    expect(asked.headers.get("x-sluice-backend"), "the high-only backend never sees a capped caller").toBe("main");
    expect(sim.sim.stats().requests[0]!.headers.llm_proxy_priority).toBe("2");
    const byDefault = await chat({ "api-key": "key-batch" });
    expect(byDefault.status).toBe(200);
    expect(byDefault.headers.get("x-sluice-backend")).toBe("main");
    expect(sim.sim.stats().requests[1]!.headers.llm_proxy_priority).toBe("3");
    // An uncapped caller asking for high does reach the high-only backend.
    const high = await chat({ "api-key": "key-team-a", "x-priority": "high" });
    expect(high.status).toBe(200);
    expect(high.headers.get("x-sluice-backend")).toBe("urgent");
    expect([sim.sim.stats().received, urgent.sim.stats().received]).toEqual([2, 1]);
  });

  it("a suspended caller gets 403", async () => {
    const r = await chat({ "api-key": "key-gone" });
    expect(r.status).toBe(403);
    expect((await r.json()).error.code).toBe("caller_suspended");
    expect(received()).toBe(0);
  });

  it("a header validated against the profile: allowed value passes, missing or other → 400", async () => {
    expect((await chat({ "api-key": "key-tenant", "x-tenant": "contoso" })).status).toBe(200);
    for (const headers of [{ "api-key": "key-tenant" }, { "api-key": "key-tenant", "x-tenant": "evil" }] as Record<string, string>[]) {
      const r = await chat(headers);
      expect(r.status).toBe(400);
      expect((await r.json()).error.code).toBe("header_invalid");
    }
    expect(received()).toBe(1);
  });

  it("a client cannot change who it is: identity headers it sends are dropped, stripped headers never travel", async () => {
    const r = await chat({
      "api-key": "key-team-a",
      "x-sluice-caller": "admin",
      "x-sluice-app": "root-app",
      "x-ms-client-principal-id": "someone-else",
      "x-debug-secret": "s3cret",
    });
    expect(r.status).toBe(200);
    const req = sim.sim.stats().requests[0]!;
    expect(req.headers["x-sluice-caller"]).toBe("team-a");
    expect(req.headers["x-sluice-app"]).toBe("chat-ui");
    expect(req.headers["x-ms-client-principal-id"]).toBeUndefined();
    expect(req.headers["x-debug-secret"]).toBeUndefined();
  });
});
