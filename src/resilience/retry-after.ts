import type { HeaderSource } from "../http/headers.ts";

/**
 * How long a throttling backend asked us to stay away, in ms, from the headers providers use:
 * `retry-after-ms` and `x-ms-retry-after-ms` (Azure OpenAI), `retry-after` (seconds or an
 * HTTP date), and OpenAI's `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`
 * (durations such as "1s", "6m0s", "250ms"). Undefined when none is usable.
 */
export function retryAfterMs(headers: HeaderSource, now: number): number | undefined {
  const ms = headers.get("retry-after-ms") ?? headers.get("x-ms-retry-after-ms");
  if (ms !== null) {
    const v = Number(ms);
    if (Number.isFinite(v) && v >= 0) return v;
  }
  const ra = headers.get("retry-after");
  if (ra !== null) {
    const v = parseRetryAfter(ra, now);
    if (v !== undefined) return v;
  }
  let reset: number | undefined;
  for (const name of ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]) {
    const h = headers.get(name);
    const v = h === null ? undefined : parseDuration(h);
    if (v !== undefined) reset = Math.max(reset ?? 0, v);
  }
  return reset;
}

function parseRetryAfter(value: string, now: number): number | undefined {
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "1h2m3.5s", "250ms", or a bare number of seconds. */
export function parseDuration(value: string): number | undefined {
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  let total = 0;
  let consumed = 0;
  for (const m of trimmed.matchAll(DURATION_PART)) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    consumed += m[0].length;
  }
  return consumed > 0 && consumed === trimmed.length ? total : undefined;
}
