import type { SimState } from "./state.ts";
import type { Fault, HostHooks } from "./types.ts";

export type Json = Record<string, unknown>;

/** One request's trip through the router; handlers read and fill it in. */
export interface Exchange {
  state: SimState;
  hooks: HostHooks | undefined;
  url: URL;
  /** Headers every response carries (x-sim-backend, x-request-id). */
  headers: Headers;
  fault: Fault | null;
  body: string;
  /** The body parsed as a JSON object, null when it is not one. */
  json: Json | null;
}

export function newExchange(state: SimState, request: Request, hooks: HostHooks | undefined): Exchange {
  const headers = new Headers({ "x-sim-backend": state.name, "x-request-id": crypto.randomUUID() });
  return { state, hooks, url: new URL(request.url), headers, fault: null, body: "", json: null };
}

export function jsonResponse(ex: Exchange, status: number, body: unknown): Response {
  const headers = new Headers(ex.headers);
  headers.set("content-type", "application/json");
  return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers });
}

export function parseJsonObject(text: string): Json | null {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === "object" && !Array.isArray(value) ? (value as Json) : null;
  } catch {
    return null;
  }
}
