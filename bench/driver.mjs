// Load drivers for the benchmark. One measurement per process, so every figure starts from a
// fresh heap and the load generator never shares an event loop with the orchestrator:
//
//   node bench/driver.mjs '<json spec>'
//
// The spec is {mode, target: {origin, headers}, ...mode options}; the result is printed as one
// JSON line on stdout. Modes:
//   latency     sequential requests on one keep-alive connection (undici Client), hrtime per request
//   throughput  autocannon at a fixed number of connections for a fixed duration
//   sustained   autocannon at increasing connections against a delayed upstream; best rps with p99 < limit
//   streaming   SSE streams started at a steady rate; time to first byte and gaps between events
//   stalls      N streams open at once with long gaps; failures, lateness and the proxy's RSS
import { readFileSync, readdirSync } from "node:fs";
import { performance } from "node:perf_hooks";
import autocannon from "autocannon";
import { Client, Pool } from "undici";

const PATH = "/v1/chat/completions";
const spec = JSON.parse(process.argv[2] ?? "{}");

const requestBody = (stream) =>
  JSON.stringify({
    model: "gpt-4o-mini",
    stream,
    messages: [{ role: "user", content: "Say hello to the benchmark." }],
  });

/** Headers for one request: the target's own (e.g. Portkey routing) plus the mock's shape. */
function headersFor(target, shape = {}) {
  const h = { "content-type": "application/json", ...target.headers };
  if (shape.delayMs) h["x-mock-delay-ms"] = String(shape.delayMs);
  if (shape.chunks) h["x-mock-chunks"] = String(shape.chunks);
  if (shape.gapMs !== undefined) h["x-mock-gap-ms"] = String(shape.gapMs);
  return h;
}

/** Nearest-rank percentile of an ascending array. */
function pct(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}
const sortNum = (a) => Float64Array.from(a).sort();
const round = (x, d = 3) => (x === null || x === undefined ? x : Math.round(x * 10 ** d) / 10 ** d);

// ---------------------------------------------------------------- latency at concurrency 1
function latencyStats(samples, errors) {
  const s = sortNum(samples);
  return { n: s.length, errors, p50: round(pct(s, 50), 4), p90: round(pct(s, 90), 4), p99: round(pct(s, 99), 4), max: round(s[s.length - 1], 3) };
}

/**
 * Sequential requests on one keep-alive connection. With a baseline (the direct target), each
 * iteration sends one request to each, in alternating order, so both series see the same
 * background noise and "added" is their difference over the same window.
 */
async function latency({ target, baseline = null, requests = 3000, warmup = 500, maxMs = 20_000 }) {
  const sides = [target, ...(baseline ? [baseline] : [])].map((t) => ({
    client: new Client(t.origin, { pipelining: 1, keepAliveTimeout: 60_000 }),
    headers: headersFor(t),
    samples: [],
    errors: 0,
  }));
  const body = requestBody(false);
  const one = async (side, record) => {
    const t0 = process.hrtime.bigint();
    try {
      const res = await side.client.request({ path: PATH, method: "POST", headers: side.headers, body });
      for await (const _ of res.body);
      const t1 = process.hrtime.bigint();
      if (res.statusCode !== 200) side.errors++;
      else if (record) side.samples.push(Number(t1 - t0) / 1e6);
    } catch {
      side.errors++;
    }
  };
  const deadline = performance.now() + maxMs;
  for (let i = 0; i < warmup + requests; i++) {
    const order = i % 2 ? [...sides].reverse() : sides;
    for (const side of order) await one(side, i >= warmup);
    if (performance.now() > deadline) break;
  }
  await Promise.all(sides.map((x) => x.client.close()));
  const out = latencyStats(sides[0].samples, sides[0].errors);
  if (baseline) {
    const base = latencyStats(sides[1].samples, sides[1].errors);
    out.baseline = base;
    out.added_p50 = round(out.p50 - base.p50, 4);
    out.added_p99 = round(out.p99 - base.p99, 4);
  }
  return out;
}

// ---------------------------------------------------------------- autocannon helpers
function cannon(target, { connections, durationS, shape = {} }) {
  return autocannon({
    url: target.origin + PATH,
    method: "POST",
    headers: headersFor(target, shape),
    body: requestBody(false),
    connections,
    pipelining: 1,
    duration: durationS,
    timeout: 10,
  });
}
function summarize(r) {
  const ok = r["2xx"] ?? 0;
  return {
    connections: r.connections,
    rps: round(ok / r.duration, 1),
    ok,
    non2xx: r.non2xx ?? 0,
    errors: r.errors ?? 0,
    timeouts: r.timeouts ?? 0,
    latency_p50_ms: r.latency?.p50,
    latency_p99_ms: r.latency?.p99,
    duration_s: round(r.duration, 2),
  };
}

// ---------------------------------------------------------------- requests/s at N connections
async function throughput({ target, connections = 64, durationS = 5, warmupS = 1 }) {
  if (warmupS > 0) await cannon(target, { connections, durationS: warmupS });
  return summarize(await cannon(target, { connections, durationS }));
}

// ---------------------------------------------------------------- sustained rps with a slow upstream
async function sustained({ target, delayMs = 20, steps = [64, 128, 256, 512, 1024], fallback = [32, 16], durationS = 2.5, warmupS = 1, p99LimitMs = 1000 }) {
  const shape = { delayMs };
  if (warmupS > 0) await cannon(target, { connections: steps[0], durationS: warmupS, shape });
  const runs = [];
  let best = null;
  const step = async (connections) => {
    const r = summarize(await cannon(target, { connections, durationS, shape }));
    runs.push(r);
    const clean = r.errors === 0 && r.timeouts === 0 && r.non2xx === 0;
    const within = clean && r.latency_p99_ms < p99LimitMs;
    const gain = !best || r.rps >= best.rps * 1.05;
    if (within && (!best || r.rps > best.rps)) best = r;
    return within && gain;
  };
  // Up while the limit holds and more connections still buy ≥ 5 % more throughput ...
  for (const connections of steps) if (!(await step(connections))) break;
  // ... and down when even the first step broke the limit.
  if (!best) for (const connections of fallback) if ((await step(connections), best)) break;
  return { best_rps: best?.rps ?? 0, best_connections: best?.connections ?? null, best_p99_ms: best?.latency_p99_ms ?? null, steps: runs };
}

// ---------------------------------------------------------------- one SSE stream, timed
/** Opens one stream; resolves with its first-byte time and the arrival time of each SSE event. */
async function timedStream(pool, target, shape, hooks = {}) {
  const t0 = performance.now();
  const out = { t0, ttfb: null, events: [], status: 0, error: null };
  try {
    const res = await pool.request({ path: PATH, method: "POST", headers: headersFor(target, shape), body: requestBody(true) });
    out.status = res.statusCode;
    let prev = 0;
    for await (const chunk of res.body) {
      const now = performance.now();
      if (out.ttfb === null) out.ttfb = now - t0;
      let from = 0;
      if (prev === 10 && chunk[0] === 10) {
        out.events.push(now);
        from = 1;
        if (out.events.length === 1) hooks.onFirstEvent?.();
      }
      for (let i = chunk.indexOf(10, from); i !== -1; i = chunk.indexOf(10, i + 1)) {
        if (chunk[i + 1] === 10) {
          out.events.push(now);
          if (out.events.length === 1) hooks.onFirstEvent?.();
          i++;
        }
      }
      prev = chunk[chunk.length - 1];
    }
  } catch (err) {
    out.error = String(err?.code ?? err?.message ?? err);
  }
  hooks.onEnd?.(out);
  return out;
}
const streamOk = (s, chunks) => s.error === null && s.status === 200 && s.events.length >= chunks + 1;

// ---------------------------------------------------------------- streaming TTFB and gaps
function streamStats(results, chunks) {
  const ttfb = [];
  const gaps = [];
  let failed = 0;
  for (const s of results) {
    if (!streamOk(s, chunks)) {
      failed++;
      continue;
    }
    ttfb.push(s.ttfb);
    for (let i = 1; i < chunks; i++) gaps.push(s.events[i] - s.events[i - 1]);
  }
  const t = sortNum(ttfb);
  const g = sortNum(gaps);
  return {
    streams: results.length,
    failed,
    ttfb_p50_ms: round(pct(t, 50)),
    ttfb_p99_ms: round(pct(t, 99)),
    ttfb_max_ms: round(t[t.length - 1]),
    gap_p50_ms: round(pct(g, 50)),
    gap_p99_ms: round(pct(g, 99)),
    gap_max_ms: round(g[g.length - 1]),
    gap_samples: g.length,
  };
}

/**
 * Streams started at a steady rate. With a baseline (direct), a baseline stream is started
 * half-way between two target streams, so both series share the same time window.
 */
async function streaming({ target, baseline = null, chunks = 64, gapMs = 20, streams = 160, ratePerS = 40, warmupStreams = 64 }) {
  const sides = [target, ...(baseline ? [baseline] : [])].map((t) => ({
    t,
    pool: new Pool(t.origin, { connections: null, pipelining: 1, keepAliveTimeout: 60_000 }),
    started: [],
  }));
  // Warm-up: short streams, concurrently, so connections on both sides of the proxy exist.
  for (const side of sides) await Promise.all(Array.from({ length: warmupStreams }, () => timedStream(side.pool, side.t, { chunks: 4, gapMs: 1 })));
  const shape = { chunks, gapMs };
  const slot = 1000 / ratePerS / sides.length;
  const begin = performance.now();
  for (let i = 0; i < streams * sides.length; i++) {
    const wait = begin + i * slot - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const side = sides[i % sides.length];
    side.started.push(timedStream(side.pool, side.t, shape));
  }
  const results = await Promise.all(sides.map((x) => Promise.all(x.started)));
  await Promise.all(sides.map((x) => x.pool.close()));
  const out = streamStats(results[0], chunks);
  if (baseline) {
    const base = streamStats(results[1], chunks);
    out.baseline = base;
    out.added_ttfb_p50_ms = round(out.ttfb_p50_ms - base.ttfb_p50_ms);
    out.added_ttfb_p99_ms = round(out.ttfb_p99_ms - base.ttfb_p99_ms);
    out.added_gap_p99_ms = round(out.gap_p99_ms - base.gap_p99_ms);
  }
  return out;
}

// ---------------------------------------------------------------- concurrent streams and RSS
function childrenOf(pid) {
  const kids = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").trim();
      if (text) kids.push(...text.split(/\s+/).map(Number));
    }
  } catch {
    /* gone */
  }
  return kids;
}
/** VmRSS in kB of a process and all its descendants (nginx: master + workers). */
function treeRssKb(pid) {
  let total = 0;
  const seen = new Set();
  const stack = [pid];
  while (stack.length) {
    const p = stack.pop();
    if (seen.has(p)) continue;
    seen.add(p);
    try {
      const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"));
      if (m) total += Number(m[1]);
    } catch {
      continue;
    }
    stack.push(...childrenOf(p));
  }
  return total;
}

/** Kernel counters of connections dropped at a full listen queue (all sockets, this network namespace). */
function listenDrops() {
  try {
    const lines = readFileSync("/proc/net/netstat", "utf8").split("\n");
    for (let i = 0; i + 1 < lines.length; i++) {
      if (!lines[i].startsWith("TcpExt:")) continue;
      const names = lines[i].split(/\s+/);
      const values = lines[i + 1].split(/\s+/);
      const at = names.indexOf("ListenOverflows");
      return at > 0 ? Number(values[at]) : null;
    }
  } catch {
    /* not Linux */
  }
  return null;
}

async function stallStep(target, { n, chunks, gapMs, rampMs, slackMs, rssPid }) {
  const dropsBefore = listenDrops();
  const pool = new Pool(target.origin, { connections: null, pipelining: 1, keepAliveTimeout: 60_000, connectTimeout: 10_000 });
  const shape = { chunks, gapMs };
  let firstSeen = 0;
  let ended = 0;
  let rssAllOpenKb = null;
  let rssMaxKb = null;
  const sample = () => {
    if (!rssPid) return;
    const kb = treeRssKb(rssPid);
    rssMaxKb = Math.max(rssMaxKb ?? 0, kb);
    if (firstSeen === n && ended === 0) rssAllOpenKb = Math.max(rssAllOpenKb ?? 0, kb);
  };
  const timer = setInterval(sample, 100);
  const hooks = {
    onFirstEvent: () => {
      firstSeen++;
      if (firstSeen === n) sample();
    },
    onEnd: () => {
      ended++;
    },
  };
  const started = [];
  const batches = Math.max(1, Math.round(rampMs / 10));
  const perBatch = Math.ceil(n / batches);
  for (let i = 0; i < n; i += perBatch) {
    for (let j = i; j < Math.min(n, i + perBatch); j++) started.push(timedStream(pool, target, shape, hooks));
    await new Promise((r) => setTimeout(r, 10));
  }
  const results = await Promise.all(started);
  clearInterval(timer);
  await pool.close();
  const dropsAfter = listenDrops();
  let failed = 0;
  let worstGapOver = 0;
  let worstTtfb = 0;
  let slowStarts = 0;
  const errors = {};
  for (const s of results) {
    if (!streamOk(s, chunks)) {
      failed++;
      const key = s.error ?? `status ${s.status}, ${s.events.length} events`;
      errors[key] = (errors[key] ?? 0) + 1;
      continue;
    }
    worstTtfb = Math.max(worstTtfb, s.ttfb);
    if (s.ttfb > slackMs) slowStarts++;
    for (let i = 1; i < chunks; i++) worstGapOver = Math.max(worstGapOver, s.events[i] - s.events[i - 1] - gapMs);
  }
  // A stall: a failed or cut stream, or a gap between two chunks more than slackMs over the
  // expected gap. A slow start (first chunk late, e.g. a SYN retried after a full listen
  // queue) is reported as worst_ttfb_ms and slow_starts but is not a stall.
  const stalled = failed > 0 || worstGapOver > slackMs;
  return {
    n,
    ok: !stalled,
    failed,
    errors,
    worst_gap_over_ms: round(worstGapOver, 1),
    worst_ttfb_ms: round(worstTtfb, 1),
    slow_starts: slowStarts,
    listen_overflows: dropsBefore === null || dropsAfter === null ? null : dropsAfter - dropsBefore,
    rss_all_open_mb: rssAllOpenKb === null ? null : round(rssAllOpenKb / 1024, 1),
    rss_max_mb: rssMaxKb === null ? null : round(rssMaxKb / 1024, 1),
  };
}

async function stalls({ target, steps = [250, 500, 1000], chunks = 6, gapMs = 400, rampMs = 500, slackMs = 1000, rssPid = null }) {
  // Every step runs (so the RSS at the largest is always measured); the figure is the largest
  // N up to which every step was free of stalls.
  const runs = [];
  for (const n of steps) runs.push(await stallStep(target, { n, chunks, gapMs, rampMs, slackMs, rssPid }));
  const firstStall = runs.find((r) => !r.ok);
  const okRuns = firstStall ? runs.slice(0, runs.indexOf(firstStall)) : runs;
  const atMax = runs[runs.length - 1];
  return {
    max_streams_ok: okRuns.length ? okRuns[okRuns.length - 1].n : 0,
    rss_at_max_mb: atMax.rss_all_open_mb ?? atMax.rss_max_mb,
    worst_ttfb_at_max_ms: atMax.worst_ttfb_ms,
    listen_overflows_at_max: atMax.listen_overflows,
    steps: runs,
    stalled_at: firstStall ? firstStall.n : null,
  };
}

const modes = { latency, throughput, sustained, streaming, stalls };
const fn = modes[spec.mode];
if (!fn) {
  console.error(`driver: unknown mode ${spec.mode}; one of ${Object.keys(modes).join(", ")}`);
  process.exit(2);
}
const result = await fn(spec);
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
