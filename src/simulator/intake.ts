import type { IRequest } from "itty-router";
import { type Exchange, jsonResponse, parseJsonObject } from "./exchange.ts";
import { errorBody, resolveFault, statusFaultResponse } from "./faults.ts";
import { looksLikeSse, pacedBody, SimulatedReset, sleep, splitEvents, splitEven } from "./stream.ts";

const HANG_LIMIT_MS = 10 * 60_000;

/**
 * Counts the request, then applies whatever fault it gets. Returns a response when the fault
 * (or a fixture) answers; undefined lets the generators answer.
 */
export async function intake(request: IRequest, ex: Exchange): Promise<Response | undefined> {
  ex.body = await request.text();
  const headers: Record<string, string> = {};
  request.headers.forEach((value, key) => (headers[key] = value));
  ex.state.record({
    method: request.method,
    path: ex.url.pathname,
    query: ex.url.search.replace(/^\?/, ""),
    headers,
    body: ex.body,
  });

  const resolved = resolveFault({
    header: request.headers.get("x-sim-fault"),
    fixtureHeader: request.headers.get("x-sim-fixture"),
    takeNext: () => ex.state.queue.shift(),
    always: ex.state.always,
  });
  if (!resolved.ok) return jsonResponse(ex, 400, errorBody(400, resolved.message, "simulator_error"));
  const fault = resolved.value;
  ex.fault = fault;
  ex.json = parseJsonObject(ex.body);
  if (!fault) return undefined;

  if (fault.hang) {
    await sleep(HANG_LIMIT_MS, request.signal);
    return request.signal.aborted ? clientGone() : jsonResponse(ex, 504, errorBody(504, "simulated hang gave up"));
  }
  if (fault.firstByteDelayMs) {
    await sleep(fault.firstByteDelayMs, request.signal);
    if (request.signal.aborted) return clientGone();
  }
  if (fault.reset === "before-headers") {
    ex.hooks?.resetConnection();
    throw new SimulatedReset("simulated reset before headers");
  }
  const status = statusFaultResponse(fault, ex.headers);
  if (status) return status;
  if (fault.fixture !== undefined) return serveFixture(ex, fault.fixture);
  return undefined;
}

/** Nobody reads this; the host only needs the promise to settle. */
function clientGone(): Response {
  return new Response(null, { status: 499 });
}

function findFixture(fixtures: Record<string, Uint8Array>, name: string): Uint8Array | undefined {
  if (fixtures[name]) return fixtures[name];
  // Let callers omit the extension ("aoai2" for "aoai2.txt").
  const match = Object.keys(fixtures).find((file) => file.replace(/\.[^.]*$/, "") === name);
  return match === undefined ? undefined : fixtures[match];
}

function serveFixture(ex: Exchange, name: string): Response {
  const fixtures = ex.state.fixtures;
  const bytes = findFixture(fixtures, name);
  if (!bytes) {
    const known = Object.keys(fixtures).sort().join(", ") || "none loaded";
    return jsonResponse(ex, 500, errorBody(500, `unknown fixture '${name}' (known: ${known})`, "simulator_error"));
  }
  const sse = looksLikeSse(bytes);
  const fault = ex.fault ?? {};
  const resetAfter = typeof fault.reset === "number" ? fault.reset : undefined;
  const chunks = sse ? splitEvents(bytes) : resetAfter !== undefined ? splitEven(bytes, resetAfter + 1) : [bytes];
  const headers = new Headers(ex.headers);
  headers.set("content-type", sse ? "text/event-stream" : "application/json");
  if (sse) headers.set("cache-control", "no-cache");
  for (const [k, v] of Object.entries(fault.headers ?? {})) headers.set(k, v);
  const body = pacedBody(chunks, {
    paceMs: fault.paceMs ?? ex.state.paceMs,
    resetAfter,
    tracker: ex.state.trackBody(),
  });
  return new Response(body, { status: 200, headers });
}
