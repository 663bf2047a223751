import { describe, expect, it } from "vitest";
import { classify } from "../../src/classify.ts";
import { parseConfig } from "../../src/config/load.ts";
import { Backend } from "../../src/routing/backend.ts";
import { applyCredentials, upstreamTarget } from "../../src/routing/upstream-request.ts";

const config = parseConfig({
  backends: [
    { name: "aoai", url: "https://aoai.example/", kind: "azure-openai", models: [{ name: "gpt-4o", deployment: "gpt4o-prod" }], apiVersion: "2025-01-01", auth: { type: "api-key", key: "k" } },
    { name: "oai", url: "https://api.example/proxy", kind: "openai", models: [{ name: "gpt-4o", deployment: "gpt-4o-2024-11-20" }, "o3"], auth: { type: "api-key", key: "t" } },
    { name: "apim", url: "https://apim.example", kind: "apim", models: ["gpt-4o"], auth: { type: "api-key", key: "s" } },
  ],
});
const [aoai, oai, apim] = config.backends.map((b) => new Backend(b, config)) as [Backend, Backend, Backend];
const enc = new TextEncoder();
const dec = new TextDecoder();

function target(b: Backend, path: string, body: string) {
  const url = new URL(`http://gw${path}`);
  const bytes = enc.encode(body);
  const t = upstreamTarget(b, classify(url.pathname, url, new Headers(), bytes, config), url, bytes);
  return { url: t.url, body: t.body === bytes ? "(same bytes)" : dec.decode(t.body as Uint8Array) };
}

describe("upstream request shape", () => {
  it("renames the Azure deployment in the URL and keeps the body bytes", () => {
    expect(target(aoai, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", '{"messages":[]}')).toEqual({
      url: "https://aoai.example/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
      body: "(same bytes)",
    });
  });
  it("sends an OpenAI-path request to Azure by deployment with the backend's api-version", () => {
    expect(target(aoai, "/v1/chat/completions", '{"model":"gpt-4o"}').url).toBe(
      "https://aoai.example/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-01-01",
    );
  });
  it("renames the model in the body for OpenAI backends, only when it differs", () => {
    expect(target(oai, "/v1/chat/completions", '{"model":"gpt-4o","n":1}')).toEqual({
      url: "https://api.example/proxy/v1/chat/completions",
      body: '{"model":"gpt-4o-2024-11-20","n":1}',
    });
    expect(target(oai, "/v1/chat/completions", '{"model":"o3" }').body).toBe("(same bytes)");
    expect(target(oai, "/openai/deployments/gpt-4o/embeddings?api-version=x", '{"input":"hi"}')).toEqual({
      url: "https://api.example/proxy/v1/embeddings",
      body: '{"input":"hi","model":"gpt-4o-2024-11-20"}',
    });
  });
  it("uses each kind's credential header", () => {
    const headers = (b: Backend) => {
      const h: [string, string][] = [];
      applyCredentials(b, h);
      return Object.fromEntries(h);
    };
    expect(headers(aoai)).toEqual({ "api-key": "k" });
    expect(headers(oai)).toEqual({ authorization: "Bearer t" });
    expect(headers(apim)).toEqual({ "ocp-apim-subscription-key": "s" });
  });
});
