import { describe, expect, it } from "vitest";
import { parseDuration, retryAfterMs } from "../../src/resilience/retry-after.ts";

const NOW = Date.parse("2026-11-21T10:00:00Z");
const h = (init: Record<string, string>) => new Headers(init);

describe("retry-after parsing", () => {
  it("reads every header providers use", () => {
    expect(retryAfterMs(h({ "retry-after-ms": "2000" }), NOW)).toBe(2000);
    expect(retryAfterMs(h({ "x-ms-retry-after-ms": "750" }), NOW)).toBe(750);
    expect(retryAfterMs(h({ "retry-after": "3" }), NOW)).toBe(3000);
    expect(retryAfterMs(h({ "retry-after": "Sat, 21 Nov 2026 10:00:05 GMT" }), NOW)).toBe(5000);
    expect(retryAfterMs(h({ "x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "250ms" }), NOW)).toBe(90_000);
    expect(retryAfterMs(h({ "retry-after-ms": "100", "retry-after": "9" }), NOW)).toBe(100);
  });
  it("ignores what it cannot read", () => {
    expect(retryAfterMs(h({}), NOW)).toBeUndefined();
    expect(retryAfterMs(h({ "retry-after": "soon" }), NOW)).toBeUndefined();
    expect(parseDuration("2s junk")).toBeUndefined();
    expect(parseDuration("6m0s")).toBe(360_000);
  });
});
