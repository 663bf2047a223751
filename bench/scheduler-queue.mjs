// Unit benchmark of the in-process priority scheduler (not a test): how much memory a waiting
// request costs and how long one enqueue and one dispatch take, at 1,000 / 10,000 / 100,000
// waiters. One backend with maxConcurrency 1 is taken by a first request, so every further
// request queues; then the slot is released N times, each release dispatching the next waiter.
//
//   node --import tsx bench/scheduler-queue.mjs            # from the project root
//   node --import tsx bench/scheduler-queue.mjs 1000 50000  # other sizes
//
// Heap figures are taken after a full GC (the script enables it itself when node was not
// started with --expose-gc).
import { loadavg } from "node:os";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { parseConfig } from "../src/config/load.ts";
import { inProcessScheduler } from "../src/runtime.ts";
import { BackendPool } from "../src/routing/pool.ts";

if (typeof globalThis.gc !== "function") setFlagsFromString("--expose-gc");
const gc = typeof globalThis.gc === "function" ? globalThis.gc : runInNewContext("gc");

const SIZES = process.argv.slice(2).map(Number).filter((n) => n > 0);
if (!SIZES.length) SIZES.push(1_000, 10_000, 100_000);
/** Runs per size: more for small sizes, whose few milliseconds are at the mercy of one GC. */
const repsFor = (n) => Math.max(5, Math.ceil(50_000 / n));
const CALLERS = 100;
const TTL_MS = 10 * 60_000;

function fullGc() {
  // Twice: objects freed by the first pass's finalizers go in the second.
  gc();
  gc();
}

/** A deterministic pseudo-random sequence (LCG), so that every run enqueues the same mix. */
function lcg(seed) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/**
 * The request objects the gateway would hand the scheduler: 20 % high, 50 % normal, 30 % low;
 * 100 callers; 50–1,050 estimated tokens. `eligible` is shared (the gateway caches it per
 * model and priority), `tried` is a fresh array per request (as in the attempt loop).
 */
function makeRequests(n, now) {
  const rnd = lcg(42);
  const eligible = ["b1"];
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const p = rnd();
    out[i] = {
      id: `r${i}`,
      priority: p < 0.2 ? 1 : p < 0.7 ? 2 : 3,
      caller: `key:${(Math.floor(rnd() * CALLERS)).toString(16).padStart(8, "0")}`,
      cost: 50 + Math.floor(rnd() * 1_000),
      deadline: now + TTL_MS,
      eligible,
      tried: [],
    };
  }
  return out;
}

async function once(n) {
  const config = parseConfig({
    scheduling: { maxQueue: n + 1 },
    backends: [{ name: "b1", url: "http://127.0.0.1:9", models: ["gpt-4o"], maxConcurrency: 1 }],
  });
  const pool = new BackendPool(config);
  const scheduler = inProcessScheduler(pool, config);
  const first = await scheduler.acquire({ id: "first", priority: 2, caller: "x", cost: 1, deadline: Date.now() + TTL_MS, eligible: ["b1"], tried: [] });
  if (first.kind !== "granted") throw new Error(`the first request was not granted: ${first.kind}`);

  const requests = makeRequests(n, Date.now());
  const pending = new Array(n);
  fullGc();
  const heapBefore = process.memoryUsage().heapUsed;

  let t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) pending[i] = scheduler.acquire(requests[i]);
  const enqueueNs = Number(process.hrtime.bigint() - t);

  fullGc();
  const heapAfter = process.memoryUsage().heapUsed;
  const waiting = scheduler.stats().waiting;
  if (waiting !== n) throw new Error(`expected ${n} waiters, the scheduler has ${waiting}`);

  t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) scheduler.release("b1", { verdict: "success", ttfbMs: 100 });
  const dispatchNs = Number(process.hrtime.bigint() - t);

  const decisions = await Promise.all(pending);
  const granted = decisions.filter((d) => d.kind === "granted").length;
  if (granted !== n) throw new Error(`${n - granted} of ${n} requests were not granted`);
  scheduler.release("b1", { verdict: "success" });
  if (scheduler.stats().waiting !== 0) throw new Error("waiters left after dispatching everything");

  return {
    heapAfterMb: heapAfter / 2 ** 20,
    bytesPerWaiter: (heapAfter - heapBefore) / n,
    enqueueUs: enqueueNs / n / 1_000,
    dispatchUs: dispatchNs / n / 1_000,
  };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// Warm-up: let the JIT compile the hot paths before anything is measured.
for (let i = 0; i < 3; i++) await once(10_000);

const rows = [];
for (const n of SIZES) {
  const runs = [];
  for (let r = 0, reps = repsFor(n); r < reps; r++) runs.push(await once(n));
  rows.push({
    n,
    heapAfterMb: median(runs.map((x) => x.heapAfterMb)),
    bytesPerWaiter: median(runs.map((x) => x.bytesPerWaiter)),
    enqueueUs: median(runs.map((x) => x.enqueueUs)),
    dispatchUs: median(runs.map((x) => x.dispatchUs)),
  });
}

const fmt = (x, d) => x.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
console.log(`In-process scheduler, one backend at maxConcurrency 1; 3 priority levels, ${CALLERS} callers; median of ${SIZES.map(repsFor).join(" / ")} runs; node ${process.version}, load average ${loadavg()[0].toFixed(2)}\n`);
console.log("| waiters (N) | heap used after enqueue (MB) | bytes per waiter | µs per enqueue | µs per dispatch |");
console.log("|---:|---:|---:|---:|---:|");
for (const r of rows) {
  console.log(`| ${fmt(r.n, 0)} | ${fmt(r.heapAfterMb, 1)} | ${fmt(r.bytesPerWaiter, 0)} | ${fmt(r.enqueueUs, 2)} | ${fmt(r.dispatchUs, 2)} |`);
}
