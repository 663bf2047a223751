/**
 * The Durable Object rate limiter on workerd (miniflare): the limiter conformance suite against
 * LimiterObject through the real DurableObjectRateLimiter, tickets across the RPC boundary, and
 * the gateway Worker refusing over-budget requests before any backend, with one budget shared
 * by two Worker isolates.
 */
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";
import { DriverConnection, startDriver as startDoDriver } from "../harness/do-driver.ts";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { Admission, LimitScope, RateLimiter, Reservation } from "../../src/governance/limits.ts";
import { bundleForWorkers, bundleWorker, gatewayScript, LIMITER_CLASS, startWorkersGateway } from "../harness/workers.ts";
import type { GatewayUnderTest } from "../harness/types.ts";
import { limiterConformance, type LimiterUnderTest } from "./limiter-suite.ts";

/**
 * A test-only Worker that drives the real DurableObjectRateLimiter for the Node test process.
 * Separate HTTP calls from Node may reach the object in any order, and the suite settles
 * without waiting and then reserves; so calls travel in order over one WebSocket, on one stub
 * (calls on one stub arrive in order). A reservation stays in this Worker, where the client
 * knows its ticket; Node names it by number.
 */
const DRIVER_SOURCE = `
import { DurableObjectRateLimiter } from "./limiter-client.ts";
export default {
  fetch(request, env) {
    if (request.headers.get("upgrade") !== "websocket") return new Response("websocket only", { status: 426 });
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    const stub = env.LIMITER.get(env.LIMITER.idFromName("suite"));
    const limiter = new DurableObjectRateLimiter(() => stub);
    const reservations = new Map();
    let next = 0;
    const reply = (n, body) => server.send(JSON.stringify({ n, ...body }));
    const take = (m) => {
      const r = reservations.get(m.rid) ?? m.reservation;
      reservations.delete(m.rid);
      return r;
    };
    server.addEventListener("message", (event) => {
      const m = JSON.parse(event.data);
      if (m.op === "reserve") {
        limiter.reserve(m.scopes, m.tokens).then(
          (result) => {
            let rid = null;
            if (result.ok) reservations.set((rid = ++next), result.reservation);
            reply(m.n, { result, rid });
          },
          (err) => reply(m.n, { error: String(err) }),
        );
      } else if (m.op === "settle") limiter.settle(take(m), m.actual);
      else if (m.op === "release") limiter.release(take(m));
      // The object's RPC methods as they are, tickets chosen by the test.
      else if (m.op === "raw") Promise.resolve(stub[m.method](...m.args)).then((result) => reply(m.n, { result: result ?? null }), (err) => reply(m.n, { error: String(err) }));
    });
    return new Response(null, { status: 101, webSocket: client });
  },
};
`;

let driverBundle: Promise<string> | undefined;
const bundleDriver = () =>
  (driverBundle ??= bundleForWorkers({ source: DRIVER_SOURCE, resolveDir: fileURLToPath(new URL("../../adapters/cloudflare/", import.meta.url)) }));

/** The RateLimiter port in the Node test process, every call going to the Durable Object through the driver. */
class RemoteLimiter implements RateLimiter {
  /** The driver's number for each reservation it handed out. */
  private readonly rids = new WeakMap<Reservation, number>();

  constructor(private readonly driver: DriverConnection) {}

  /** Calls a LimiterObject RPC method directly (no client in between). */
  async raw<T>(method: "reserve" | "settle" | "release", ...args: unknown[]): Promise<T> {
    return (await this.driver.ask({ op: "raw", method, args }).answer).result as T;
  }

  async reserve(scopes: readonly LimitScope[], tokens: number): Promise<Admission> {
    const { result, rid } = await this.driver.ask({ op: "reserve", scopes, tokens }).answer;
    const admission = result as Admission;
    if (admission.ok && typeof rid === "number") this.rids.set(admission.reservation, rid);
    return admission;
  }

  settle(reservation: Reservation, actual: number): void {
    this.driver.tell({ op: "settle", rid: this.rids.get(reservation), reservation, actual });
  }

  release(reservation: Reservation): void {
    this.driver.tell({ op: "release", rid: this.rids.get(reservation), reservation });
  }
}

async function startDriver(): Promise<LimiterUnderTest & { limiter: RemoteLimiter }> {
  const { connection, close } = await startDoDriver({ driver: await bundleDriver(), binding: "LIMITER", objectClass: LIMITER_CLASS });
  return { limiter: new RemoteLimiter(connection), close };
}

limiterConformance("durable object (miniflare)", startDriver);

describe("durable object limiter: tickets across the RPC boundary", () => {
  let current: Awaited<ReturnType<typeof startDriver>> | undefined;
  afterEach(async () => {
    await current?.close();
    current = undefined;
  });
  const scope: LimitScope = { key: "caller:tickets", spec: { tokensPerMinute: 1000 } };

  it("a reserve retried with the same ticket after a lost answer gets the same admission, not a second one", async () => {
    const l = (current = await startDriver()).limiter;
    const first = await l.raw<Admission>("reserve", [scope], 400, "t1");
    expect(first.ok).toBe(true);
    expect(await l.raw<Admission>("reserve", [scope], 400, "t1")).toEqual(first);
    // 400 taken once: 600 left, so another 500 fits and a further 500 does not.
    expect((await l.raw<Admission>("reserve", [scope], 500, "t2")).ok).toBe(true);
    expect((await l.raw<Admission>("reserve", [scope], 500, "t3")).ok).toBe(false);
  });

  it("a settle or release delivered twice is applied once", async () => {
    const l = (current = await startDriver()).limiter;
    const a = await l.raw<Admission>("reserve", [scope], 600, "t1");
    if (!a.ok) throw new Error("expected admission");
    await l.raw("settle", a.reservation, 100, "t1");
    await l.raw("settle", a.reservation, 100, "t1");
    // Refunded 500 once: 900 left (plus a token or two of refill), not 1000.
    const view = (await l.raw<Admission>("reserve", [scope], 1, "t2")).view;
    expect(view.remainingTokens).toBeGreaterThanOrEqual(898);
    expect(view.remainingTokens).toBeLessThan(905);
    const b = await l.raw<Admission>("reserve", [scope], 800, "t3");
    if (!b.ok) throw new Error("expected admission");
    await l.raw("release", b.reservation, "t3");
    await l.raw("release", b.reservation, "t3");
    expect((await l.raw<Admission>("reserve", [scope], 1, "t4")).view.remainingTokens).toBeLessThan(905);
  });
});

// ---------------------------------------------------------------------------------------------
// End to end: the gateway Worker with LIMITER bound, simulators on 127.0.0.1 as backends

const MODEL = "gpt-4o";
const WORDS = 50;
const CONTENT = "Tell me about sluice gates.";
const BODY = JSON.stringify({ model: MODEL, max_tokens: WORDS, messages: [{ role: "user", content: CONTENT }] });
/** The gateway's reservation for BODY: body bytes / 4 plus max_tokens. */
const RESERVED = Math.ceil(Buffer.byteLength(BODY) / 4) + WORDS;
/** What the simulator's answer costs: prompt ≈ message characters / 4, one token per word. */
const USED = Math.ceil(CONTENT.length / 4) + WORDS;
const HEADERS = { "content-type": "application/json", "api-key": "limited-key", "x-sim-fault": JSON.stringify({ chunks: WORDS }) };

interface Reply {
  status: number;
  headers: Headers;
  text: string;
}

const read = async (r: Response): Promise<Reply> => ({ status: r.status, headers: r.headers, text: await r.text() });

const configFor = (sim: RunningSimulator, tokensPerMinute: number): SluiceConfigInput => ({
  backends: [{ name: "b1", url: sim.url, kind: "openai", models: [MODEL], auth: { type: "none" } }],
  limits: { perCaller: { tokensPerMinute } },
  metering: { sinks: [] },
});

function expectRefused(r: Reply, budget: number): void {
  expect(r.status, r.text).toBe(429);
  const retryMs = Number(r.headers.get("retry-after-ms"));
  expect(retryMs).toBeGreaterThan(0);
  expect(r.headers.get("retry-after")).toBe(String(Math.ceil(retryMs / 1000)));
  expect(r.headers.get("x-ratelimit-limit-tokens")).toBe(String(budget));
  expect(r.headers.get("x-ratelimit-remaining-tokens")).toMatch(/^\d+$/);
  expect(Number(r.headers.get("x-ratelimit-remaining-tokens"))).toBeLessThan(RESERVED);
  expect((JSON.parse(r.text) as { error?: { code?: string } }).error?.code).toBe("rate_limit_exceeded");
}

describe("durable object limiter: the gateway Worker", () => {
  let closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    const list = closers.reverse();
    closers = [];
    for (const close of list) await close().catch(() => undefined);
  });
  const simulator = async () => {
    const sim = await startSimulator({ name: "b1" });
    closers.push(() => sim.close());
    return sim;
  };

  it("requests past the caller's token budget get 429 with back-off headers, and the backend never sees them", async () => {
    const sim = await simulator();
    // Admits two answers, then leaves SHORT tokens less than the next reservation.
    const SHORT = 40;
    const budget = 2 * USED + RESERVED - SHORT;
    const gw: GatewayUnderTest = await startWorkersGateway(configFor(sim, budget));
    closers.push(() => gw.close());
    const send = async () => read(await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: HEADERS, body: BODY, signal: AbortSignal.timeout(15_000) }));

    const first = await send();
    expect(first.status, first.text).toBe(200);
    expect(Number(first.headers.get("x-ratelimit-remaining-tokens"))).toBe(budget - RESERVED);
    const second = await send();
    expect(second.status, second.text).toBe(200);
    // The first answer was settled at its real usage in the object before the second was admitted.
    const left = Number(second.headers.get("x-ratelimit-remaining-tokens"));
    expect(left).toBeGreaterThanOrEqual(budget - USED - RESERVED);
    expect(left).toBeLessThanOrEqual(budget - USED - RESERVED + 5);
    expect(sim.sim.stats().received).toBe(2);

    for (let i = 0; i < 3; i++) expectRefused(await send(), budget);
    expect(sim.sim.stats().received, "the backend never saw the refused requests").toBe(2);
  });

  it("two Worker isolates admit against one budget", async () => {
    const sim = await simulator();
    // Room for one request, and after its settlement too little for another.
    const budget = RESERVED + 10;
    const config = configFor(sim, budget);
    const contents = await bundleWorker();
    const worker = (name: string, objectsIn?: string) => gatewayScript(contents, name, objectsIn, { bindings: { SLUICE_CONFIG: JSON.stringify(config) }, limiter: true });
    // Two Worker scripts: two isolates, each with its own gateway, one LimiterObject (in "a").
    const mf = new Miniflare({ workers: [worker("a"), worker("b", "a")] });
    closers.push(() => mf.dispose());
    const [a, b] = await Promise.all([mf.getWorker("a"), mf.getWorker("b")]);
    const send = async (via: typeof a) =>
      read((await via.fetch("http://gateway.local/v1/chat/completions", { method: "POST", headers: HEADERS, body: BODY })) as unknown as Response);

    const admitted = await send(a);
    expect(admitted.status, admitted.text).toBe(200);
    // Isolate b has never seen this caller, yet its budget is spent.
    expectRefused(await send(b), budget);
    expectRefused(await send(a), budget);
    expect(sim.sim.stats().received).toBe(1);
  });
});
