import type { HeaderPairs, HeaderSource } from "../types.ts";

export type { HeaderPairs, HeaderSource };
/** Connection-scoped headers (RFC 9110 §7.6.1) plus ones the runtime must compute itself. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
  "content-length",
]);

/** Client credentials: they identify the caller to the gateway and never travel on. */
const CLIENT_CREDENTIALS = new Set(["authorization", "api-key", "ocp-apim-subscription-key", "x-api-key"]);

/** Headers the gateway itself sets on responses; a backend's copy is dropped. */
export const GATEWAY_RESPONSE_HEADERS = {
  requestId: "x-request-id",
  backend: "x-sluice-backend",
  attempts: "x-sluice-attempts",
  queueMs: "x-sluice-queue-ms",
  affinity: "x-backend-affinity",
} as const;

const GATEWAY_OWNED = new Set<string>(Object.values(GATEWAY_RESPONSE_HEADERS));


/** The usual Connection values name no other header: no set to build for them. */
const PLAIN_CONNECTION = /^\s*(?:keep-alive|close)\s*$/i;

function connectionListed(headers: HeaderSource): Set<string> | undefined {
  const c = headers.get("connection");
  if (!c || PLAIN_CONNECTION.test(c)) return undefined;
  return new Set(c.split(",").map((t) => t.trim().toLowerCase()));
}

/**
 * Identity headers only the gateway may set: a client's copies never travel on, so a client
 * cannot claim to be someone else to a backend that trusts them.
 */
const IDENTITY = /^(x-sluice-|x-ms-client-principal)/;

/** Headers sent upstream: the client's minus hop-by-hop, credentials, gateway-owned and identity ones, and `strip`. */
export function upstreamRequestHeaders(incoming: HeaderSource, strip?: ReadonlySet<string>): HeaderPairs {
  const listed = connectionListed(incoming);
  const out: HeaderPairs = [];
  incoming.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || CLIENT_CREDENTIALS.has(name) || GATEWAY_OWNED.has(name) || listed?.has(name) || IDENTITY.test(name) || strip?.has(name)) return;
    out.push([name, value]);
  });
  return out;
}

/**
 * Headers returned to the client: the backend's minus hop-by-hop and gateway-owned ones, as a
 * plain record (the Node server writes one without converting it). Repeated headers are joined
 * as RFC 9110 allows, except Set-Cookie, which turns the result into pairs to keep each cookie.
 */
export function downstreamResponseHeaders(upstream: HeaderSource): Record<string, string> | HeaderPairs {
  const listed = connectionListed(upstream);
  // No prototype: a backend header named `constructor` or `__proto__` is just a header.
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  let cookies: string[] | undefined;
  upstream.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || GATEWAY_OWNED.has(name) || listed?.has(name)) return;
    if (name === "set-cookie") (cookies ??= []).push(value);
    else {
      const had = out[name];
      out[name] = had === undefined ? value : `${had}, ${value}`;
    }
  });
  if (!cookies) return out;
  if (cookies.length === 1) {
    out["set-cookie"] = cookies[0]!;
    return out;
  }
  return [...Object.entries(out), ...cookies.map((c): [string, string] => ["set-cookie", c])];
}
