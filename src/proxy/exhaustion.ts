import { errorResponse, retryAfterHeaders, type AttemptRecord } from "../http/errors.ts";
import type { ApiKind } from "../types.ts";

export type Exhaustion =
  | { reason: "tried-all"; retryAfterMs?: number }
  | { reason: "circuit-open"; retryAfterMs?: number }
  | { reason: "cooling"; retryAfterMs: number };

/**
 * The answer when no attempt succeeded (CONTRACT §4): the common status when every attempt
 * failed alike (a 429 with the earliest cooldown as Retry-After), 502 when they differ, 504
 * when all timed out; with no attempt at all, 429 when every backend is cooling down and 503
 * when every circuit is open. The body takes the shape of `api`, the client's API family.
 */
export function exhaustedResponse(attempts: AttemptRecord[], why: Exhaustion, base: Record<string, string>, api?: ApiKind): Response {
  const retry = why.retryAfterMs !== undefined ? retryAfterHeaders(why.retryAfterMs) : {};
  if (attempts.length === 0) {
    return why.reason === "cooling"
      ? errorResponse({
          status: 429,
          code: "backends_cooling_down",
          message: "every eligible backend is cooling down after throttling, past this request's TTL; retry after the indicated time",
          attempts,
          headers: { ...base, ...retry },
          api,
        })
      : errorResponse({ status: 503, code: "circuit_open", message: "every eligible backend's circuit breaker is open", attempts, headers: { ...base, ...retry }, api });
  }
  const first = attempts[0]!.status;
  const same = attempts.every((a) => a.status === first);
  const status = same ? first : 502;
  const summary = attempts.map((a) => `${a.backend}: ${a.error ?? a.status}`).join("; ");
  return errorResponse({
    status,
    code: same && first === 504 && attempts.every((a) => a.error) ? "backends_timed_out" : "backends_exhausted",
    message: `no backend could answer (${summary})`,
    attempts,
    headers: status === 429 ? { ...base, ...retry } : base,
    api,
  });
}
