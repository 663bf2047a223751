/**
 * A soak under a fake clock (issue 10): two backends alternate between throttling and serving
 * for ten simulated minutes while a few hundred requests of mixed priorities and TTLs arrive.
 * The gateway is the real pipeline and in-process scheduler; only the network is scripted and
 * time is simulated. Every request must end — served, or 412/429 exactly when its TTL could not
 * be met — nothing may be left waiting or leased, and no backend may receive a request while it
 * cools down, or more than one (its probe) before it has answered again.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { createGateway } from "../../src/gateway.ts";
import type { UpstreamFetch } from "../../src/proxy/attempt.ts";
import { rng } from "../harness/rng.ts";


interface BackendScript {
  /** Throttles during [k·period + offset, k·period + offset + throttleMs). */
  period: number;
  offset: number;
  throttleMs: number;
  coolMs: number;
  serveMs: number;
}

beforeEach(() => {
  vi.useFakeTimers({ now: Date.parse("2026-12-01T00:00:00Z") });
});
afterEach(() => {
  vi.useRealTimers();
});

describe("throttling soak (fake clock, ten simulated minutes)", () => {
  it("every request ends, none is left waiting, and no backend is sent more than its probe while cooling or recovering", async () => {
    const t0 = Date.now();
    const random = rng(42);
    const scripts: Record<string, BackendScript> = {
      a: { period: 60_000, offset: 0, throttleMs: 25_000, coolMs: 3_000, serveMs: 300 },
      b: { period: 45_000, offset: 15_000, throttleMs: 20_000, coolMs: 5_000, serveMs: 500 },
    };
    const seen = {
      a: { coolUntil: 0, recovering: false, sinceRecovery: 0, inFlight: 0, received: 0, violations: [] as string[] },
      b: { coolUntil: 0, recovering: false, sinceRecovery: 0, inFlight: 0, received: 0, violations: [] as string[] },
    };
    const upstream: UpstreamFetch = (url) => {
      const name = new URL(url).hostname.split(".")[0] as "a" | "b";
      const s = scripts[name]!;
      const st = seen[name];
      const at = Date.now() - t0;
      st.received++;
      if (Date.now() < st.coolUntil) st.violations.push(`${name} got a request at +${at} ms while cooling until +${st.coolUntil - t0}`);
      if (st.recovering && st.sinceRecovery++ >= 1) st.violations.push(`${name} got a second request at +${at} ms before its probe was answered`);
      st.inFlight++;
      const throttling = (at - s.offset + s.period) % s.period < s.throttleMs;
      return new Promise((resolve) => {
        setTimeout(
          () => {
            st.inFlight--;
            if (throttling) {
              st.coolUntil = Date.now() + s.coolMs;
              st.recovering = true;
              st.sinceRecovery = 0;
              resolve({ status: 429, headers: new Headers({ "retry-after-ms": String(s.coolMs), "content-type": "application/json" }), body: null, wholeBody: new TextEncoder().encode('{"error":{}}') });
            } else {
              st.recovering = false;
              const body = new TextEncoder().encode(JSON.stringify({ object: "chat.completion", choices: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
              resolve({ status: 200, headers: new Headers({ "content-type": "application/json" }), body: null, wholeBody: body });
            }
          },
          throttling ? 20 : s.serveMs,
        );
      });
    };
    const config = parseConfig({
      metering: { sinks: [] },
      resilience: { breaker: { failureThreshold: 1_000, openMs: 30_000 } },
      backends: [
        { name: "a", url: "http://a.test", models: ["gpt-4o"], group: 1, maxConcurrency: 2 },
        { name: "b", url: "http://b.test", models: ["gpt-4o"], group: 2, maxConcurrency: 2 },
      ],
    });
    const gw = createGateway({ config, upstream, random });

    interface Outcome {
      status: number;
      deadline: number;
      end: number;
      retryAfterMs: number | null;
    }
    const outcomes: Promise<Outcome>[] = [];
    const PRIORITIES = ["high", "normal", "low"];
    const TOTAL = 300;
    let sent = 0;
    for (let i = 0; i < TOTAL; i++) {
      // Arrivals spread over ten minutes.
      await vi.advanceTimersByTimeAsync(Math.floor(random() * 4_000));
      const ttlS = 1 + Math.floor(random() * 40);
      const deadline = Date.now() + ttlS * 1000;
      sent++;
      outcomes.push(
        Promise.resolve(
          gw.fetch(
            new Request("http://gw.test/v1/chat/completions", {
              method: "POST",
              headers: { "content-type": "application/json", "x-priority": PRIORITIES[i % 3]!, s7pttl: String(ttlS), "x-api-key": `caller-${i % 5}` },
              body: '{"model":"gpt-4o","messages":[]}',
            }),
          ),
        ).then(async (r) => {
          await r.arrayBuffer();
          const ra = r.headers.get("retry-after-ms");
          return { status: r.status, deadline, end: Date.now(), retryAfterMs: ra === null ? null : Number(ra) };
        }),
      );
    }
    // Let every TTL run out.
    await vi.advanceTimersByTimeAsync(60_000);
    const results = await Promise.all(outcomes);
    expect(sent).toBe(TOTAL);
    const byStatus: Record<number, number> = {};
    for (const r of results) byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;
    // Served, or out of time: nothing else.
    for (const s of Object.keys(byStatus)) expect([200, 412, 429], `status ${s}`).toContain(Number(s));
    expect(byStatus[200]).toBeGreaterThan(TOTAL / 2);
    expect((byStatus[412] ?? 0) + (byStatus[429] ?? 0)).toBeGreaterThan(0);
    for (const r of results) {
      // A 412 only once its TTL had passed; a 429 only when the cooldown it names ends past the TTL.
      if (r.status === 412) expect(r.end).toBeGreaterThanOrEqual(r.deadline);
      if (r.status === 429) expect(r.end + (r.retryAfterMs ?? 0)).toBeGreaterThanOrEqual(r.deadline);
    }
    const stats = await gw.scheduler.stats();
    expect(stats.waiting).toBe(0);
    expect(stats.backends.map((b) => b.inFlight)).toEqual([0, 0]);
    expect([...seen.a.violations, ...seen.b.violations]).toEqual([]);
    expect(seen.a.received + seen.b.received).toBeGreaterThan(TOTAL / 2);
  }, 60_000);
});
