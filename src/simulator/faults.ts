import { z } from "zod";
import type { Fault } from "./types.ts";

// Strict so that a typo in a test's fault ("rest": 2) fails loudly instead of being ignored.
const faultSchema = z.strictObject({
  status: z.number().int().min(200).max(599).optional(),
  headers: z.record(z.string(), z.string()).optional(),
  body: z.string().optional(),
  requeue: z.boolean().optional(),
  reset: z.union([z.literal("before-headers"), z.number().int().min(0)]).optional(),
  hang: z.boolean().optional(),
  stallAfter: z.number().int().min(0).optional(),
  firstByteDelayMs: z.number().min(0).optional(),
  paceMs: z.number().min(0).optional(),
  chunks: z.number().int().min(0).max(100_000).optional(),
  fixture: z.string().min(1).optional(),
});

export const scriptSchema = z.strictObject({
  next: z.array(faultSchema).optional(),
  always: faultSchema.nullable().optional(),
});

export type ParseResult<T> = { ok: true; value: T } | { ok: false; message: string };

export function parseFault(json: string): ParseResult<Fault> {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    return { ok: false, message: "x-sim-fault is not valid JSON" };
  }
  const parsed = faultSchema.safeParse(raw);
  if (!parsed.success) return { ok: false, message: `invalid fault: ${z.prettifyError(parsed.error)}` };
  return { ok: true, value: parsed.data };
}

/** Where the fault for one request comes from; `next` is consumed only when it is used. */
export interface FaultSources {
  header: string | null;
  fixtureHeader: string | null;
  takeNext(): Fault | undefined;
  always: Fault | null;
}

/**
 * Header first, then the scripted queue, then `always`. `x-sim-fixture` is layered on top
 * of whichever fault applies, so a fixture can be combined with a scripted reset or pace.
 */
export function resolveFault(sources: FaultSources): ParseResult<Fault | null> {
  let fault: Fault | null;
  if (sources.header !== null) {
    const parsed = parseFault(sources.header);
    if (!parsed.ok) return parsed;
    fault = parsed.value;
  } else {
    fault = sources.takeNext() ?? sources.always;
  }
  if (sources.fixtureHeader !== null) fault = { ...(fault ?? {}), fixture: sources.fixtureHeader };
  return { ok: true, value: fault };
}

export function errorBody(status: number, message = `simulated ${status}`, type = "simulated"): string {
  return JSON.stringify({ error: { message, type, code: String(status) } });
}

/** The response for a `status` or `requeue` fault, or null when the fault has neither. */
export function statusFaultResponse(fault: Fault, baseHeaders: Headers): Response | null {
  if (fault.status === undefined && !fault.requeue) return null;
  const status = fault.status ?? 429;
  const headers = new Headers(baseHeaders);
  const body = fault.body ?? errorBody(status);
  headers.set("content-type", fault.body === undefined || /^\s*[[{]/.test(fault.body) ? "application/json" : "text/plain; charset=utf-8");
  if (fault.requeue) headers.set("S7PREQUEUE", "true");
  for (const [k, v] of Object.entries(fault.headers ?? {})) headers.set(k, v);
  // 204/205/304 must not carry a body; the Response constructor enforces it.
  const nullBody = status === 204 || status === 205 || status === 304;
  return new Response(nullBody ? null : body, { status, headers });
}
