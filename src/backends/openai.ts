import { parseDuration, retryAfterMs as headerRetryAfterMs } from "../resilience/retry-after.ts";
import type { BackendKind } from "./kind.ts";
import { v1Target } from "./rewrite.ts";

/** OpenAI's 429 text: "… Please try again in 6m0s." / "… in 1.5s." / "… in 120ms." */
const TRY_AGAIN = /try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)/i;

/** OpenAI (and any OpenAI-compatible server): `/v1/{operation}`, the model in the body, a bearer key. */
export const openai: BackendKind = {
  name: "openai",
  target: v1Target,
  apiKeyHeader: (key) => ["authorization", `Bearer ${key}`],
  requestHeaders: () => {},
  retryAfterMs(headers, now, bodyText) {
    const fromHeaders = headerRetryAfterMs(headers, now);
    if (fromHeaders !== undefined || bodyText === undefined) return fromHeaders;
    const m = TRY_AGAIN.exec(bodyText);
    return m ? parseDuration(m[1]!) : undefined;
  },
};
