/**
 * Budgets end to end on Node over real sockets (issue 11): the gateway from the Node harness,
 * LLM simulators on 127.0.0.1 as backends, the global `fetch` as the client.
 *
 * What is asserted is what a client SDK acts on: a request that fits the budget only once it is
 * full is admitted (its completion reservation capped), one whose prompt can never fit gets a
 * non-retryable error naming both numbers and no Retry-After, a refusal names the limit that
 * refused it and its Retry-After lets the next try in, and no header ever holds NaN, Infinity
 * or exponent notation. And /metrics stays bounded whatever model names and priorities clients
 * send.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import { startNodeGateway } from "../harness/node.ts";
import { closeAfterEach, onClose, sim } from "../harness/e2e.ts";
import { pollUntil } from "../conformance/helpers.ts";

const MODEL = "gpt-4o";
const PATH = "/v1/chat/completions";
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

closeAfterEach();

async function gateway(config: SluiceConfigInput): Promise<string> {
  const gw = await startNodeGateway({ resilience: { timeoutMs: 5_000 }, ...config });
  onClose(() => gw.close());
  return gw.url;
}

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  testId: string;
  error: { message?: string; code?: string } | undefined;
}

/** Every reply of the file, for the header checks. */
const seen: Reply[] = [];

async function send(url: string, body: string, o: { key?: string; chunks?: number; headers?: Record<string, string> } = {}): Promise<Reply> {
  const testId = randomUUID();
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "api-key": o.key ?? "budget-key",
    "x-test-id": testId,
    "x-sim-fault": JSON.stringify({ chunks: o.chunks ?? 5 }),
    ...o.headers,
  };
  const res = await fetch(url + PATH, { method: "POST", headers, body, signal: AbortSignal.timeout(15_000) });
  const text = await res.text();
  let error: Reply["error"];
  if (res.status >= 400) {
    try {
      error = (JSON.parse(text) as { error?: Reply["error"] }).error;
    } catch {
      error = undefined;
    }
  }
  const reply = { status: res.status, headers: res.headers, text, testId, error };
  seen.push(reply);
  expectSaneHeaders(reply);
  return reply;
}

const chat = (content: string, extra: Record<string, unknown> = {}): string => JSON.stringify({ model: MODEL, messages: [{ role: "user", content }], ...extra });

/** The gateway's prompt estimate: one token per four body bytes. */
const promptOf = (body: string): number => Math.max(1, Math.ceil(Buffer.byteLength(body) / 4));

const receivedBy = (s: RunningSimulator, testId: string) => s.sim.stats().requests.filter((r) => r.headers["x-test-id"] === testId);

const WHOLE = /^\d+$/;
const WHOLE_MS = /^\d+ms$/;
/** The numeric headers the gateway writes, and their shape. */
const NUMERIC: Record<string, RegExp> = {
  "retry-after": WHOLE,
  "retry-after-ms": WHOLE,
  "x-ratelimit-limit-tokens": WHOLE,
  "x-ratelimit-remaining-tokens": WHOLE,
  "x-ratelimit-reset-tokens": WHOLE_MS,
  "x-ratelimit-limit-requests": WHOLE,
  "x-ratelimit-remaining-requests": WHOLE,
  "x-ratelimit-reset-requests": WHOLE_MS,
  "x-sluice-attempts": WHOLE,
  "x-sluice-queue-ms": WHOLE,
};

/** No header holds NaN or Infinity; the numeric ones are plain whole numbers (no exponent, no fraction, no sign). */
function expectSaneHeaders(r: Reply): void {
  r.headers.forEach((value, name) => {
    expect(value, `${name} of a ${r.status}`).not.toMatch(/NaN|Infinity/i);
    const shape = NUMERIC[name];
    if (shape) expect(value, `${name} of a ${r.status}`).toMatch(shape);
  });
  const ms = r.headers.get("retry-after-ms");
  if (ms !== null) {
    expect(r.headers.get("retry-after"), "Retry-After is retry-after-ms in whole seconds, rounded up").toBe(String(Math.ceil(Number(ms) / 1000)));
    expect(Number(ms)).toBeGreaterThan(0);
    // Never longer than a budget takes to be full again (at most the capped debt: 61 minutes).
    expect(Number(ms)).toBeLessThanOrEqual(61 * 60_000);
  }
}

const num = (r: Reply, name: string): number => Number(r.headers.get(name));

/** A 429's headers agree with the limit it names: that budget is short, and full again no sooner than the wait. */
function expectConsistentRefusal(r: Reply, limit: "tokens" | "requests", requested?: number): number {
  expect(r.status, r.text).toBe(429);
  expect(r.error?.code).toBe("rate_limit_exceeded");
  expect(r.error?.message).toContain(limit === "tokens" ? "tokens per minute" : "requests per minute");
  const wait = num(r, "retry-after-ms");
  expect(wait).toBeGreaterThan(0);
  if (limit === "tokens") {
    expect(num(r, "x-ratelimit-remaining-tokens")).toBeLessThan(requested ?? Number.POSITIVE_INFINITY);
    expect(num(r, "x-ratelimit-remaining-tokens")).toBeLessThan(num(r, "x-ratelimit-limit-tokens"));
    expect(Number.parseInt(r.headers.get("x-ratelimit-reset-tokens")!, 10)).toBeGreaterThanOrEqual(wait);
  } else {
    expect(r.headers.get("x-ratelimit-remaining-requests")).toBe("0");
    expect(Number.parseInt(r.headers.get("x-ratelimit-reset-requests")!, 10)).toBeGreaterThanOrEqual(wait);
  }
  return wait;
}

describe("budgets end to end [node]", () => {
  it("a limit of 200 tokens/min: a plain request (no max_tokens, 256 by default) is admitted with its completion reservation capped, and the next waits for a full budget", async () => {
    const b1 = await sim("b1");
    const url = await gateway({ backends: [{ name: "b1", url: b1.url, kind: "openai", models: [MODEL] }], limits: { perCaller: { tokensPerMinute: 200 } } });
    const body = chat("Hello there.");
    expect(promptOf(body) + 256, "the uncapped estimate is over the budget").toBeGreaterThan(200);

    const first = await send(url, body);
    expect(first.status, first.text).toBe(200);
    // The reservation is the whole budget (the prompt plus a completion capped to fit): nothing left, full again in a minute.
    expect(first.headers.get("x-ratelimit-limit-tokens")).toBe("200");
    expect(first.headers.get("x-ratelimit-remaining-tokens")).toBe("0");
    expect(first.headers.get("x-ratelimit-reset-tokens")).toBe("60000ms");
    expect(receivedBy(b1, first.testId)).toHaveLength(1);

    // Settled at its real usage (a few tokens), the budget has almost all come back, but not
    // quite the whole of it that the next plain request reserves: a short, real wait.
    const second = await send(url, body);
    const wait = expectConsistentRefusal(second, "tokens", 200);
    expect(num(second, "x-ratelimit-limit-tokens")).toBe(200);
    expect(num(second, "x-ratelimit-remaining-tokens")).toBeGreaterThan(150);
    expect(wait, "the wait is what the usage of the first answer takes to refill").toBeLessThanOrEqual(15_000);
    expect(receivedBy(b1, second.testId)).toHaveLength(0);

    await sleep(wait);
    const third = await send(url, body);
    expect(third.status, `after the advertised wait: ${third.text}`).toBe(200);
    expect(third.headers.get("x-ratelimit-remaining-tokens")).toBe("0");
  });

  it("a prompt bigger than the whole budget gets a non-retryable 413 naming the estimate and the limit, and never reaches the backend", async () => {
    const b1 = await sim("b1");
    const url = await gateway({
      backends: [{ name: "b1", url: b1.url, kind: "openai", models: [MODEL] }],
      limits: { perCaller: { tokensPerMinute: 200, requestsPerMinute: 2 } },
    });
    const body = chat("sluice ".repeat(200), { max_tokens: 10 });
    const prompt = promptOf(body);
    expect(prompt).toBeGreaterThan(200);
    for (let i = 0; i < 3; i++) {
      const r = await send(url, body);
      expect(r.status, r.text).toBe(413);
      expect(r.error?.code).toBe("prompt_exceeds_token_limit");
      expect(r.error?.message).toContain(`${prompt} tokens`);
      expect(r.error?.message).toContain("200 tokens per minute");
      expect(r.headers.get("retry-after"), "no Retry-After: waiting cannot help").toBeNull();
      expect(r.headers.get("retry-after-ms")).toBeNull();
      expect(receivedBy(b1, r.testId)).toHaveLength(0);
    }
    expect(b1.sim.stats().received).toBe(0);
    // Nothing was taken for them, not even a request: both requests of the minute are still there.
    for (let i = 0; i < 2; i++) expect((await send(url, chat("Short.", { max_tokens: 10 }))).status).toBe(200);
    expectConsistentRefusal(await send(url, chat("Short.", { max_tokens: 10 })), "requests");
  });

  it("a requests-per-minute refusal names requests, and its Retry-After lets the next try succeed", async () => {
    const b1 = await sim("b1");
    // 60 a minute: a burst of 60, then one a second.
    const url = await gateway({ backends: [{ name: "b1", url: b1.url, kind: "openai", models: [MODEL] }], limits: { perCaller: { requestsPerMinute: 60 } } });
    const body = chat("One more?", { max_tokens: 5 });
    let refusal: Reply | undefined;
    let admitted = 0;
    for (let i = 0; i < 200 && !refusal; i++) {
      const r = await send(url, body, { chunks: 1 });
      if (r.status === 429) refusal = r;
      else {
        expect(r.status, r.text).toBe(200);
        admitted++;
      }
    }
    expect(refusal, "the 61st request or so is refused").toBeDefined();
    expect(admitted).toBeGreaterThanOrEqual(60);
    const wait = expectConsistentRefusal(refusal!, "requests");
    expect(refusal!.headers.get("x-ratelimit-limit-requests")).toBe("60");
    expect(refusal!.headers.get("x-ratelimit-limit-tokens"), "no token limit is configured").toBeNull();
    expect(wait).toBeLessThanOrEqual(1_000);
    expect(receivedBy(b1, refusal!.testId)).toHaveLength(0);
    expect(b1.sim.stats().received).toBe(admitted);

    await sleep(wait);
    const next = await send(url, body, { chunks: 1 });
    expect(next.status, `after the advertised ${wait} ms: ${next.text}`).toBe(200);
  });

  it("absurd max_tokens and n never put NaN, Infinity or exponent notation in a header", async () => {
    const b1 = await sim("b1");
    const url = await gateway({
      backends: [{ name: "b1", url: b1.url, kind: "openai", models: [MODEL] }],
      limits: { perCaller: { tokensPerMinute: 200, requestsPerMinute: 1_000 } },
    });
    const messages = JSON.stringify([{ role: "user", content: "Hi." }]);
    // Raw JSON text: 1e999 parses to Infinity, which JSON.stringify cannot write.
    const bodies = [
      `{"model":"${MODEL}","messages":${messages},"max_tokens":1e999}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":1e300}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":1e20,"n":1e20}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":10,"n":1e308}`,
      `{"model":"${MODEL}","messages":${messages},"max_completion_tokens":599999999999999900}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":-1}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":0.5,"n":0.3}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":"lots"}`,
      `{"model":"${MODEL}","messages":${messages},"max_tokens":1e999,"stream":true}`,
    ];
    const statuses = new Set<number>();
    const start = seen.length;
    for (let round = 0; round < 3; round++) {
      for (const body of bodies) statuses.add((await send(url, body, { key: `absurd-${round}` })).status);
    }
    // Each round's caller: the first request admitted (capped at the budget), the rest refused with a wait that ends.
    expect(statuses.has(200)).toBe(true);
    expect(statuses.has(429)).toBe(true);
    for (const r of seen.slice(start)) {
      expect([200, 429], r.text).toContain(r.status);
      if (r.status === 429) {
        const wait = expectConsistentRefusal(r, "tokens");
        expect(wait).toBeLessThanOrEqual(60_000);
      }
    }
  });

  it("/metrics stays bounded: 500 client model names (to a `*` backend) and priorities give only configured names", async () => {
    const [b1, b2] = await Promise.all([sim("b1"), sim("b2")]);
    const url = await gateway({
      priorities: { levels: { high: 1, normal: 2, low: 3 } },
      backends: [
        { name: "named", url: b1.url, kind: "openai", models: [MODEL, { name: "claude-ish", deployment: "claude-prod" }] },
        { name: "any", url: b2.url, kind: "openai", models: ["*"] },
      ],
    });
    const N = 500;
    const PRIORITY_SENT: Array<(i: number) => string> = [() => "high", () => "3", () => "normal", (i) => String(1000 + i), (i) => String(-i)];
    for (let batch = 0; batch < N; batch += 50) {
      await Promise.all(
        Array.from({ length: 50 }, async (_, j) => {
          const i = batch + j;
          const model = i % 25 === 0 ? MODEL : `client-model-${i}`;
          const r = await send(url, JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 3 }), {
            key: "metrics-client",
            chunks: 2,
            // Configured levels by name and by number; and numbers no config names (refused with 400, still counted).
            headers: { "x-priority": PRIORITY_SENT[i % PRIORITY_SENT.length]!(i) },
          });
          expect(r.status, r.text).toBe(i % PRIORITY_SENT.length >= 3 ? 400 : 200);
        }),
      );
    }
    let text = "";
    await pollUntil(`${N} requests in /metrics`, async () => {
      text = await (await fetch(`${url}/metrics`)).text();
      let total = 0;
      for (const m of text.matchAll(/^sluice_requests_total\{[^}]*\} (\d+)$/gm)) total += Number(m[1]);
      return total >= N;
    }, { timeoutMs: 5_000, intervalMs: 20 });
    expect(text.length, "the exposition stays small (model labels need runtime.ts to call metrics.adopt(config))").toBeLessThan(200_000);
    const values = (label: string) => new Set([...text.matchAll(new RegExp(`[{,]${label}="([^"]*)"`, "g"))].map((m) => m[1]!));
    for (const p of values("priority")) expect(["high", "normal", "low", "other"], `priority label ${p}`).toContain(p);
    expect([...values("priority")].sort()).toEqual(["high", "low", "normal"]);
    const models = new Set([...values("model"), ...values("gen_ai_request_model")]);
    for (const m of models) expect([MODEL, "claude-ish", "other", "unknown"], `model label ${m}`).toContain(m);
    expect(models.has(MODEL)).toBe(true);
    expect(models.has("other")).toBe(true);
    expect(text).not.toContain("client-model-");
    expect(text, "requests refused for their priority are counted too").toMatch(/^sluice_requests_total\{backend="none",status="400",priority="normal"\} 200$/m);
    // The numbers a client chose never became label values.
    expect(text).not.toMatch(/priority="\d+"/);
  });
});
