import { retryAfterMs as headerRetryAfterMs } from "../resilience/retry-after.ts";
import type { HeaderSource } from "../types.ts";
import type { BackendKind } from "./kind.ts";
import { v1Target } from "./rewrite.ts";

/** Anthropic's per-limit headers: anthropic-ratelimit-{limit}-reset (RFC 3339) beside -remaining. */
const LIMITS = ["requests", "tokens", "input-tokens", "output-tokens"] as const;

/**
 * When no generic header says how long (Anthropic sends retry-after on a 429), the reset time
 * of the limit that ran out (its -remaining is 0); with no -remaining to tell, the latest
 * reset, since only it is sure to have freed whichever limit was hit.
 */
function resetMs(headers: HeaderSource, now: number): number | undefined {
  let spent: number | undefined;
  let any: number | undefined;
  for (const limit of LIMITS) {
    const reset = headers.get(`anthropic-ratelimit-${limit}-reset`);
    const at = reset === null ? Number.NaN : Date.parse(reset);
    if (Number.isNaN(at)) continue;
    const wait = Math.max(0, at - now);
    any = Math.max(any ?? 0, wait);
    if (headers.get(`anthropic-ratelimit-${limit}-remaining`)?.trim() === "0") spent = Math.max(spent ?? 0, wait);
  }
  return spent ?? any;
}

/** Anthropic: `/v1/{operation}` like OpenAI, an x-api-key, reset times in its own headers. */
export const anthropic: BackendKind = {
  name: "anthropic",
  target: v1Target,
  apiKeyHeader: (key) => ["x-api-key", key],
  requestHeaders: () => {},
  // Anthropic's error text carries no wait ("… or try again later"), so the body is not read.
  retryAfterMs: (headers, now) => headerRetryAfterMs(headers, now) ?? resetMs(headers, now),
};
