import { BadRequest } from "../classify.ts";

/**
 * The moment a request stops being worth serving, from SimpleL7Proxy's `S7PTTL` header:
 * seconds from now (fractional allowed), `+<epoch seconds>` (an absolute time), or an
 * ISO-8601 time. Malformed → BadRequest (400).
 */
export function ttlDeadline(header: string | null, now: number, defaultTtlMs: number): number {
  if (header === null) return now + defaultTtlMs;
  const v = header.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return now + Number(v) * 1000;
  if (/^\+\d+(\.\d+)?$/.test(v)) return Number(v.slice(1)) * 1000;
  if (/^\d{4}-\d{2}-\d{2}T/.test(v)) {
    const t = Date.parse(v);
    if (!Number.isNaN(t)) return t;
  }
  throw new BadRequest(`S7PTTL "${header}" is not seconds, +epoch-seconds or an ISO-8601 time`, "invalid_ttl");
}
