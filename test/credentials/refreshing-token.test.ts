/**
 * The token cache behind managed identity (src/credentials/port.ts), on a fake clock: when it
 * renews, what `ready` says while there is no usable token, and that no wait is unbounded.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { CredentialsUnavailable, RefreshingTokenCredentials, renewBeforeMs, type Token } from "../../src/credentials/port.ts";
import type { HeaderPairs } from "../../src/types.ts";

const MIN = 60_000;

/** A scripted token source: each call takes the next answer (a lifetime in ms, an error, or a promise that never settles). */
function source(answers: Array<number | Error | "hang">) {
  const calls: number[] = [];
  let n = 0;
  const fetch = (): Promise<Token> => {
    calls.push(Date.now());
    const a = answers[Math.min(n, answers.length - 1)]!;
    n++;
    if (a === "hang") return new Promise<Token>(() => undefined);
    if (a instanceof Error) return Promise.reject(a);
    return Promise.resolve({ token: `t${n}`, expiresAt: Date.now() + a });
  };
  return { fetch, calls };
}

const header = (c: RefreshingTokenCredentials) => {
  const out: HeaderPairs = [];
  c.apply(out);
  return out[0]?.[1];
};

describe("renewBeforeMs: 5 minutes before expiry, or half the lifetime when that is shorter", () => {
  it("long tokens 5 minutes before, short ones at half their lifetime", () => {
    expect(renewBeforeMs(0, 60 * MIN)).toBe(5 * MIN);
    expect(renewBeforeMs(0, 24 * 60 * MIN)).toBe(5 * MIN);
    expect(renewBeforeMs(0, 10 * MIN)).toBe(5 * MIN);
    expect(renewBeforeMs(0, 4 * MIN)).toBe(2 * MIN);
    expect(renewBeforeMs(1_000, 5_000)).toBe(2_000);
    expect(renewBeforeMs(5_000, 1_000)).toBe(0);
  });
});

describe("RefreshingTokenCredentials", () => {
  const open: RefreshingTokenCredentials[] = [];
  const make = (fetch: () => Promise<Token>, options: ConstructorParameters<typeof RefreshingTokenCredentials>[1] = {}) => {
    const c = new RefreshingTokenCredentials(fetch, { label: "the test token", ...options });
    open.push(c);
    return c;
  };
  let errors: ReturnType<typeof vi.spyOn>;

  beforeEach(() => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    errors = vi.spyOn(console, "error").mockImplementation(() => undefined);
  });
  afterEach(() => {
    for (const c of open.splice(0)) c.close();
    vi.useRealTimers();
    errors.mockRestore();
  });

  it("a one-hour token is renewed in the background 5 minutes before it expires, not before", async () => {
    const s = source([60 * MIN]);
    const c = make(s.fetch);
    await c.ready();
    expect(header(c)).toBe("Bearer t1");
    await vi.advanceTimersByTimeAsync(55 * MIN - 1);
    expect(s.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(s.calls).toHaveLength(2);
    expect(header(c)).toBe("Bearer t2");
    expect(c.ready()).toBeUndefined();
  });

  it("a 10-second token is renewed at half its lifetime, each renewal before the token in hand expires", async () => {
    const s = source([10_000]);
    const c = make(s.fetch);
    await c.ready();
    await vi.advanceTimersByTimeAsync(4_999);
    expect(s.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(s.calls).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(s.calls).toHaveLength(3);
    expect(header(c)).toBe("Bearer t3");
    // Never without a valid token in between.
    expect(c.ready()).toBeUndefined();
  });

  it("no token and the fetch failed: ready rejects at once with the reason, the next try comes after retryMs, then ready is undefined", async () => {
    const s = source([new Error("endpoint down"), 60 * MIN]);
    const c = make(s.fetch, { retryMs: 10_000 });
    await expect(c.ready()).rejects.toThrow(CredentialsUnavailable);
    // The failure is remembered: the next request fails over at once, no new fetch per request.
    await expect(c.ready()).rejects.toThrow(/the test token: no token: endpoint down/);
    expect(s.calls).toHaveLength(1);
    expect(String(errors.mock.calls[0]?.[0])).toMatch(/fetching the test token failed \(next try in 10 s\): endpoint down/);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(s.calls).toHaveLength(2);
    expect(c.ready()).toBeUndefined();
    expect(header(c)).toBe("Bearer t2");
  });

  it("a fetch that never answers: the request waiting for a first token is let go after fetchTimeoutMs", async () => {
    const s = source(["hang", 60 * MIN]);
    const c = make(s.fetch, { fetchTimeoutMs: 3_000, retryMs: 10_000 });
    let outcome: unknown;
    c.ready()!.then(
      () => (outcome = "ready"),
      (err) => (outcome = err),
    );
    await vi.advanceTimersByTimeAsync(2_999);
    expect(outcome).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(outcome).toBeInstanceOf(CredentialsUnavailable);
    expect(String(outcome)).toMatch(/no answer within 3000 ms/);
    // The hung fetch is not waited on again: the retry is a new one.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(s.calls).toHaveLength(2);
    expect(c.ready()).toBeUndefined();
  });

  it("renewals that keep failing: the token in hand is used until it expires, then ready rejects naming the expiry", async () => {
    const s = source([10 * MIN, new Error("endpoint down")]);
    const c = make(s.fetch, { retryMs: 60_000 });
    await c.ready();
    await vi.advanceTimersByTimeAsync(5 * MIN + 10);
    expect(s.calls).toHaveLength(2);
    // Renewal failed, the token is still valid.
    expect(c.ready()).toBeUndefined();
    expect(header(c)).toBe("Bearer t1");
    await vi.advanceTimersByTimeAsync(5 * MIN);
    await expect(c.ready()).rejects.toThrow(/the token expired and renewing it failed: endpoint down/);
  });

  it("refresh after a 401 fetches at once, one fetch for concurrent callers; true only when the token changed", async () => {
    let n = 0;
    const same = make(async () => ({ token: "same", expiresAt: Date.now() + 60 * MIN }));
    await same.ready();
    expect(await same.refresh()).toBe(false);
    const c = make(async () => ({ token: `t${++n}`, expiresAt: Date.now() + 60 * MIN }));
    await c.ready();
    const [a, b] = await Promise.all([c.refresh(), c.refresh()]);
    expect([a, b, n]).toEqual([true, true, 2]);
  });
});
