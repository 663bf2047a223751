import { describe, expect, it } from "vitest";
import { BadRequest, classify } from "../../src/classify.ts";
import { parseConfig } from "../../src/config/load.ts";
import { backendKind } from "../../src/backends/index.ts";
import type { BackendKindName, HeaderPairs } from "../../src/types.ts";

const config = parseConfig({ backends: [{ name: "any", url: "https://any.example", models: ["*"] }] });
const enc = new TextEncoder();
const dec = new TextDecoder();
const SAME = "(same bytes)";
const KINDS: BackendKindName[] = ["openai", "azure-openai", "apim", "anthropic"];

/** What `kind` sends for a client request to `path` whose model the backend calls `deployment`. */
function target(kind: BackendKindName, path: string, body: string | null, deployment: string, apiVersion?: string) {
  const url = new URL(`http://gw${path}`);
  const bytes = body === null ? null : enc.encode(body);
  const cls = classify(url.pathname, url, new Headers(), bytes, config);
  const t = backendKind(kind).target({ baseUrl: "https://be.example/pre", deployment, apiVersion, cls, url, body: bytes });
  return { url: t.url, body: t.body === bytes ? SAME : dec.decode(t.body as Uint8Array) };
}

describe("backend kinds: the table", () => {
  it("has one module per kind, each naming itself", () => {
    for (const k of KINDS) expect(backendKind(k).name).toBe(k);
  });
});

describe("azure-openai and apim targets", () => {
  for (const kind of ["azure-openai", "apim"] as const) {
    describe(kind, () => {
      it("puts the renamed deployment in an Azure path, keeping the client's query and the body bytes", () => {
        expect(target(kind, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01&x=1", '{"messages":[]}', "gpt4o-prod", "2025-01-01")).toEqual({
          url: "https://be.example/pre/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-06-01&x=1",
          body: SAME,
        });
      });
      it("keeps an Azure path's query as is, even with no api-version", () => {
        expect(target(kind, "/openai/deployments/emb/embeddings", '{"input":"hi"}', "emb").url).toBe("https://be.example/pre/openai/deployments/emb/embeddings");
      });
      it("sends OpenAI-path chat, completions and embeddings by deployment, with the backend's api-version", () => {
        for (const op of ["chat/completions", "completions", "embeddings"]) {
          expect(target(kind, `/v1/${op}`, '{"model":"gpt-4o"}', "gpt4o-prod", "2025-01-01")).toEqual({
            url: `https://be.example/pre/openai/deployments/gpt4o-prod/${op}?api-version=2025-01-01`,
            body: SAME,
          });
        }
      });
      it("defaults api-version to 2024-10-21 and never overrides the client's", () => {
        expect(target(kind, "/v1/chat/completions", '{"model":"m"}', "m").url).toBe("https://be.example/pre/openai/deployments/m/chat/completions?api-version=2024-10-21");
        expect(target(kind, "/v1/chat/completions?api-version=2025-04-01-preview", '{"model":"m"}', "m", "2025-01-01").url).toBe(
          "https://be.example/pre/openai/deployments/m/chat/completions?api-version=2025-04-01-preview",
        );
      });
      it("percent-encodes the deployment as one path segment", () => {
        expect(target(kind, "/v1/embeddings", '{"model":"a/b c"}', "a/b c").url).toBe("https://be.example/pre/openai/deployments/a%2Fb%20c/embeddings?api-version=2024-10-21");
      });
      it("sends Responses (OpenAI or Azure path) and messages through /openai/v1, renaming in the body only when it differs", () => {
        expect(target(kind, "/v1/responses", '{"model":"gpt-5","input":"hi"}', "gpt5-dep")).toEqual({
          url: "https://be.example/pre/openai/v1/responses",
          body: '{"model":"gpt5-dep","input":"hi"}',
        });
        expect(target(kind, "/openai/responses?api-version=preview", '{"model":"gpt-5"}', "gpt-5")).toEqual({
          url: "https://be.example/pre/openai/v1/responses?api-version=preview",
          body: SAME,
        });
        expect(target(kind, "/openai/v1/responses", '{"model":"gpt-5" }', "gpt-5").body).toBe(SAME);
        expect(target(kind, "/v1/messages", '{"model":"claude","max_tokens":5}', "claude-dep")).toEqual({
          url: "https://be.example/pre/openai/v1/messages",
          body: '{"model":"claude-dep","max_tokens":5}',
        });
      });
      it("goes through /openai/v1 for a deployment-scoped API when the request names no model", () => {
        expect(target(kind, "/v1/embeddings", '{"input":"x"}', "")).toEqual({ url: "https://be.example/pre/openai/v1/embeddings", body: SAME });
      });
    });
  }
});

describe("openai and anthropic targets", () => {
  for (const kind of ["openai", "anthropic"] as const) {
    describe(kind, () => {
      it("sends /v1/{operation}, renaming the model in the body only when it differs", () => {
        expect(target(kind, "/v1/chat/completions", '{"model":"gpt-4o","n":1}', "gpt-4o-2024-11-20")).toEqual({
          url: "https://be.example/pre/v1/chat/completions",
          body: '{"model":"gpt-4o-2024-11-20","n":1}',
        });
        expect(target(kind, "/v1/chat/completions", '{"model":"o3" }', "o3").body).toBe(SAME);
        expect(target(kind, "/v1/messages?beta=true", '{"model":"claude-sonnet-4"}', "claude-sonnet-4-20250514")).toEqual({
          url: "https://be.example/pre/v1/messages?beta=true",
          body: '{"model":"claude-sonnet-4-20250514"}',
        });
        expect(target(kind, "/openai/v1/responses", '{"model":"gpt-5"}', "gpt-5")).toEqual({ url: "https://be.example/pre/v1/responses", body: SAME });
        expect(target(kind, "/openai/responses", '{"model":"gpt-5"}', "gpt-5-x").url).toBe("https://be.example/pre/v1/responses");
      });
      it("moves an Azure path's deployment into the body and drops only api-version from the query", () => {
        expect(target(kind, "/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21", '{"input":"hi"}', "gpt-4o-2024-11-20")).toEqual({
          url: "https://be.example/pre/v1/embeddings",
          body: '{"input":"hi","model":"gpt-4o-2024-11-20"}',
        });
        expect(target(kind, "/openai/deployments/d/chat/completions?api-version=1&user=u", '{"model":"d"}', "d")).toEqual({
          url: "https://be.example/pre/v1/chat/completions?user=u",
          body: SAME,
        });
      });
      it("leaves a body that is not JSON, or a request with no model, untouched", () => {
        expect(target(kind, "/v1/chat/completions", "not json", "m").body).toBe(SAME);
        expect(target(kind, "/v1/chat/completions", '{"input":"x"}', "").body).toBe(SAME);
        expect(target(kind, "/v1/chat/completions", null, "m").body).toBe(SAME);
      });
    });
  }
});

describe("every kind", () => {
  it("passes a path that is not a model API through as the client wrote it", () => {
    for (const kind of KINDS) {
      expect(target(kind, "/status/health?deep=1", null, "")).toEqual({ url: "https://be.example/pre/status/health?deep=1", body: SAME });
    }
  });
  it("refuses a model with a lone surrogate as a BadRequest, never a URIError", () => {
    for (const kind of KINDS) {
      for (const path of ["/v1/chat/completions", "/v1/responses", "/v1/messages"]) {
        let thrown: unknown;
        try {
          target(kind, path, JSON.stringify({ model: "gpt\ud800" }), "gpt\ud800");
        } catch (err) {
          thrown = err;
        }
        expect(thrown, `${kind} ${path}`).toBeInstanceOf(BadRequest);
        expect((thrown as BadRequest).code).toBe("invalid_model");
      }
    }
  });
  it("accepts a well-formed astral model name (a surrogate pair)", () => {
    expect(target("azure-openai", "/v1/chat/completions", '{"model":"m😀"}', "m😀").url).toBe(
      "https://be.example/pre/openai/deployments/m%F0%9F%98%80/chat/completions?api-version=2024-10-21",
    );
    expect(target("openai", "/v1/chat/completions", '{"model":"m😀"}', "m😀").body).toBe(SAME);
  });
});

describe("credentials and extra headers", () => {
  it("uses each kind's API key header", () => {
    expect(backendKind("azure-openai").apiKeyHeader("k")).toEqual(["api-key", "k"]);
    expect(backendKind("apim").apiKeyHeader("s")).toEqual(["ocp-apim-subscription-key", "s"]);
    expect(backendKind("anthropic").apiKeyHeader("a")).toEqual(["x-api-key", "a"]);
    expect(backendKind("openai").apiKeyHeader("t")).toEqual(["authorization", "Bearer t"]);
  });
  it("sends the priority level as llm_proxy_priority to apim only, appending to what is there", () => {
    for (const kind of KINDS) {
      const out: HeaderPairs = [["x-request-id", "r"]];
      backendKind(kind).requestHeaders(2, out);
      expect(out, kind).toEqual(kind === "apim" ? [["x-request-id", "r"], ["llm_proxy_priority", "2"]] : [["x-request-id", "r"]]);
    }
  });
});

describe("retry hints", () => {
  const NOW = Date.parse("2026-11-21T10:00:00Z");
  const h = (o: Record<string, string>) => new Headers(o);
  const hint = (kind: BackendKindName, headers: Record<string, string>, body?: string) => backendKind(kind).retryAfterMs(h(headers), NOW, body);

  it("reads every generic header form, for every kind", () => {
    for (const kind of KINDS) {
      expect(hint(kind, { "retry-after-ms": "2000" })).toBe(2000);
      expect(hint(kind, { "x-ms-retry-after-ms": "750" })).toBe(750);
      expect(hint(kind, { "retry-after": "3" })).toBe(3000);
      expect(hint(kind, { "retry-after": "1.5" })).toBe(1500);
      expect(hint(kind, { "retry-after": "Sat, 21 Nov 2026 10:00:05 GMT" })).toBe(5000);
      expect(hint(kind, { "retry-after": "Sat, 21 Nov 2026 09:59:00 GMT" })).toBe(0);
      expect(hint(kind, { "x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "250ms" })).toBe(90_000);
      expect(hint(kind, { "x-ratelimit-reset-tokens": "6m0s" })).toBe(360_000);
      // retry-after-ms is the most precise, so it wins.
      expect(hint(kind, { "retry-after-ms": "100", "retry-after": "9" })).toBe(100);
      expect(hint(kind, {})).toBeUndefined();
      expect(hint(kind, { "retry-after": "soon", "retry-after-ms": "-1" })).toBeUndefined();
    }
  });

  it("reads Azure OpenAI's error text when no header says, for azure-openai and apim", () => {
    const azure429 = JSON.stringify({
      error: {
        code: "429",
        message:
          "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
      },
    });
    for (const kind of ["azure-openai", "apim"] as const) {
      expect(hint(kind, {}, azure429)).toBe(6000);
      expect(hint(kind, {}, '{"statusCode":429,"message":"Rate limit is exceeded. Try again in 17 seconds."}')).toBe(17_000);
      expect(hint(kind, {}, "Please retry after 1 second.")).toBe(1000);
      expect(hint(kind, { "retry-after-ms": "4200" }, azure429)).toBe(4200);
      expect(hint(kind, {}, '{"error":{"message":"no hint here"}}')).toBeUndefined();
    }
    expect(hint("anthropic", {}, azure429)).toBeUndefined();
  });

  it("reads OpenAI's 'Please try again in …' text when no header says", () => {
    const text = (d: string) => JSON.stringify({ error: { message: `Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in ${d}. Visit …`, type: "tokens", code: "rate_limit_exceeded" } });
    expect(hint("openai", {}, text("2.5s"))).toBe(2500);
    expect(hint("openai", {}, text("120ms"))).toBe(120);
    expect(hint("openai", {}, text("1m30s"))).toBe(90_000);
    expect(hint("openai", { "retry-after": "1" }, text("20s"))).toBe(1000);
    expect(hint("openai", {}, "try again later")).toBeUndefined();
  });

  it("reads Anthropic's RFC 3339 reset headers: the spent limit's reset, else the latest", () => {
    const resets = {
      "anthropic-ratelimit-requests-reset": "2026-11-21T10:00:02Z",
      "anthropic-ratelimit-tokens-reset": "2026-11-21T10:00:30Z",
      "anthropic-ratelimit-input-tokens-reset": "2026-11-21T10:00:12.5Z",
      "anthropic-ratelimit-output-tokens-reset": "2026-11-21T10:00:30Z",
    };
    expect(hint("anthropic", { ...resets, "anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-tokens-remaining": "12000" })).toBe(2000);
    expect(hint("anthropic", { ...resets, "anthropic-ratelimit-input-tokens-remaining": "0", "anthropic-ratelimit-requests-remaining": "49" })).toBe(12_500);
    expect(hint("anthropic", resets)).toBe(30_000);
    expect(hint("anthropic", { "anthropic-ratelimit-requests-reset": "2026-11-21T11:00:00+01:00" })).toBe(0);
    expect(hint("anthropic", { "anthropic-ratelimit-tokens-reset": "not a time" })).toBeUndefined();
    // Anthropic sends retry-after on a 429; it is the backend's own answer, so it wins.
    expect(hint("anthropic", { ...resets, "retry-after": "4" })).toBe(4000);
    // Other kinds do not read Anthropic's headers.
    expect(hint("openai", resets)).toBeUndefined();
  });
});
