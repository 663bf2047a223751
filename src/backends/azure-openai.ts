import { retryAfterMs as headerRetryAfterMs } from "../resilience/retry-after.ts";
import type { HeaderSource } from "../types.ts";
import type { BackendKind, TargetInput, UpstreamTarget } from "./kind.ts";
import { bodyWithModel, checkDeployment, passThrough, pathSegment } from "./rewrite.ts";

export const DEFAULT_AZURE_API_VERSION = "2024-10-21";

/** The APIs Azure serves per deployment (`/openai/deployments/{d}/…?api-version=`); the rest go to `/openai/v1/`. */
const DEPLOYMENT_SCOPED = new Set(["chat", "completions", "embeddings"]);

/**
 * Azure's layout: the deployment in the URL for an Azure-path request (the client's query,
 * api-version included, kept) and for chat/completions/embeddings from OpenAI paths (the
 * backend's api-version added when the client gave none); everything else (Responses,
 * messages, …) through the v1 API with the model renamed in the body. The body is rewritten
 * only for that rename.
 */
export function azureTarget(input: TargetInput): UpstreamTarget {
  const { baseUrl, cls, url, body, deployment } = input;
  const op = cls.operation;
  if (op === undefined) return passThrough(input);
  checkDeployment(deployment);
  if (cls.azurePath) {
    return { url: `${baseUrl}/openai/deployments/${pathSegment(deployment)}/${op}${url.search}`, body };
  }
  if (deployment && DEPLOYMENT_SCOPED.has(cls.api)) {
    const search = new URLSearchParams(url.search);
    if (!search.has("api-version")) search.set("api-version", input.apiVersion ?? DEFAULT_AZURE_API_VERSION);
    return { url: `${baseUrl}/openai/deployments/${pathSegment(deployment)}/${op}?${search}`, body };
  }
  return { url: `${baseUrl}/openai/v1/${op}${url.search}`, body: bodyWithModel(body, cls, deployment) };
}

/**
 * Azure OpenAI's 429 text, for when no header says it: "Please retry after 6 seconds." (also
 * "Try again in 20 seconds." in older API versions).
 */
const RETRY_TEXT = /(?:retry after|try again in) (\d+(?:\.\d+)?) seconds?/i;

/** Headers first (retry-after-ms and x-ms-retry-after-ms are exact), then the error text. */
export function azureRetryAfterMs(headers: HeaderSource, now: number, bodyText?: string): number | undefined {
  const fromHeaders = headerRetryAfterMs(headers, now);
  if (fromHeaders !== undefined || bodyText === undefined) return fromHeaders;
  const m = RETRY_TEXT.exec(bodyText);
  return m ? Number(m[1]) * 1000 : undefined;
}

export const azureOpenai: BackendKind = {
  name: "azure-openai",
  target: azureTarget,
  apiKeyHeader: (key) => ["api-key", key],
  requestHeaders: () => {},
  retryAfterMs: azureRetryAfterMs,
};
