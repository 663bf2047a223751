import type { BackendKind } from "./kind.ts";
import { azureRetryAfterMs, azureTarget } from "./azure-openai.ts";

/**
 * Azure API Management in front of Azure OpenAI: Azure's URLs and retry hints, APIM's
 * subscription key, and the request's priority as `llm_proxy_priority` for the
 * Priority-with-retry policy (CONTRACT §4).
 */
export const apim: BackendKind = {
  name: "apim",
  target: azureTarget,
  apiKeyHeader: (key) => ["ocp-apim-subscription-key", key],
  requestHeaders(priority, out) {
    out.push(["llm_proxy_priority", String(priority)]);
  },
  retryAfterMs: azureRetryAfterMs,
};
