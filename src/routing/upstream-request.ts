import type { Classified } from "../classify.ts";
import type { HeaderPairs } from "../http/headers.ts";
import type { BodyBytes } from "../proxy/attempt.ts";
import type { Backend } from "./backend.ts";

const DEFAULT_AZURE_API_VERSION = "2024-10-21";
const DEPLOYMENT_SCOPED = new Set(["chat", "completions", "embeddings"]);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export interface UpstreamTarget {
  url: string;
  /** The body to send: the client's bytes, or a rewrite when the model had to be renamed in it. */
  body: BodyBytes | null;
}

function isAzureShaped(b: Backend): boolean {
  return b.kind === "azure-openai" || b.kind === "apim";
}

/** The client's body with `model` set to the backend's name for it, only when that differs. */
function bodyWithModel(body: BodyBytes | null, cls: Classified, deployment: string): BodyBytes | null {
  if (!body || !deployment) return body;
  let json = cls.json;
  if (!json) {
    try {
      json = JSON.parse(decoder.decode(body)) as Record<string, unknown>;
    } catch {
      return body;
    }
    if (!json || typeof json !== "object") return body;
  }
  if (json.model === deployment) return body;
  return encoder.encode(JSON.stringify({ ...json, model: deployment }));
}

/**
 * Where and what to send for this backend. Azure-shaped backends put the deployment in the
 * URL; OpenAI-shaped ones in the body's `model`. The body is rewritten only for a rename.
 */
export function upstreamTarget(backend: Backend, cls: Classified, url: URL, body: BodyBytes | null): UpstreamTarget {
  const base = backend.baseUrl;
  const op = cls.operation;
  if (op === undefined) return { url: base + url.pathname + url.search, body };
  const deployment = backend.deploymentFor(cls.model) ?? "";
  if (isAzureShaped(backend)) {
    if (cls.azurePath) {
      return { url: `${base}/openai/deployments/${encodeURIComponent(deployment)}/${op}${url.search}`, body };
    }
    if (deployment && DEPLOYMENT_SCOPED.has(cls.api)) {
      const search = new URLSearchParams(url.search);
      if (!search.has("api-version")) search.set("api-version", backend.config.apiVersion ?? DEFAULT_AZURE_API_VERSION);
      return { url: `${base}/openai/deployments/${encodeURIComponent(deployment)}/${op}?${search}`, body };
    }
    return { url: `${base}/openai/v1/${op}${url.search}`, body: bodyWithModel(body, cls, deployment) };
  }
  let search = url.search;
  if (cls.azurePath) {
    const params = new URLSearchParams(search);
    params.delete("api-version");
    search = params.size ? `?${params}` : "";
  }
  return { url: `${base}/v1/${op}${search}`, body: bodyWithModel(body, cls, deployment) };
}

/** Sets the backend's own credentials (the client's were already removed). */
export function applyCredentials(backend: Backend, headers: HeaderPairs): void {
  const auth = backend.config.auth;
  if (!auth || auth.type === "none") return;
  if (auth.type === "bearer") {
    headers.push(["authorization", `Bearer ${auth.token}`]);
    return;
  }
  if (auth.header) {
    headers.push([auth.header, auth.key]);
    return;
  }
  switch (backend.kind) {
    case "azure-openai":
      headers.push(["api-key", auth.key]);
      break;
    case "apim":
      headers.push(["ocp-apim-subscription-key", auth.key]);
      break;
    case "anthropic":
      headers.push(["x-api-key", auth.key]);
      break;
    case "openai":
      headers.push(["authorization", `Bearer ${auth.key}`]);
      break;
  }
}
