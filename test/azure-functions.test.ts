import { readFileSync } from "node:fs";
import { HttpRequest } from "@azure/functions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createFunctionsHandler } from "../adapters/azure-functions/handler.ts";
import { createUpstreamClient } from "../adapters/node/upstream.ts";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import { parseConfig } from "../src/config/load.ts";
import { createGateway } from "../src/gateway.ts";

const fixture = (name: string) => readFileSync(new URL(`../../shared/fixtures/recorded/${name}`, import.meta.url));

describe("Azure Functions handler (the core through @azure/functions' own HttpRequest)", () => {
  let ptu: RunningSimulator;
  let payg: RunningSimulator;
  let handler: ReturnType<typeof createFunctionsHandler>;
  const upstream = createUpstreamClient();

  beforeAll(async () => {
    ptu = await startSimulator({ name: "ptu" });
    payg = await startSimulator({ name: "payg" });
    const config = parseConfig({
      backends: [
        { name: "ptu", url: ptu.url, kind: "azure-openai", group: 1, models: [{ name: "gpt-4o", deployment: "gpt4o-ptu" }], auth: { type: "api-key", key: "ptu-key" } },
        { name: "payg", url: payg.url, kind: "azure-openai", group: 2, models: ["gpt-4o"], auth: { type: "api-key", key: "payg-key" } },
      ],
    });
    handler = createFunctionsHandler(createGateway({ config, upstream: upstream.upstream }));
  });
  afterAll(async () => {
    await Promise.all([ptu.close(), payg.close(), upstream.close()]);
  });

  const call = (body: string, headers: Record<string, string> = {}) =>
    handler(
      new HttpRequest({
        url: "http://func.local/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        method: "POST",
        headers: { "content-type": "application/json", "api-key": "client-key", ...headers },
        body: { string: body },
      }),
    );

  it("serves JSON from the PTU backend with its own key", async () => {
    ptu.sim.reset();
    const init = await call('{"messages":[{"role":"user","content":"hi"}]}');
    const res = new Response(init.body as BodyInit, { status: init.status, headers: init.headers as HeadersInit });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-sluice-backend")).toBe("ptu");
    expect((await res.json()).object).toBe("chat.completion");
    const seen = ptu.sim.stats().requests[0]!;
    expect(seen.path).toBe("/openai/deployments/gpt4o-ptu/chat/completions");
    expect(seen.headers["api-key"]).toBe("ptu-key");
  });

  it("streams a recorded response byte-identical", async () => {
    const init = await call('{"stream":true,"stream_options":{"include_usage":true},"messages":[]}', { "x-sim-fixture": "aoai2.txt" });
    expect(init.body).toBeInstanceOf(ReadableStream);
    const bytes = new Uint8Array(await new Response(init.body as BodyInit).arrayBuffer());
    expect(Buffer.from(bytes).equals(fixture("aoai2.txt"))).toBe(true);
  });

  it("fails over from a throttled PTU to PAYG in the same call", async () => {
    ptu.sim.reset();
    payg.sim.reset();
    ptu.sim.script([{ status: 429, headers: { "retry-after-ms": "60000" } }]);
    const init = await call('{"messages":[]}');
    const headers = new Headers(init.headers as HeadersInit);
    expect(init.status).toBe(200);
    expect(headers.get("x-sluice-backend")).toBe("payg");
    expect(headers.get("x-sluice-attempts")).toBe("2");
    expect(payg.sim.stats().requests[0]!.headers["api-key"]).toBe("payg-key");
  });
});
