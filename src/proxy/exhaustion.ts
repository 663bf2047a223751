import { errorResponse, retryAfterHeaders, type AttemptRecord } from "../http/errors.ts";
import type { Backend } from "../routing/backend.ts";

/** Earliest moment one of the backends leaves cooldown, if any is cooling. */
function earliestCooldownEnd(backends: readonly Backend[], now: number): number | undefined {
  let earliest: number | undefined;
  for (const b of backends) {
    if (b.cooldownUntil > now && (earliest === undefined || b.cooldownUntil < earliest)) earliest = b.cooldownUntil;
  }
  return earliest;
}

/**
 * The answer when no attempt succeeded (CONTRACT §4): the common status when every attempt
 * failed alike, 502 when they differ, 504 when all timed out; with no attempt at all, 429
 * when backends are cooling or busy (with the earliest Retry-After), 503 when every circuit
 * is open.
 */
export function exhaustedResponse(attempts: AttemptRecord[], eligible: readonly Backend[], now: number, base: Record<string, string>): Response {
  const coolingEnd = earliestCooldownEnd(eligible, now);
  if (attempts.length === 0) {
    const reasons = eligible.map((b) => b.unavailable(now));
    if (reasons.every((r) => r === "cooling")) {
      return errorResponse({
        status: 429,
        code: "backends_cooling_down",
        message: "every eligible backend is cooling down after throttling; retry after the indicated time",
        attempts,
        headers: { ...base, ...retryAfterHeaders(coolingEnd! - now) },
      });
    }
    if (reasons.some((r) => r === "busy" || r === "cooling")) {
      const wait = coolingEnd !== undefined ? Math.min(coolingEnd - now, 1000) : 1000;
      return errorResponse({
        status: 429,
        code: "no_capacity",
        message: "every eligible backend is at its concurrency limit or cooling down",
        attempts,
        headers: { ...base, ...retryAfterHeaders(wait) },
      });
    }
    const reopen = Math.min(...eligible.map((b) => b.breaker.reopensAt()));
    return errorResponse({
      status: 503,
      code: "circuit_open",
      message: "every eligible backend's circuit breaker is open",
      attempts,
      headers: { ...base, ...retryAfterHeaders(Math.max(0, reopen - now)) },
    });
  }
  const first = attempts[0]!.status;
  const same = attempts.every((a) => a.status === first);
  const status = same ? first : 502;
  const headers = status === 429 && coolingEnd !== undefined ? { ...base, ...retryAfterHeaders(coolingEnd - now) } : base;
  const summary = attempts.map((a) => `${a.backend}: ${a.error ?? a.status}`).join("; ");
  return errorResponse({
    status,
    code: same && first === 504 && attempts.every((a) => a.error) ? "backends_timed_out" : "backends_exhausted",
    message: `no backend could answer (${summary})`,
    attempts,
    headers,
  });
}
