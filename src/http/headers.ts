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

function connectionListed(headers: Headers): Set<string> | undefined {
  const c = headers.get("connection");
  if (!c) return undefined;
  return new Set(c.split(",").map((t) => t.trim().toLowerCase()));
}

/** Headers sent upstream: the client's minus hop-by-hop, credentials and gateway-owned ones. */
export function upstreamRequestHeaders(incoming: Headers): Headers {
  const listed = connectionListed(incoming);
  const out = new Headers();
  incoming.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || CLIENT_CREDENTIALS.has(name) || GATEWAY_OWNED.has(name) || listed?.has(name)) return;
    out.append(name, value);
  });
  return out;
}

/** Headers returned to the client: the backend's minus hop-by-hop and gateway-owned ones. */
export function downstreamResponseHeaders(upstream: Headers): Headers {
  const listed = connectionListed(upstream);
  const out = new Headers();
  upstream.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || GATEWAY_OWNED.has(name) || listed?.has(name)) return;
    out.append(name, value);
  });
  return out;
}
