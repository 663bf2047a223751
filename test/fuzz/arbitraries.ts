/**
 * fast-check generators for the gateway fuzz test: one request as a client could send it over
 * a raw socket (method, request target, header fields, body, how the body is framed), plus what
 * the simulator backends are asked to do with it (`x-sim-fault`) and whether the client walks
 * away mid-way. Everything is plain data, so a counterexample prints as something one can replay.
 */
import fc from "fast-check";

/** A fault for the simulator's `x-sim-fault` header (src/simulator/faults.ts), delays kept small. */
export interface SimFault {
  status?: number;
  headers?: Record<string, string>;
  requeue?: boolean;
  reset?: "before-headers" | number;
  stallAfter?: number;
  firstByteDelayMs?: number;
  chunks?: number;
  paceMs?: number;
}

export type FuzzBody =
  | { kind: "none" }
  | { kind: "json"; value: Record<string, unknown> }
  /** Raw text: JSON that is not an object, broken JSON, form data. */
  | { kind: "text"; text: string }
  | { kind: "bytes"; bytes: number[] }
  /** A chat request padded to `maxBodyBytes + over` bytes (over ≤ 0: at or under the limit). */
  | { kind: "sized"; over: number };

export type Abort = "none" | "after-headers" | "after-first-chunk" | { afterMs: number };

export interface FuzzRequest {
  method: string;
  /** The request target exactly as written on the request line. */
  target: string;
  /** Header fields in order; a name may repeat. */
  headers: [string, string][];
  /** Extra `x-fz-<i>: <i>` fields, to approach and pass the gateway's 1,000-field limit. */
  manyHeaders: number;
  body: FuzzBody;
  /** Sent with Transfer-Encoding: chunked in two writes instead of a Content-Length. */
  chunked: boolean;
  /** The `x-sim-fault` header: a valid fault, a malformed one, or none. */
  fault: SimFault | { garbage: string } | null;
  abort: Abort;
}

// ---------------------------------------------------------------------------------------------
// Building blocks

const TCHAR = [..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"];
/** An RFC 9110 token. */
const token = (maxLength = 16) => fc.string({ unit: fc.constantFrom(...TCHAR), minLength: 1, maxLength });
/** A field value Node's client accepts: visible ASCII, spaces and tabs inside, sometimes Latin-1 (obs-text). */
const fieldValue = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: fc.oneof(fc.integer({ min: 0x21, max: 0x7e }), fc.integer({ min: 0xa0, max: 0xff }), fc.constant(0x09)).map((c) => String.fromCharCode(c)), maxLength: 20 }) },
);

/** Names the client machinery owns or the test uses as its oracle: never generated at random. */
const RESERVED = new Set(["content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer", "keep-alive", "x-request-id", "x-sim-fault", "x-sim-fixture"]);

// ---------------------------------------------------------------------------------------------
// Methods

export const methodArb = fc.oneof(
  { weight: 12, arbitrary: fc.constant("POST") },
  { weight: 5, arbitrary: fc.constantFrom("GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS") },
  // Methods Node's parser knows but nobody sends to an LLM API, and lower case (Node's client
  // upper-cases). Not TRACE: the gateway passes it on, and the simulator answers every TRACE with
  // its own 500 (it cannot build a Request for it) — a simulator limitation, not a gateway answer.
  { weight: 1, arbitrary: fc.constantFrom("PROPFIND", "PURGE", "MKCOL", "SEARCH", "M-SEARCH", "REPORT", "LINK", "UNLINK", "NOTIFY", "post", "Get") },
  // Tokens no parser knows.
  { weight: 1, arbitrary: fc.constantFrom("FOO", "BREW", "X", "POSTX", "GETT") },
);

// ---------------------------------------------------------------------------------------------
// Request targets

const PATH_CHARS = [..."abcXYZ019-_.~!$&'()*+,;=:@%"];

/** A deployment (or any path segment): known models, unicode, bad escapes, dot segments, very long. */
export const segmentArb = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom("gpt-4o", "gpt-4o-mini", "gpt-35-turbo", "text-embedding-3-small", "unknown-model") },
  { weight: 2, arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: 12 }).map(encodeURIComponent) },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      "%ED%A0%80", // a lone surrogate, UTF-8 encoded (not valid UTF-8)
      "%ED%B0%80",
      "%",
      "%2",
      "%zz",
      "%2e%2e",
      "%2E%2e",
      "%2e",
      "..",
      ".",
      "...",
      "a..b",
      "%2e%2e%2f",
      "a%2Fb",
      "%C3",
      "%E2%82",
      "%F0%9F%98%80",
      "%00",
      "%0A",
      "%20",
      "%25",
      "*",
      ":",
      "@",
      "~",
      "\u00e9", // raw Latin-1 byte on the wire
    ),
  },
  { weight: 1, arbitrary: fc.constantFrom(255, 256, 257, 300, 2000, 8000).map((n) => "d".repeat(n)) },
  { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom(...PATH_CHARS), minLength: 1, maxLength: 16 }) },
);

const OPERATIONS = ["chat/completions", "completions", "embeddings", "responses", "extensions/chat/completions", "audio/speech", "images/generations", "chat", "", "chat/completions/x"];

const API_PATHS = [
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/responses",
  "/v1/messages",
  "/openai/v1/chat/completions",
  "/openai/v1/completions",
  "/openai/v1/embeddings",
  "/openai/v1/responses",
  "/openai/responses",
  "/chat/completions",
];
const OTHER_PATHS = ["/v1/models", "/openai/models", "/openai/v1/models", "/openai/files", "/v1/files", "/v1/batches", "/", "/v2/chat/completions", "/openai", "/v1", "/v1/"];

/** The gateway's own endpoints answer without a usage event: kept out of the generated paths. */
const OPS_PATH = /^\/(?:_gateway|liveness|readiness|startup|metrics)(?:[/?#]|$)/i;

const pathArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...API_PATHS) },
  { weight: 6, arbitrary: fc.tuple(segmentArb, fc.constantFrom(...OPERATIONS)).map(([d, op]) => `/openai/deployments/${d}/${op}`) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom("/v1/models/", "/openai/models/", "/v1/responses/", "/openai/responses/", "/v1/files/"), segmentArb).map(([p, s]) => p + s) },
  { weight: 2, arbitrary: fc.constantFrom(...OTHER_PATHS) },
  { weight: 2, arbitrary: fc.array(segmentArb, { minLength: 1, maxLength: 4 }).map((s) => "/" + s.join("/")) },
  // Empty segments, doubled slashes, a trailing dot segment.
  { weight: 1, arbitrary: fc.constantFrom("//v1/chat/completions", "/v1//chat/completions", "/v1/chat/completions/", "/v1/chat/completions/.", "/v1/chat/completions/..", "/v1/./chat/completions", "/openai/deployments//chat/completions") },
);

const QUERY_NAMES = ["api-version", "api-key", "api_key", "key", "sig", "code", "access_token", "subscription-key", "priority", "stream", "model"];
const queryValueArb = fc.oneof(
  fc.constantFrom("2024-10-21", "2025-04-01-preview", "high", "low", "1", "-5", "", "%", "%zz", "%ED%A0%80", "secret-key-123"),
  fc.string({ maxLength: 12 }).map((s) => {
    try {
      return encodeURIComponent(s);
    } catch {
      return "x"; // a lone surrogate cannot be percent-encoded
    }
  }),
);
const queryArb = fc.oneof(
  { weight: 4, arbitrary: fc.constant("") },
  {
    weight: 4,
    arbitrary: fc
      .array(fc.tuple(fc.oneof(fc.constantFrom(...QUERY_NAMES), token(10)), queryValueArb), { minLength: 1, maxLength: 4 })
      .map((pairs) => "?" + pairs.map(([k, v]) => `${k}=${v}`).join("&")),
  },
  { weight: 1, arbitrary: fc.constantFrom("?", "??", "?&&", "?api-key", "?=x", "#frag", "?a=1#frag", "?a=%", "?x=\\y") },
);

/** Request targets: origin form mostly; sometimes absolute form, a backslash, or `*`. */
export const targetArb = fc.oneof(
  { weight: 20, arbitrary: fc.tuple(pathArb, queryArb).map(([p, q]) => p + q) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom("http://evil.example", "http://127.0.0.1:1", "https://evil.example:443"), pathArb, queryArb).map(([h, p, q]) => h + p + q) },
  { weight: 1, arbitrary: fc.constantFrom("/v1\\chat/completions", "\\v1/chat/completions", "/openai/deployments/a\\b/chat/completions", "*") },
).filter((t) => !OPS_PATH.test(t));

// ---------------------------------------------------------------------------------------------
// Header fields

// Each of the gateway's own inputs is mostly valid, so most requests still reach a backend.
const priorityArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom("high", "normal", "low", "HIGH", " Low ", "1", "2", "3") },
  { weight: 2, arbitrary: fc.constantFrom("0", "-1", "4", "2.0", "1e1", "01", "+1", "99999999999999999999999", "-99999999999999999999", "", "urgent", "normal,low", "NaN") },
  { weight: 1, arbitrary: fieldValue },
);
const ttlArb = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom("0.5", "1", "2.5", "10", "30", "3600", "2099-01-01T00:00:00Z", "+99999999999") },
  fc.constantFrom(
    "0",
    "0.001",
    "0.05",
    "1",
    "2.5",
    "30",
    "99999999999999999999999999",
    "1e9",
    "1e400",
    "-1",
    "-0.5",
    "+0",
    "+1",
    "+99999999999",
    "+99999999999999999999999",
    "+1.5",
    "+-1",
    "1.",
    ".5",
    "NaN",
    "Infinity",
    "2099-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "2024-13-45T99:99:99Z",
    "2024-01-01T",
    "275760-09-13T00:00:00Z",
    " 2 ",
    "",
    "0x10",
  ),
  fc.integer({ min: -1_000_000, max: 1_000_000 }).map(String),
  fc.double({ noNaN: true }).map(String),
  fieldValue,
);
const contentTypeArb = fc.oneof(
  fc.constantFrom("application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/event-stream", ""),
  fieldValue,
);
const credentialArb = fc.oneof(fc.constantFrom("sk-test", "Bearer sk-test", "Bearer ", "Basic Zm9vOmJhcg==", ""), fieldValue);
const hostArb = fc.constantFrom("evil.example", "localhost", "127.0.0.1:1", "[::1]:80", "evil.example:99999", "a_b", "x:y:z", "evil.example/x", "");

/** One named field: the gateway's own inputs mostly, then any token. */
const namedFieldArb: fc.Arbitrary<[string, string]> = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.constant("x-priority"), priorityArb) },
  { weight: 3, arbitrary: fc.tuple(fc.constant("S7PTTL"), ttlArb) },
  { weight: 2, arbitrary: fc.tuple(fc.constant("S7PPriorityKey"), fc.oneof({ weight: 4, arbitrary: fc.constantFrom("gold", "bronze") }, { weight: 1, arbitrary: fc.constantFrom("GOLD", "silver", "") }, { weight: 1, arbitrary: fieldValue })) },
  { weight: 2, arbitrary: fc.tuple(fc.constant("x-backend-affinity"), fc.oneof(fc.constantFrom("azure", "openai", "AZURE", "nobody", ""), fieldValue)) },
  { weight: 3, arbitrary: fc.tuple(fc.constant("content-type"), contentTypeArb) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom("authorization", "api-key", "ocp-apim-subscription-key", "x-api-key"), credentialArb) },
  {
    weight: 2,
    arbitrary: fc.tuple(
      fc.constantFrom("prefer", "S7PAsyncMode", "S7PDEBUG", "x-policycyclecounter", "accept", "accept-encoding", "content-encoding", "cookie", "x-sluice-caller", "x-ms-client-principal", "x-forwarded-for", "forwarded", "x-http-method-override", "origin"),
      fc.oneof(fc.constantFrom("respond-async", "respond-async, wait=0", "true", "gzip", "text/event-stream", "1"), fieldValue),
    ),
  },
  { weight: 1, arbitrary: fc.tuple(fc.constant("host"), hostArb) },
  { weight: 4, arbitrary: fc.tuple(token(20).filter((n) => !RESERVED.has(n.toLowerCase()) && !n.toLowerCase().startsWith("x-sim-")), fieldValue) },
);

// ---------------------------------------------------------------------------------------------
// Bodies

const modelValueArb = fc.oneof(
  { weight: 16, arbitrary: fc.constantFrom("gpt-4o", "gpt-4o-mini") },
  {
    weight: 4,
    arbitrary: fc.constantFrom("\ud800", "\udc00", "a\ud800b", "..", ".", "", "gpt-4o\u0000", "gpt-4o\n", "a".repeat(256), "a".repeat(257), "gpt-4o/../x", "%2e%2e", "*", "gpt-4o ", "GPT-4O", "\ud83d\ude00", "unknown-model", "é"),
  },
  { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 16 }) },
  { weight: 1, arbitrary: fc.oneof(fc.integer(), fc.constant(null), fc.boolean(), fc.array(fc.string({ maxLength: 4 }), { maxLength: 2 }), fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), { maxKeys: 2 })) },
);
const tokensArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 64 }) },
  { weight: 2, arbitrary: fc.constantFrom(1e308, -1, 0, 1.5, 2 ** 53, 1e9, 2 ** 31, "16", null, true) },
  { weight: 1, arbitrary: fc.double() },
);
const nArb = fc.oneof(fc.integer({ min: -2, max: 4 }), fc.constantFrom(1e9, 1e308, 0.5, 128, 129, "2", null));
const messagesArb = fc.oneof(
  { weight: 4, arbitrary: fc.constant([{ role: "user", content: "hi" }]) },
  {
    weight: 2,
    arbitrary: fc.array(
      fc.record({
        role: fc.constantFrom("user", "system", "assistant", "tool", "x"),
        content: fc.oneof(fc.string({ maxLength: 40 }), fc.constant(null), fc.array(fc.record({ type: fc.constant("text"), text: fc.string({ maxLength: 20 }) }), { maxLength: 2 })),
      }),
      { maxLength: 3 },
    ),
  },
  { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 10 }), fc.constant(null), fc.integer()) },
);

export const jsonBodyArb: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    model: modelValueArb,
    messages: messagesArb,
    max_tokens: tokensArb,
    max_completion_tokens: tokensArb,
    max_output_tokens: tokensArb,
    n: nArb,
    stream: fc.oneof({ weight: 6, arbitrary: fc.constant(true) }, { weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constantFrom("true", 1, null) }),
    stream_options: fc.constantFrom({ include_usage: true }, { include_usage: false }, null, "x", {}),
    input: fc.oneof(fc.string({ maxLength: 30 }), fc.array(fc.string({ maxLength: 10 }), { maxLength: 3 }), fc.array(fc.integer({ min: 0, max: 1000 }), { maxLength: 5 })),
    prompt: fc.oneof(fc.string({ maxLength: 30 }), fc.array(fc.string({ maxLength: 10 }), { maxLength: 2 })),
    system: fc.string({ maxLength: 20 }),
    metadata: fc.jsonValue({ maxDepth: 2 }),
  },
  { requiredKeys: [] },
);

export const bodyArb: fc.Arbitrary<FuzzBody> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ kind: "none" as const }) },
  { weight: 14, arbitrary: jsonBodyArb.map((value) => ({ kind: "json" as const, value })) },
  {
    weight: 2,
    arbitrary: fc
      .oneof(fc.json({ maxDepth: 2 }), fc.string({ maxLength: 60 }), fc.constantFrom("{", '{"model":', '{"model":"gpt-4o"', "[]", "null", '"x"', "model=gpt-4o&stream=true", '{"model":"\\ud800"}', '{"model":"gpt-4o","model":".."}', " \n\t{}"))
      .map((text) => ({ kind: "text" as const, text })),
  },
  { weight: 1, arbitrary: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 300 }).map((bytes) => ({ kind: "bytes" as const, bytes })) },
  // Around the limit: -1 and 0 fit, 1 and more are 413.
  { weight: 2, arbitrary: fc.oneof(fc.constantFrom(-1, 0, 1), fc.integer({ min: 2, max: 200_000 })).map((over) => ({ kind: "sized" as const, over })) },
);

// ---------------------------------------------------------------------------------------------
// Simulator faults

const faultHeadersArb = fc.record(
  {
    "retry-after-ms": fc.constantFrom("0", "50", "150", "-5", "abc", "1e2"),
    "retry-after": fc.constantFrom("0", "Wed, 21 Oct 2015 07:28:00 GMT", "abc", "-1"),
    "x-ms-retry-after-ms": fc.constantFrom("0", "100"),
    "x-ratelimit-reset-requests": fc.constantFrom("0s", "100ms", "1ms", "abc"),
    S7PREQUEUE: fc.constantFrom("true", "TRUE", "false"),
    "x-policycyclecounter": fc.constantFrom("1", "x"),
    "content-type": fc.constantFrom("text/event-stream", "application/json", "text/html"),
    "x-request-id": fc.constant("backend-chosen-id"),
    "x-sluice-backend": fc.constant("spoofed"),
    connection: fc.constant("close"),
  },
  { requiredKeys: [] },
);

export const faultArb: fc.Arbitrary<SimFault> = fc
  .record(
    {
      status: fc.oneof(fc.constantFrom(200, 201, 204, 206, 301, 304, 400, 401, 403, 404, 408, 409, 413, 422, 429, 499, 500, 501, 502, 503, 504, 505, 529, 599), fc.integer({ min: 200, max: 599 })),
      headers: faultHeadersArb,
      requeue: fc.boolean(),
      reset: fc.oneof(fc.constant("before-headers" as const), fc.integer({ min: 0, max: 4 })),
      stallAfter: fc.integer({ min: 0, max: 3 }),
      firstByteDelayMs: fc.integer({ min: 0, max: 300 }),
      chunks: fc.integer({ min: 0, max: 20 }),
      paceMs: fc.integer({ min: 0, max: 40 }),
    },
    { requiredKeys: [] },
  )
  // A stall after a JSON answer's only chunk has sent the whole body (its content-length says
  // so) yet the simulator never ends the response: the keep-alive connection looks idle to the
  // gateway's pool but is never served again, and a LATER case's request on it times out. Closing
  // the connection after a stalled answer keeps each case's fault to that case.
  .map((f) => (f.stallAfter === undefined ? f : { ...f, headers: { ...f.headers, connection: "close" } }));

const faultChoiceArb: fc.Arbitrary<FuzzRequest["fault"]> = fc.oneof(
  { weight: 12, arbitrary: fc.constant(null) },
  { weight: 6, arbitrary: faultArb },
  { weight: 1, arbitrary: fc.constantFrom("not json", '{"rest":2}', '{"status":99}', "[]", "").map((garbage) => ({ garbage })) },
);

export const abortArb: fc.Arbitrary<Abort> = fc.oneof(
  { weight: 14, arbitrary: fc.constant("none" as const) },
  { weight: 1, arbitrary: fc.constant("after-headers" as const) },
  { weight: 1, arbitrary: fc.constant("after-first-chunk" as const) },
  { weight: 1, arbitrary: fc.integer({ min: 20, max: 300 }).map((afterMs) => ({ afterMs })) },
);

export const requestArb: fc.Arbitrary<FuzzRequest> = fc.record({
  method: methodArb,
  target: targetArb,
  headers: fc.array(namedFieldArb, { maxLength: 5 }),
  manyHeaders: fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 100, max: 400 }) }, { weight: 1, arbitrary: fc.integer({ min: 985, max: 1100 }) }),
  body: bodyArb,
  chunked: fc.boolean(),
  fault: faultChoiceArb,
  abort: abortArb,
});

/**
 * One case: one to three requests sent at once (the azure backend takes two at a time, so a
 * third may queue). Shrinking drops the ones a failure does not need.
 */
export const caseArb: fc.Arbitrary<FuzzRequest[]> = fc.array(requestArb, { minLength: 1, maxLength: 3 });

/**
 * Whether the simulator was asked to fail in a way the gateway may pass on as a 5xx: a 5xx
 * status, a reset, a stall (idle timeout), a first byte later than the attempt timeout.
 */
export function faultMayFail(fault: FuzzRequest["fault"], timeoutMs: number): boolean {
  if (fault === null || "garbage" in fault) return false;
  return (fault.status ?? 200) >= 500 || fault.reset !== undefined || fault.stallAfter !== undefined || (fault.firstByteDelayMs ?? 0) >= timeoutMs;
}
