/**
 * The priority scheduler end to end, on Node over real sockets: LLM simulators on 127.0.0.1 as
 * backends, the global `fetch` as the client. Each test asserts what a user notices — who got
 * served first (the order the backend received requests in, marked with `x-test-id`), how long
 * a request waited (`x-sluice-queue-ms`), and which status the client got when it could not be
 * served (412 for a TTL, 429 for a full queue, 400 for a malformed header).
 */
import { afterEach, describe, expect, it } from "vitest";
import type { SluiceConfigInput } from "../src/config/schema.ts";
import {
  azureBackend,
  gatewayConfig,
  pollUntil,
  queueMsOf,
  received,
  TestEnv,
  type BackendInput,
  type Gateway,
  type Reply,
  type Sim,
} from "./conformance/helpers.ts";
import { startNodeGateway } from "./harness/node.ts";

// Levels of the default priority names.
const HIGH = 1;
const NORMAL = 2;
const LOW = 3;

interface LevelStats {
  level: number;
  waiting: number;
  dispatched: number;
}

const env = new TestEnv(startNodeGateway);
afterEach(() => env.closeAll());

/** One simulator `b1` whose every answer takes `serviceMs`, behind a gateway with these settings. */
async function oneBackend(
  serviceMs: number,
  backend: Partial<BackendInput>,
  extra: Partial<SluiceConfigInput> = {},
): Promise<{ gw: Gateway; b1: Sim }> {
  const [b1] = (await env.sims(["b1"])) as [Sim];
  if (serviceMs > 0) b1.sim.setAlways({ firstByteDelayMs: serviceMs });
  const gw = await env.gateway({ ...gatewayConfig([azureBackend("b1", b1.url, backend)]), ...extra });
  return { gw, b1 };
}

/** The scheduler's queue, per level, from the health endpoint. */
async function levels(gw: Gateway): Promise<Map<number, LevelStats>> {
  const r = await gw.send("/_gateway/health");
  const body = r.json() as { queue: { levels: LevelStats[] } };
  return new Map(body.queue.levels.map((l) => [l.level, l]));
}

/** Requests of a level that arrived at the scheduler (waiting now or already dispatched). */
const arrived = (l: Map<number, LevelStats>, level: number): number => (l.get(level)?.waiting ?? 0) + (l.get(level)?.dispatched ?? 0);
const waitingAt = (l: Map<number, LevelStats>, level: number): number => l.get(level)?.waiting ?? 0;

/** The `x-test-id` of every request the backend received, in the order received. */
const receivedIds = (s: Sim): string[] => s.sim.stats().requests.map((r) => r.headers["x-test-id"] ?? "?");

const queueMs = queueMsOf;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function expectOk(r: Reply, what: string): void {
  expect(r.status, `${what}: ${r.text}`).toBe(200);
  expect(r.backend, what).toBe("b1");
}

describe("scheduling end to end [node]", () => {
  it("urgent requests overtake a backlog of low-priority ones and wait about two service times", async () => {
    const SERVICE = 200;
    const { gw, b1 } = await oneBackend(SERVICE, { maxConcurrency: 2 });

    const lows = Array.from({ length: 40 }, (_, i) => gw.chat({ "x-priority": "low", "x-test-id": `low-${i}` }));
    await pollUntil("40 low requests at the scheduler", async () => arrived(await levels(gw), LOW) === 40, { timeoutMs: 5_000, intervalMs: 10 });

    // Send the highs when the older of the two requests in flight is about to end, so that the
    // five highs (three rounds on two slots) are not held up by a slot that just started.
    await pollUntil(
      "a moment when a slot is about to free",
      () => {
        const reqs = b1.sim.stats().requests;
        const older = reqs[reqs.length - 2];
        const age = older ? Date.now() - older.at : -1;
        return age >= 110 && age < 170;
      },
      { timeoutMs: 5_000, intervalMs: 2 },
    );
    const highs = Array.from({ length: 5 }, (_, i) => gw.chat({ "x-priority": "high", "x-test-id": `high-${i}` }));
    await pollUntil("5 high requests at the scheduler", async () => arrived(await levels(gw), HIGH) === 5, { timeoutMs: 2_000, intervalMs: 2 });
    // From here on all five highs are known to the scheduler: every low still queued must wait for them.
    const cut = received(b1);

    const highReplies = await Promise.all(highs);
    const lowReplies = await Promise.all(lows);
    for (const [i, r] of highReplies.entries()) expectOk(r, `high-${i}`);
    for (const [i, r] of lowReplies.entries()) expectOk(r, `low-${i}`);

    const order = receivedIds(b1);
    expect(order).toHaveLength(45);
    const highsBeforeCut = order.slice(0, cut).filter((id) => id.startsWith("high")).length;
    // Every high not yet dispatched at the cut is among the very next dispatches.
    const byThen = order.slice(0, cut + 5 - highsBeforeCut);
    expect(byThen.filter((id) => id.startsWith("high")), `after the highs arrived the backend received ${order.slice(cut, cut + 8).join(", ")}`).toHaveLength(5);

    const waits = highReplies.map(queueMs);
    // Three rounds on two slots: the rest of the request in flight (≤ ~90 ms here) + two service times.
    for (const [i, w] of waits.entries()) expect(w, `high-${i} waited ${w} ms (all: ${waits.join(", ")})`).toBeLessThanOrEqual(2 * SERVICE + 200);
    // Had they queued behind the lows they would have waited seconds, as the last lows did.
    expect(Math.max(...lowReplies.map(queueMs))).toBeGreaterThan(3_000);
  });

  it("fair share: an interactive caller is not stuck behind another caller's backlog", async () => {
    const SERVICE = 100;
    const { gw, b1 } = await oneBackend(SERVICE, { maxConcurrency: 1 });

    let aDone = 0;
    const aReplies = Array.from({ length: 50 }, (_, i) =>
      gw.chat({ "api-key": "caller-A", "x-test-id": `A-${i}` }).then((r) => {
        aDone++;
        return r;
      }),
    );
    await pollUntil("A's backlog queued", async () => arrived(await levels(gw), NORMAL) === 50, { timeoutMs: 5_000, intervalMs: 10 });

    // B, like a user at a keyboard: one request at a time, the next when the answer came back.
    const bWaits: number[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await gw.chat({ "api-key": "caller-B", "x-test-id": `B-${i}` });
      expectOk(r, `B-${i}`);
      bWaits.push(queueMs(r));
    }
    const aDoneWhenBFinished = aDone;

    for (const [i, r] of (await Promise.all(aReplies)).entries()) expectOk(r, `A-${i}`);
    // At most the request in flight (one service time), with slack for the scheduling round trip.
    expect(median(bWaits), `B's waits: ${bWaits.join(", ")}`).toBeLessThanOrEqual(2 * SERVICE + 50);
    expect(Math.max(...bWaits), `B's waits: ${bWaits.join(", ")}`).toBeLessThanOrEqual(3 * SERVICE + 100);
    // B was done while most of A's backlog was still waiting: B did not queue behind it.
    expect(aDoneWhenBFinished).toBeLessThan(35);
    // The backend saw B's requests spread through A's, not after them.
    const order = receivedIds(b1);
    expect(order.indexOf("B-9")).toBeLessThan(order.indexOf("A-40"));
  });

  it("no starvation: under sustained urgent load, low requests still get their reserved share", async () => {
    const SERVICE = 50;
    const SHARE = 0.25; // one low for every four highs while both wait: 1 in 5 dispatches
    const { gw, b1 } = await oneBackend(SERVICE, { maxConcurrency: 1 }, { scheduling: { reservedShare: SHARE } });

    // Three clients sending high requests back to back: one slot, so highs are always waiting.
    let stop = false;
    let h = 0;
    const highLoops = Array.from({ length: 3 }, async () => {
      for (let i = 0; i < 200 && !stop; i++) {
        const r = await gw.chat({ "x-priority": "high", "x-test-id": `H-${h++}` });
        expectOk(r, "high");
      }
    });
    await pollUntil("highs waiting for the slot", async () => waitingAt(await levels(gw), HIGH) >= 1, { timeoutMs: 3_000, intervalMs: 5 });

    const lows = Array.from({ length: 6 }, (_, i) => gw.chat({ "x-priority": "low", "x-test-id": `L-${i}` }));
    await pollUntil("6 low requests at the scheduler", async () => arrived(await levels(gw), LOW) === 6, { timeoutMs: 2_000, intervalMs: 2 });
    const from = received(b1);
    const lowReplies = await Promise.all(lows);
    stop = true;
    await Promise.all(highLoops);
    for (const [i, r] of lowReplies.entries()) expectOk(r, `L-${i}`);

    // Dispatches from the moment all lows were queued until the last low was served.
    const order = receivedIds(b1);
    const lastLow = Math.max(...order.map((id, i) => (id.startsWith("L-") ? i : -1)));
    const window = order.slice(from, lastLow + 1);
    const lowsInWindow = window.filter((id) => id.startsWith("L-")).length;
    const runs: number[] = [];
    let run = 0;
    for (const id of window) {
      if (id.startsWith("L-")) {
        runs.push(run);
        run = 0;
      } else run++;
    }
    const pattern = window.map((id) => id[0]).join("");
    // Highs really did fill the slot: most dispatches in the window went to them.
    expect(window.length - lowsInWindow, pattern).toBeGreaterThanOrEqual(15);
    // At most four highs between two lows (1 low per 5 dispatches), one more for slack.
    expect(Math.max(...runs), `dispatch order from the lows' arrival: ${pattern}`).toBeLessThanOrEqual(5);
    expect(lowsInWindow / window.length, pattern).toBeGreaterThanOrEqual(1 / 6);
  });

  it("S7PTTL: 0 → 412; a TTL shorter than the wait → 412 and never sent; every accepted format → 200; garbage → 400", async () => {
    const { gw, b1 } = await oneBackend(0, { maxConcurrency: 1 });

    const zero = await gw.chat({ S7PTTL: "0", "x-test-id": "ttl-0" });
    expect(zero.status, zero.text).toBe(412);
    for (const bad of ["soon", "-1", "1e3"]) {
      const r = await gw.chat({ S7PTTL: bad, "x-test-id": `ttl-${bad}` });
      expect(r.status, `S7PTTL: ${bad} → ${r.text}`).toBe(400);
    }
    expect(received(b1), "nothing reached the backend").toBe(0);

    const nowS = Date.now() / 1000;
    for (const good of ["2.5", `+${Math.floor(nowS) + 60}`, new Date(Date.now() + 60_000).toISOString()]) {
      expectOk(await gw.chat({ S7PTTL: good, "x-test-id": `ttl-${good}` }), `S7PTTL: ${good}`);
    }
    expect(received(b1)).toBe(3);

    // The only slot busy for a second: a 0.3 s TTL runs out in the queue, a 5 s one is served.
    b1.sim.script([{ firstByteDelayMs: 1_000 }]);
    const busy = gw.chat({ "x-test-id": "busy" });
    await pollUntil("the busy request at the backend", () => received(b1) === 4, { timeoutMs: 3_000, intervalMs: 5 });
    const busyAt = b1.sim.stats().requests.at(-1)!.at;
    const patientSent = Date.now();
    const patient = gw.chat({ S7PTTL: "5", "x-test-id": "patient" });
    const short = await gw.chat({ S7PTTL: "0.3", "x-test-id": "short" });
    expect(short.status, short.text).toBe(412);
    expect(short.ms).toBeGreaterThanOrEqual(250);
    expect(short.ms).toBeLessThan(900);
    expectOk(await busy, "busy");
    const patientReply = await patient;
    expectOk(patientReply, "patient");
    // It waited in the queue for the busy request's slot.
    expect(queueMs(patientReply)).toBeGreaterThanOrEqual(busyAt + 1_000 - patientSent - 50);
    expect(queueMs(patientReply)).toBeLessThanOrEqual(patientReply.ms + 5);
    // Nothing left in the gateway that could still reach the backend: the expired one was dropped.
    await pollUntil("an idle gateway", async () => {
      const h = await gw.health();
      return h.queue.waiting === 0 && h.backends.every((b) => b.inFlight === 0);
    }, { timeoutMs: 2_000, intervalMs: 5 });
    expect(receivedIds(b1).slice(3)).toEqual(["busy", "patient"]);
  });

  it("S7PREQUEUE: the request goes back to the queue for the backend's retry-after and is then served, echoing x-PolicyCycleCounter", async () => {
    const { gw, b1 } = await oneBackend(0, {});
    b1.sim.script([{ status: 429, requeue: true, headers: { "retry-after-ms": "500", "x-PolicyCycleCounter": "1" } }]);

    const r = await gw.chat({ "x-test-id": "rq" });
    expectOk(r, "requeued");
    expect(r.ms).toBeGreaterThanOrEqual(500);
    expect(r.ms).toBeLessThan(2_000);
    const reqs = b1.sim.stats().requests;
    expect(reqs).toHaveLength(2);
    expect(reqs[0]!.headers["x-policycyclecounter"]).toBeUndefined();
    expect(reqs[1]!.headers["x-policycyclecounter"]).toBe("1");
    expect(reqs[1]!.at - reqs[0]!.at).toBeGreaterThanOrEqual(490);
    expect(queueMs(r)).toBeGreaterThanOrEqual(400);
    expect(queueMs(r)).toBeLessThanOrEqual(r.ms + 5);
  });

  it("an apim backend receives the request's priority level as llm_proxy_priority", async () => {
    const { gw, b1 } = await oneBackend(0, { kind: "apim" });
    const cases: Array<[Record<string, string>, string]> = [
      [{ "x-priority": "high" }, String(HIGH)],
      [{ "x-priority": "low" }, String(LOW)],
      [{}, String(NORMAL)],
      [{ "x-priority": "2" }, "2"],
    ];
    for (const [headers, level] of cases) {
      expectOk(await gw.chat(headers), JSON.stringify(headers));
      const last = b1.sim.stats().requests.at(-1)!;
      expect(last.headers["llm_proxy_priority"], JSON.stringify(headers)).toBe(level);
      // The client's own x-priority header travels on unchanged (and is not invented when absent).
      expect(last.headers["x-priority"], JSON.stringify(headers)).toBe(headers["x-priority"]);
    }
  });

  it("queue full → 429 with Retry-After and retry-after-ms, and the refused request reaches no backend", async () => {
    const { gw, b1 } = await oneBackend(0, { maxConcurrency: 1 }, { scheduling: { maxQueue: 2, queueFullRetryMs: 1_500 } });
    b1.sim.script([{ firstByteDelayMs: 800 }]);
    const busy = gw.chat({ "x-test-id": "busy" });
    await pollUntil("the busy request at the backend", () => received(b1) === 1, { timeoutMs: 3_000, intervalMs: 5 });
    const waiting = [gw.chat({ "x-test-id": "w1" }), gw.chat({ "x-test-id": "w2" })];
    await pollUntil("two requests waiting", async () => waitingAt(await levels(gw), NORMAL) === 2, { timeoutMs: 3_000, intervalMs: 5 });

    const refused = await gw.chat({ "x-test-id": "refused" });
    expect(refused.status, refused.text).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("2");
    expect(refused.headers.get("retry-after-ms")).toBe("1500");
    expect(refused.ms, "refused at once, not after waiting").toBeLessThan(500);
    expect(refused.json().error.code).toBe("queue_full");

    expectOk(await busy, "busy");
    for (const [i, r] of (await Promise.all(waiting)).entries()) expectOk(r, `w${i + 1}`);
    expect(receivedIds(b1)).toEqual(["busy", "w1", "w2"]);
  });

  it("S7PPriorityKey grants the priority configured for it; an unknown key → 400", async () => {
    const { gw, b1 } = await oneBackend(0, { kind: "apim", priorities: ["high"] }, { priorities: { keys: { "k-urgent": "high" } } });

    const urgent = await gw.chat({ S7PPriorityKey: "k-urgent", "x-test-id": "key" });
    expectOk(urgent, "S7PPriorityKey: k-urgent");
    expect(b1.sim.stats().requests.at(-1)!.headers["llm_proxy_priority"]).toBe(String(HIGH));

    // Without the key the request is normal, which this backend does not take.
    const plain = await gw.chat({ "x-test-id": "plain" });
    expect(plain.status, plain.text).toBe(503);

    const unknown = await gw.chat({ S7PPriorityKey: "k-guessed", "x-test-id": "unknown" });
    expect(unknown.status, unknown.text).toBe(400);
    expect(receivedIds(b1)).toEqual(["key"]);
  });
});

