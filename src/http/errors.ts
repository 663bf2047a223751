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
}

/** An OpenAI-style error body, so client SDKs surface the message as they would a provider's. */
export function errorResponse(opts: GatewayErrorOptions): Response {
  const body: Record<string, unknown> = { message: opts.message, type: "sluice_error", code: opts.code };
  if (opts.attempts) body.attempts = opts.attempts;
  return new Response(JSON.stringify({ error: body }), {
    status: opts.status,
    headers: { "content-type": "application/json", ...opts.headers },
  });
}

/** Retry-After (whole seconds, rounded up) and retry-after-ms for a wait of `ms`. */
export function retryAfterHeaders(ms: number): Record<string, string> {
  const wait = Math.max(0, Math.ceil(ms));
  return { "retry-after": String(Math.ceil(wait / 1000)), "retry-after-ms": String(wait) };
}
