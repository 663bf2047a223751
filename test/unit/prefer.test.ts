import { describe, expect, it } from "vitest";
import { BadRequest } from "../../src/classify.ts";
import { asyncPreference } from "../../src/jobs/prefer.ts";

const pref = (headers: Record<string, string>, max = 600) => asyncPreference(new Headers(headers), max);

describe("asking for async (RFC 7240 Prefer, SimpleL7Proxy's S7PAsyncMode)", () => {
  it("reads respond-async with and without wait, among other preferences and parameters", () => {
    expect(pref({ prefer: "respond-async" })).toEqual({ waitMs: 0 });
    expect(pref({ prefer: "respond-async, wait=2" })).toEqual({ waitMs: 2000 });
    expect(pref({ prefer: 'handling=lenient, wait="30", respond-async;x;y="a b"' })).toEqual({ waitMs: 30_000 });
    expect(pref({ prefer: "RESPOND-ASYNC" })).toEqual({ waitMs: 0 });
    expect(pref({ s7pasyncmode: "true" })).toEqual({ waitMs: 0 });
    expect(pref({ s7pasyncmode: "True", prefer: "wait=5" })).toEqual({ waitMs: 5000 });
  });

  it("asks for nothing without respond-async or with S7PAsyncMode: false", () => {
    expect(pref({})).toBeUndefined();
    expect(pref({ prefer: "return=minimal" })).toBeUndefined();
    expect(pref({ prefer: "wait=10" })).toBeUndefined();
    expect(pref({ s7pasyncmode: "false" })).toBeUndefined();
  });

  it("serves a wait above jobs.maxWaitSeconds as the maximum", () => {
    expect(pref({ prefer: "respond-async, wait=999999" }, 60)).toEqual({ waitMs: 60_000 });
  });

  it("refuses malformed values with 400-class errors naming the header", () => {
    for (const prefer of ["respond-async; =", "wait=-1, respond-async", "respond-async, wait=soon", "respond-async, wait=1.5", "a b", "respond-async, wait=1234567", "x".repeat(1025)]) {
      expect(() => pref({ prefer }), prefer.slice(0, 40)).toThrow(BadRequest);
    }
    expect(() => pref({ s7pasyncmode: "yes" })).toThrow(/S7PAsyncMode/);
  });
});
