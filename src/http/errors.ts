import type { ApiKind } from "../types.ts";

export interface AttemptRecord {
  backend: string;
  /** HTTP status the backend answered, or the status the failure counts as (502 connection error, 504 timeout). */
  status: number;
  /** What went wrong when there was no HTTP answer. */
  error?: string;
  ms: number;
}

export interface GatewayErrorOptions {
  status: number;
  code: string;
  message: string;
  attempts?: AttemptRecord[];
  headers?: Record<string, string>;
  /** The API family the client speaks: "messages" gets Anthropic's error shape, the rest OpenAI's. */
  api?: ApiKind;
}

const encoder = new TextEncoder();

/**
 * Anthropic's error types by status (its "Errors" docs; 504 timeout_error is in the SDK's own
 * ErrorType). Other 4xx read as a bad request, other 5xx as api_error.
 */
function anthropicErrorType(status: number): string {
  switch (status) {
    case 400:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 503:
    case 529:
      return "overloaded_error";
    case 504:
      return "timeout_error";
  }
  return status >= 500 ? "api_error" : "invalid_request_error";
}

/**
 * Anthropic's error object, the gateway's code and attempts in `details`: the Anthropic SDK
 * surfaces `details.error_code` as `APIError.errorCode` and `details` as `APIError.details`,
 * and tells clients to treat an unknown error_code as the bare `type`.
 */
function anthropicError(type: string, message: string, code: string, attempts?: AttemptRecord[]): Record<string, unknown> {
  const details: Record<string, unknown> = { error_code: code };
  if (attempts) details.attempts = attempts;
  return { type, message, details };
}

/**
 * The error body in the client's own API family, so its SDK surfaces the gateway's message
 * as it would a provider's: Anthropic's `{"type":"error","error":{…},"request_id"}` for
 * `/v1/messages`, OpenAI's `{"error":{…}}` for everything else.
 */
function errorBody(opts: GatewayErrorOptions): Record<string, unknown> {
  if (opts.api === "messages") {
    return {
      type: "error",
      error: anthropicError(anthropicErrorType(opts.status), opts.message, opts.code, opts.attempts),
      request_id: opts.headers?.["x-request-id"] ?? null,
    };
  }
  const error: Record<string, unknown> = { message: opts.message, type: "sluice_error", code: opts.code };
  if (opts.attempts) error.attempts = opts.attempts;
  return { error };
}

/** A gateway error answer shaped for the client's API family (see errorBody). */
export function errorResponse(opts: GatewayErrorOptions): Response {
  return new Response(JSON.stringify(errorBody(opts)), {
    status: opts.status,
    headers: { "content-type": "application/json", ...opts.headers },
  });
}

/** Retry-After (whole seconds, rounded up) and retry-after-ms for a wait of `ms`. */
export function retryAfterHeaders(ms: number): Record<string, string> {
  const wait = Math.max(0, Math.ceil(ms));
  return { "retry-after": String(Math.ceil(wait / 1000)), "retry-after-ms": String(wait) };
}

/**
 * The SSE bytes that end a stream broken after its first byte (CONTRACT §4): an `event: error`
 * the client's SDK raises as an error, and never a `[DONE]`, so the truncated answer cannot
 * pass for a finished one.
 * - chat, completions, other: OpenAI's `{"error":{…}}` (the openai SDK throws an APIError on it).
 * - responses: the Responses API's own `error` event, `sequence_number` one past the last seen;
 *   the AI SDK validates each event against the Responses schema, so a foreign shape would
 *   surface as "Type validation failed" instead of the gateway's message.
 * - messages: Anthropic's stream `error` event; `api_error` because a broken backend stream is
 *   a server fault, not a capacity signal (`overloaded_error`).
 */
export function streamErrorEvent(api: ApiKind, backend: string, sequenceNumber?: number): Uint8Array {
  const message = `the stream from backend ${backend} was interrupted; the response is incomplete`;
  const code = "stream_interrupted";
  let data: Record<string, unknown>;
  if (api === "responses") {
    data = { type: "error", code, message, param: null, sequence_number: sequenceNumber ?? 0 };
  } else if (api === "messages") {
    data = { type: "error", error: anthropicError("api_error", message, code) };
  } else {
    data = { error: { message, type: "sluice_error", code } };
  }
  return encoder.encode(`event: error\ndata: ${JSON.stringify(data)}\n\n`);
}
