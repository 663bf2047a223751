import type { Classified } from "../classify.ts";
import type { BodyBytes, HeaderPairs, HeaderSource, BackendKindName } from "../types.ts";

export interface TargetInput {
  /** Backend base URL without a trailing slash. */
  baseUrl: string;
  /** The backend's own name for the model ("" when the request names no model). */
  deployment: string;
  /** backends[].apiVersion, if configured. */
  apiVersion: string | undefined;
  cls: Classified;
  /** The client's URL (path and query are read). */
  url: URL;
  /** The body to send (the client's bytes, or the gateway's include_usage rewrite). */
  body: BodyBytes | null;
}

export interface UpstreamTarget {
  url: string;
  body: BodyBytes | null;
}

export interface BackendKind {
  readonly name: BackendKindName;
  /** Where and what to send. Pure. Throws BadRequest (from ../classify.ts) for input that cannot be sent, e.g. a deployment name that cannot be percent-encoded (a lone surrogate: encodeURIComponent throws URIError) — never a raw URIError/TypeError. */
  target(input: TargetInput): UpstreamTarget;
  /** The header pair that carries a static API key for this kind when the config names no header (azure-openai: api-key; apim: ocp-apim-subscription-key; anthropic: x-api-key; openai: authorization: Bearer <key>). */
  apiKeyHeader(key: string): [string, string];
  /** Extra request headers of this kind, appended to `out` (apim: llm_proxy_priority = the request's priority level). */
  requestHeaders(priority: number, out: HeaderPairs): void;
  /** How long (ms) a throttling backend asked to be left alone: from its headers, and from the error body text when given (e.g. Azure OpenAI's "Please retry after 6 seconds", Anthropic's anthropic-ratelimit-*-reset RFC 3339 headers). Undefined when none is usable. */
  retryAfterMs(headers: HeaderSource, now: number, bodyText?: string): number | undefined;
}
