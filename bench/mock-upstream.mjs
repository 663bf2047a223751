// A fast, OpenAI-shaped mock upstream for the benchmark: POST /v1/chat/completions answers
// a fixed chat.completion (JSON) or, when the body asks for "stream": true, a paced SSE
// stream of chat.completion.chunk events ending in `data: [DONE]`.
//
// Shape of the answer, from headers (first) or the query string:
//   x-mock-delay-ms / ?delay=   wait before the response headers (default 0)
//   x-mock-chunks   / ?chunks=  number of SSE content chunks (default 16)
//   x-mock-gap-ms   / ?gap=     pause between SSE chunks (default 0)
//
// Usage: node bench/mock-upstream.mjs --port 0 --host 127.0.0.1
// Prints one line `mock-upstream listening on http://HOST:PORT` once it accepts connections.
import { createServer } from "node:http";

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const host = arg("host", "127.0.0.1");
const port = Number(arg("port", "0"));

const CREATED = Math.floor(Date.now() / 1000);
const JSON_BODY = Buffer.from(
  JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion",
    created: CREATED,
    model: "gpt-4o-mini",
    choices: [{ index: 0, message: { role: "assistant", content: "Hello from the bench mock." }, finish_reason: "stop" }],
    usage: { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 },
  }),
);
const chunkEvent = (i, content, finish) =>
  `data: ${JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion.chunk",
    created: CREATED,
    model: "gpt-4o-mini",
    choices: [{ index: 0, delta: i === 0 ? { role: "assistant", content } : { content }, finish_reason: finish }],
  })}\n\n`;
// Pre-rendered events: chunk i carries token "tN " so each event is about the same size.
const MAX_CHUNKS = 4096;
const eventCache = new Map();
const eventFor = (i, last) => {
  const key = last ? -1 - i : i;
  let b = eventCache.get(key);
  if (!b) {
    b = Buffer.from(chunkEvent(i, `t${i} `, last ? "stop" : null) + (last ? "data: [DONE]\n\n" : ""));
    if (eventCache.size < 4 * MAX_CHUNKS) eventCache.set(key, b);
  }
  return b;
};

const num = (v, fallback, max) => {
  if (v === undefined || v === null || v === "") return fallback;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? Math.min(n, max) : fallback;
};
const STREAM_RE = /"stream"\s*:\s*true/;

const server = createServer({ keepAlive: true, keepAliveTimeout: 120_000, noDelay: true, requestTimeout: 0, headersTimeout: 60_000 }, (req, res) => {
  const qi = req.url.indexOf("?");
  const path = qi >= 0 ? req.url.slice(0, qi) : req.url;
  const query = qi >= 0 ? new URLSearchParams(req.url.slice(qi + 1)) : undefined;
  if (req.method === "GET" && (path === "/health" || path === "/v1/models")) {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}');
    return;
  }
  if (req.method !== "POST" || !path.endsWith("/chat/completions")) {
    res.writeHead(404, { "content-type": "application/json" });
    res.end('{"error":{"message":"not found","type":"invalid_request_error"}}');
    return;
  }
  const h = req.headers;
  const delay = num(h["x-mock-delay-ms"] ?? query?.get("delay"), 0, 60_000);
  const chunks = Math.max(1, Math.floor(num(h["x-mock-chunks"] ?? query?.get("chunks"), 16, MAX_CHUNKS)));
  const gap = num(h["x-mock-gap-ms"] ?? query?.get("gap"), 0, 60_000);

  let body = "";
  req.setEncoding("utf8");
  req.on("data", (d) => (body += d));
  req.on("end", () => {
    const stream = STREAM_RE.test(body);
    const respond = stream ? () => sendStream(res, chunks, gap) : () => sendJson(res);
    if (delay > 0) setTimeout(respond, delay);
    else respond();
  });
});

function sendJson(res) {
  res.writeHead(200, { "content-type": "application/json", "content-length": JSON_BODY.length });
  res.end(JSON_BODY);
}

function sendStream(res, chunks, gap) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  let i = 0;
  let timer;
  res.on("close", () => clearTimeout(timer));
  const next = () => {
    if (res.destroyed) return;
    const last = i === chunks - 1;
    res.write(eventFor(i, last));
    i++;
    if (last) res.end();
    else if (gap > 0) timer = setTimeout(next, gap);
    else setImmediate(next);
  };
  next();
}

server.on("connection", (socket) => socket.setNoDelay(true));
server.on("clientError", (_err, socket) => socket.destroy());
server.listen({ host, port, backlog: 4096 }, () => {
  const a = server.address();
  console.log(`mock-upstream listening on http://${a.address}:${a.port}`);
});
const stop = () => {
  server.close();
  server.closeAllConnections();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
