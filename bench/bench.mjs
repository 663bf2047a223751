// Orchestrator of the benchmark (start it with `bash bench/run`, which installs what it needs).
//
// Starts the mock upstream and each gateway as its own process on 127.0.0.1, runs every
// measurement as a separate driver process (bench/driver.mjs) against each target in turn,
// takes the median over the repetitions, writes bench/results/latest.{md,json}, prints the
// table, the ratios and a PASS/FAIL line per target, and stops every process it started.
//
// Flags: --quick (one repetition, short runs), --reps N, --targets direct,nginx,portkey,sluice,sluice2
//        (sluice2: Sluice with server.workers: 2 sharing state through a redis-server the bench starts),
//        --profile (afterwards, a CPU profile of Sluice under the 64-connection load),
//        --profile-only (only that), --out DIR (default bench/results).
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { appendFileSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { connect, createServer } from "node:net";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const BENCH = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(BENCH, "..");
const HOST = "127.0.0.1";

// ------------------------------------------------------------------ options
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const option = (name) => {
  const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (i < 0) return undefined;
  return argv[i].includes("=") ? argv[i].slice(argv[i].indexOf("=") + 1) : argv[i + 1];
};
if (flag("help")) {
  console.log("usage: bash bench/run [--quick] [--reps N] [--targets direct,nginx,portkey,sluice,sluice2] [--profile | --profile-only] [--out DIR]");
  process.exit(0);
}
const QUICK = flag("quick");
const PROFILE_ONLY = flag("profile-only");
const PROFILE = flag("profile") || PROFILE_ONLY;
const REPS = Number(option("reps") ?? (QUICK ? 1 : 3));
const ALL_TARGETS = ["direct", "nginx", "portkey", "sluice", "sluice2"];
const TARGETS = (option("targets") ?? ALL_TARGETS.join(",")).split(",").filter((t) => ALL_TARGETS.includes(t));
const OUT = resolve(option("out") ?? join(BENCH, "results"));
const NGINX_WORKERS = process.env.BENCH_NGINX_WORKERS ?? "1";

/** What each measurement does; --quick shortens every run (smoke test, not for figures). */
const PLAN = QUICK
  ? {
      latency: { requests: 1000, warmup: 200, maxMs: 8_000 },
      throughput: { connections: 64, durationS: 2, warmupS: 0.5 },
      sustained: { delayMs: 20, steps: [64, 256], fallback: [32, 16], durationS: 1.5, warmupS: 0.5, p99LimitMs: 1000 },
      streaming: { chunks: 64, gapMs: 20, streams: 60, ratePerS: 40, warmupStreams: 32 },
      stalls: { steps: [250, 1000], chunks: 4, gapMs: 300, rampMs: 500, slackMs: 1000 },
    }
  : {
      latency: { requests: 3000, warmup: 500, maxMs: 20_000 },
      throughput: { connections: 64, durationS: 5, warmupS: 1 },
      sustained: { delayMs: 20, steps: [64, 128, 256, 512, 1024], fallback: [32, 16], durationS: 2, warmupS: 1, p99LimitMs: 1000 },
      streaming: { chunks: 64, gapMs: 20, streams: 160, ratePerS: 40, warmupStreams: 64 },
      stalls: { steps: [250, 500, 1000], chunks: 5, gapMs: 400, rampMs: 500, slackMs: 1000 },
    };

// ------------------------------------------------------------------ processes
const children = [];
const PIDFILE = process.env.BENCH_PIDFILE;
const tmp = mkdtempSync(join(tmpdir(), "sluice-bench-"));
chmodSync(tmp, 0o755); // nginx workers may run as another user
const log = (...a) => console.log(...a);

function start(name, cmd, args, { cwd = ROOT, env = process.env } = {}) {
  const logFile = join(tmp, `${name}.log`);
  const fd = openSync(logFile, "a");
  const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const entry = { name, child, logFile, exited: false, code: null };
  child.on("exit", (code, signal) => {
    entry.exited = true;
    entry.code = code ?? signal;
  });
  child.on("error", (err) => {
    entry.exited = true;
    entry.code = String(err.message);
  });
  children.push(entry);
  if (PIDFILE && child.pid) appendFileSync(PIDFILE, `${child.pid}\n`);
  return entry;
}

function tail(file, lines = 15) {
  try {
    return readFileSync(file, "utf8").split("\n").filter((l) => !/^\s+at /.test(l)).slice(-lines).join("\n");
  } catch {
    return "";
  }
}

async function stop(entry, graceMs = 3000) {
  if (entry.exited || !entry.child.pid) return;
  entry.child.kill("SIGTERM");
  const until = Date.now() + graceMs;
  while (!entry.exited && Date.now() < until) await sleep(25);
  if (!entry.exited) entry.child.kill("SIGKILL");
  while (!entry.exited && Date.now() < until + 1000) await sleep(25);
}
async function stopAll() {
  await Promise.all(children.map((c) => stop(c)));
}
let cleaning = false;
async function cleanupAndExit(code) {
  if (cleaning) return;
  cleaning = true;
  await stopAll();
  rmSync(tmp, { recursive: true, force: true });
  process.exit(code);
}
process.on("SIGINT", () => void cleanupAndExit(130));
process.on("SIGTERM", () => void cleanupAndExit(143));
process.on("exit", () => {
  for (const c of children) if (!c.exited) c.child.kill("SIGKILL");
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

/** Polls with a real chat request until the target answers 200. */
async function waitReady(entry, target, timeoutMs = 30_000) {
  const until = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < until) {
    if (entry?.exited) throw new Error(`${entry.name} exited (${entry.code}):\n${tail(entry.logFile)}`);
    try {
      const res = await fetch(`${target.origin}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", ...target.headers },
        body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "ping" }] }),
        signal: AbortSignal.timeout(2000),
      });
      const text = await res.text();
      if (res.status === 200 && text.includes("chat.completion")) return;
      last = `status ${res.status}: ${text.slice(0, 200)}`;
    } catch (err) {
      last = String(err?.cause?.code ?? err?.message ?? err);
    }
    await sleep(100);
  }
  throw new Error(`${target.name} not ready after ${timeoutMs} ms (${last})${entry ? `:\n${tail(entry.logFile)}` : ""}`);
}

// ------------------------------------------------------------------ the servers
async function startMock() {
  const port = await freePort();
  const entry = start("mock", process.execPath, [join(BENCH, "mock-upstream.mjs"), "--host", HOST, "--port", String(port)]);
  const target = { name: "direct", origin: `http://${HOST}:${port}`, headers: {}, pid: entry.child.pid };
  await waitReady(entry, target);
  return { entry, target, port };
}

function findNginx() {
  for (const p of [process.env.BENCH_NGINX, "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]) if (p && existsSync(p)) return p;
  try {
    return execFileSync("sh", ["-c", "command -v nginx"], { encoding: "utf8" }).trim() || null;
  } catch {
    return null;
  }
}

async function startNginx(mockPort) {
  const bin = findNginx();
  if (!bin) throw new Error("nginx not found (bench/run installs it with apt-get; set BENCH_NGINX to a binary)");
  const port = await freePort();
  const dir = join(tmp, `nginx-${port}`);
  mkdirSync(dir, { mode: 0o755 });
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `# Generated by bench/bench.mjs: a plain reverse proxy in front of the mock upstream.
daemon off;
master_process on;
worker_processes ${NGINX_WORKERS};
worker_rlimit_nofile 65536;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events {
  worker_connections 16384;
  multi_accept on;
}
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  upstream mock {
    server ${HOST}:${mockPort};
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen ${HOST}:${port} backlog=4096;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
    }
  }
}
`,
  );
  const entry = start("nginx", bin, ["-p", dir, "-c", conf, "-e", `${dir}/error.log`]);
  entry.logFile = `${dir}/error.log`;
  const target = { name: "nginx", origin: `http://${HOST}:${port}`, headers: {}, pid: entry.child.pid };
  await waitReady(entry, target);
  return { entry, target };
}

function portkeyEntry() {
  const p = join(BENCH, "node_modules", "@portkey-ai", "gateway", "build", "start-server.js");
  if (!existsSync(p)) throw new Error(`${p} missing: run npm ci --prefix bench`);
  return p;
}

async function startPortkey(mockPort) {
  const port = await freePort();
  // Its Node entry takes --port only and listens on every interface; the preload binds it to 127.0.0.1.
  const entry = start("portkey", process.execPath, ["--import", join(BENCH, "loopback-preload.mjs"), portkeyEntry(), `--port=${port}`, "--headless"], {
    cwd: BENCH,
    env: { ...process.env, BENCH_LISTEN_HOST: HOST },
  });
  const target = {
    name: "portkey",
    origin: `http://${HOST}:${port}`,
    headers: {
      "x-portkey-provider": "openai",
      "x-portkey-custom-host": `http://${HOST}:${mockPort}/v1`,
      authorization: "Bearer sk-bench",
      // Portkey forwards only the client headers it is told to; the mock reads its shape from these.
      "x-portkey-forward-headers": "x-mock-delay-ms,x-mock-chunks,x-mock-gap-ms",
    },
    pid: entry.child.pid,
  };
  await waitReady(entry, target);
  return { entry, target };
}

/** A redis-server for the workers' shared state (Debian's package; bench/run installs it), no persistence. */
async function startRedis() {
  const port = await freePort();
  const entry = start("redis", "redis-server", ["--port", String(port), "--bind", HOST, "--save", "", "--appendonly", "no"]);
  const until = Date.now() + 10_000;
  for (;;) {
    if (entry.exited) throw new Error(`redis-server exited (${entry.code}):\n${tail(entry.logFile)}`);
    const ok = await new Promise((res) => {
      const sock = connect({ host: HOST, port }, () => sock.write("PING\r\n"));
      sock.on("data", (d) => (sock.destroy(), res(String(d).startsWith("+PONG"))));
      sock.on("error", () => res(false));
    });
    if (ok) return { entry, url: `redis://${HOST}:${port}` };
    if (Date.now() > until) throw new Error("redis-server did not answer PING");
    await sleep(50);
  }
}

async function startSluice(mockPort, { name = "sluice", extraNodeArgs = [], workers = 1, redisUrl } = {}) {
  const port = await freePort();
  const config = join(tmp, `${name}.json`);
  writeFileSync(
    config,
    JSON.stringify(
      {
        server: { host: HOST, port, shutdownGraceMs: 2000, workers },
        ...(redisUrl ? { state: { redis: { url: redisUrl, keyPrefix: `${name}${Date.now()}:` } } } : {}),
        backends: [{ name: "mock", url: `http://${HOST}:${mockPort}`, kind: "openai", models: ["*"] }],
      },
      null,
      2,
    ),
  );
  // The bundle `npm start` runs (bench/run builds it first), not the sources through tsx.
  const entry = start(name, process.execPath, [...extraNodeArgs, join(ROOT, "dist", "node", "main.js"), "--config", config], { cwd: ROOT });
  const target = { name: "sluice", origin: `http://${HOST}:${port}`, headers: { authorization: "Bearer sk-bench" }, pid: entry.child.pid };
  await waitReady(entry, target, 60_000);
  // Every worker listening, not only the first to answer.
  if (workers > 1) await waitFor(() => (readFileSync(entry.logFile, "utf8").match(/listening on/g) ?? []).length >= workers, 30_000);
  return { entry, target };
}

async function waitFor(check, timeoutMs) {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error("timed out");
    await sleep(50);
  }
}

// ------------------------------------------------------------------ drivers
function runDriver(spec, timeoutMs = 180_000) {
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, [join(BENCH, "driver.mjs"), JSON.stringify(spec)], { cwd: BENCH, stdio: ["ignore", "pipe", "pipe"] });
    const entry = { name: `driver-${spec.mode}`, child, exited: false };
    children.push(entry);
    if (PIDFILE && child.pid) appendFileSync(PIDFILE, `${child.pid}\n`);
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (code) => {
      entry.exited = true;
      clearTimeout(timer);
      children.splice(children.indexOf(entry), 1);
      const line = out.trim().split("\n").pop();
      try {
        if (code !== 0) throw new Error(`exit ${code}`);
        resolveRun(JSON.parse(line));
      } catch (e) {
        resolveRun({ error: `driver ${spec.mode} failed (${e.message}): ${err.trim().slice(-500)}` });
      }
    });
  });
}

// ------------------------------------------------------------------ statistics
const median = (xs) => {
  const v = xs.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const r = (x, d = 3) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);

// ------------------------------------------------------------------ CPU profile of Sluice
/** Self time per function over the samples taken between fromMs and toMs after the profile began. */
function summarizeProfile(file, fromMs, toMs, top = 25) {
  const prof = JSON.parse(readFileSync(file, "utf8"));
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  let idle = 0;
  let at = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = prof.timeDeltas[i] ?? 0;
    at += dt;
    if (at < fromMs * 1000 || at > toMs * 1000) continue;
    const n = byId.get(prof.samples[i]);
    const cf = n.callFrame;
    if (cf.functionName === "(idle)") {
      idle += dt;
      continue;
    }
    total += dt;
    const url = cf.url.replace(`file://${ROOT}/`, "").replace(/^.*node_modules\//, "node_modules/");
    const key = `${cf.functionName || "(anonymous)"}  ${url ? `${url}:${cf.lineNumber + 1}` : ""}`.trim();
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  const byFile = new Map();
  for (const [key, us] of self) {
    const m = /\s(\S+):\d+$/.exec(key);
    const f = m ? m[1].replace(/^(node_modules\/(@[^/]+\/)?[^/]+).*$/, "$1") : key.startsWith("(") ? key.split("  ")[0] : "(native/builtin)";
    byFile.set(f, (byFile.get(f) ?? 0) + us);
  }
  const files = [...byFile.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12);
  const pctOf = (us) => ((100 * us) / total).toFixed(1);
  let md = `Busy ${(total / 1000).toFixed(0)} ms, idle ${(idle / 1000).toFixed(0)} ms in the window; percentages are of busy time.\n\n| self % | self ms | function |\n|---:|---:|---|\n`;
  for (const [k, us] of rows) md += `| ${pctOf(us)} | ${(us / 1000).toFixed(0)} | \`${k}\` |\n`;
  md += `\n| self % | file or package |\n|---:|---|\n`;
  for (const [f, us] of files) md += `| ${pctOf(us)} | \`${f}\` |\n`;
  return { busyMs: total / 1000, idleMs: idle / 1000, md };
}

async function profileSluice(mockPort) {
  const dir = join(tmp, "prof");
  mkdirSync(dir);
  const spawned = Date.now();
  const { entry, target } = await startSluice(mockPort, { name: "sluice-prof", extraNodeArgs: ["--cpu-prof", `--cpu-prof-dir=${dir}`] });
  log(`profile: Sluice with --cpu-prof under ${PLAN.throughput.connections} connections for ${PLAN.throughput.durationS} s ...`);
  // Only the measured load counts: not start-up, not the warm-up.
  const driverStart = Date.now();
  const res = await runDriver({ mode: "throughput", target, ...PLAN.throughput });
  const driverEnd = Date.now();
  const fromMs = driverStart - spawned + PLAN.throughput.warmupS * 1000 + 400;
  const toMs = driverEnd - spawned - 150;
  await stop(entry, 10_000);
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
  if (!files.length) throw new Error(`no .cpuprofile written:\n${tail(entry.logFile)}`);
  const { md } = summarizeProfile(join(dir, files[0]), fromMs, toMs);
  const text = `# Sluice CPU profile under load\n\n${new Date().toISOString()}: \`node --cpu-prof\` of the Sluice process while autocannon drove ${PLAN.throughput.connections} connections for ${PLAN.throughput.durationS} s (instant upstream; ${res.rps} req/s while profiled, ${res.error ? res.error : "no driver error"}). Samples from the measured window only (start-up and warm-up left out). Self time, top functions:\n\n${md}`;
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, "sluice-profile.md"), text);
  log(`\n${text}`);
  log(`(written to ${join(OUT, "sluice-profile.md")})`);
}

// ------------------------------------------------------------------ main
function versions() {
  const v = { node: process.version };
  try {
    v.portkey = JSON.parse(readFileSync(join(BENCH, "node_modules", "@portkey-ai", "gateway", "package.json"), "utf8")).version;
  } catch {}
  try {
    v.autocannon = JSON.parse(readFileSync(join(BENCH, "node_modules", "autocannon", "package.json"), "utf8")).version;
  } catch {}
  const bin = findNginx();
  if (bin) {
    const res = spawnSync(bin, ["-v"], { encoding: "utf8" });
    v.nginx = `${res.stdout ?? ""}${res.stderr ?? ""}`.trim().replace(/^nginx version: (nginx\/)?/, "") || undefined;
  }
  try {
    v.sluice = execFileSync("git", ["-C", ROOT, "describe", "--always", "--dirty"], { encoding: "utf8" }).trim();
  } catch {}
  return v;
}

const LABEL = { direct: "direct (floor)", nginx: "nginx", portkey: "Portkey", sluice: "Sluice", sluice2: "Sluice, 2 workers + Redis" };

async function main() {
  const t0 = Date.now();
  const loadStart = loadavg().map((x) => r(x, 2));
  const versionsAtStart = versions();
  log(`sluice bench: ${QUICK ? "QUICK (smoke test; figures not comparable)" : "full"}; ${REPS} repetition(s); targets ${TARGETS.join(", ")}; ${cpus().length} cores; load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  const mock = await startMock();
  log(`mock upstream: ${mock.target.origin}`);
  if (PROFILE_ONLY) {
    await profileSluice(mock.port);
    return;
  }
  const targets = {};
  const servers = {};
  const problems = [];
  const starters = {
    nginx: () => startNginx(mock.port),
    portkey: () => startPortkey(mock.port),
    sluice: () => startSluice(mock.port),
    sluice2: async () => startSluice(mock.port, { name: "sluice2", workers: 2, redisUrl: (redis ??= await startRedis()).url }),
  };
  let redis;
  for (const name of TARGETS) {
    try {
      if (name === "direct") targets.direct = mock.target;
      else {
        servers[name] = await starters[name]();
        targets[name] = servers[name].target;
      }
      log(`${name}: ${targets[name].origin} (pid ${targets[name].pid})`);
    } catch (err) {
      problems.push(`${name}: could not start: ${err.message}`);
      log(`${name}: SKIPPED: ${err.message}`);
    }
  }
  const names = TARGETS.filter((n) => targets[n]);
  const tests = ["latency", "throughput", "sustained", "streaming", "stalls"];
  const runs = Object.fromEntries(tests.map((t) => [t, Object.fromEntries(names.map((n) => [n, []]))]));
  const paired = new Set(["latency", "streaming"]);
  const wire = (t) => ({ origin: t.origin, headers: t.headers });

  for (let rep = 0; rep < REPS; rep++) {
    for (const test of tests) {
      // The order of targets turns with each repetition, so a burst of background load does not
      // always land on the same one.
      const order = names.map((_, i) => names[(i + rep) % names.length]);
      for (const name of order) {
        // The memory test reads one process's RSS: not comparable for several workers.
        if (test === "stalls" && name === "sluice2") continue;
        if (test === "stalls" && servers[name]) {
          // Memory is measured on a freshly started gateway, so it does not depend on what ran before.
          await stop(servers[name].entry);
          try {
            servers[name] = await starters[name]();
            targets[name] = servers[name].target;
          } catch (err) {
            problems.push(`rep ${rep + 1} restart ${name}: ${err.message}`);
            runs[test][name].push({ error: `restart failed: ${err.message}` });
            continue;
          }
        }
        const target = targets[name];
        const spec = { mode: test, target: wire(target), ...PLAN[test] };
        if (test === "stalls") spec.rssPid = target.pid;
        if (paired.has(test) && name !== "direct" && targets.direct) spec.baseline = wire(targets.direct);
        const started = Date.now();
        const res = await runDriver(spec);
        runs[test][name][rep] = res;
        if (res.error) problems.push(`rep ${rep + 1} ${test} ${name}: ${res.error}`);
        log(`[rep ${rep + 1}/${REPS}] ${test.padEnd(10)} ${name.padEnd(7)} ${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s  ${brief(test, res)}`);
      }
    }
  }

  // Medians over repetitions. "Added" figures come from paired runs: the driver alternated
  // between the target and direct in the same window, and reports the difference.
  const addedMedian = (test, name, field) => (targets.direct ? median(runs[test][name].map((x) => x?.[field])) : null);
  const m = (test, name, field) => median(runs[test][name].map((x) => x?.[field]));
  const summary = {};
  for (const name of names) {
    summary[name] = {
      latency_p50_ms: r(m("latency", name, "p50"), 4),
      latency_p99_ms: r(m("latency", name, "p99"), 4),
      added_latency_p50_ms: name === "direct" ? 0 : r(addedMedian("latency", name, "added_p50"), 4),
      added_latency_p99_ms: name === "direct" ? 0 : r(addedMedian("latency", name, "added_p99"), 4),
      rps_64: r(m("throughput", name, "rps"), 0),
      rps_64_p99_ms: m("throughput", name, "latency_p99_ms"),
      rps_sustained_20ms: r(m("sustained", name, "best_rps"), 0),
      rps_sustained_connections: m("sustained", name, "best_connections"),
      ttfb_p50_ms: r(m("streaming", name, "ttfb_p50_ms")),
      ttfb_p99_ms: r(m("streaming", name, "ttfb_p99_ms")),
      added_ttfb_p50_ms: name === "direct" ? 0 : r(addedMedian("streaming", name, "added_ttfb_p50_ms")),
      added_ttfb_p99_ms: name === "direct" ? 0 : r(addedMedian("streaming", name, "added_ttfb_p99_ms")),
      gap_p99_ms: r(m("streaming", name, "gap_p99_ms")),
      added_gap_p99_ms: name === "direct" ? 0 : r(addedMedian("streaming", name, "added_gap_p99_ms")),
      streams_without_stall: m("stalls", name, "max_streams_ok"),
      rss_mb_at_1000_streams: r(m("stalls", name, "rss_at_max_mb"), 1),
      worst_ttfb_ms_at_1000_streams: r(m("stalls", name, "worst_ttfb_at_max_ms"), 0),
      listen_overflows_at_1000_streams: m("stalls", name, "listen_overflows_at_max"),
    };
  }

  const ratio = (a, b) => (a && b ? a / b : null);
  const s = summary.sluice;
  const ratios = {
    sluice_over_portkey_rps_64: r(ratio(s?.rps_64, summary.portkey?.rps_64), 2),
    sluice_over_nginx_rps_64: r(ratio(s?.rps_64, summary.nginx?.rps_64), 2),
    sluice_over_portkey_rps_sustained: r(ratio(s?.rps_sustained_20ms, summary.portkey?.rps_sustained_20ms), 2),
    sluice_over_nginx_rps_sustained: r(ratio(s?.rps_sustained_20ms, summary.nginx?.rps_sustained_20ms), 2),
  };
  const maxStreams = PLAN.stalls.steps[PLAN.stalls.steps.length - 1];
  const check = (name, value, ok, unit = "") => ({ name, value: value === null || value === undefined ? null : value, unit, pass: value === null || value === undefined ? null : ok(value) });
  const checks = s
    ? [
        check("Sluice throughput ≥ 10× Portkey (64 conns)", ratios.sluice_over_portkey_rps_64, (v) => v >= 10, "×"),
        check("Sluice throughput ≥ 0.4× nginx (64 conns)", ratios.sluice_over_nginx_rps_64, (v) => v >= 0.4, "×"),
        check("Sluice added latency p50 ≤ 0.3 ms (c=1)", s.added_latency_p50_ms, (v) => v <= 0.3, " ms"),
        check("Sluice added latency p99 ≤ 1 ms (c=1)", s.added_latency_p99_ms, (v) => v <= 1, " ms"),
        check("Sluice added TTFB ≤ 1 ms (streaming; p50 and p99)", s.added_ttfb_p99_ms === null ? null : `p50 ${s.added_ttfb_p50_ms}, p99 ${s.added_ttfb_p99_ms}`, () => s.added_ttfb_p50_ms <= 1 && s.added_ttfb_p99_ms <= 1, " ms"),
        check(`Sluice ${maxStreams} concurrent streams without a stall`, s.streams_without_stall, (v) => v >= maxStreams, " streams"),
        check(`Sluice RSS ≤ 150 MB at ${maxStreams} open streams`, s.rss_mb_at_1000_streams, (v) => v <= 150, " MB"),
      ]
    : [];

  const meta = {
    date: new Date().toISOString(),
    quick: QUICK,
    reps: REPS,
    duration_s: Math.round((Date.now() - t0) / 1000),
    cores: cpus().length,
    cpu: cpus()[0]?.model,
    mem_gb: Math.round(totalmem() / 2 ** 30),
    loadavg_start: loadStart,
    loadavg_end: loadavg().map((x) => r(x, 2)),
    // How steady the machine was: the floor's own figures across repetitions.
    direct_spread: targets.direct
      ? {
          rps_64: [Math.min(...runs.throughput.direct.map((x) => x?.rps ?? Infinity)), Math.max(...runs.throughput.direct.map((x) => x?.rps ?? 0))],
          latency_p99_ms: [Math.min(...runs.latency.direct.map((x) => x?.p99 ?? Infinity)), Math.max(...runs.latency.direct.map((x) => x?.p99 ?? 0))],
        }
      : null,
    nginx_workers: Number(NGINX_WORKERS),
    versions: versionsAtStart,
    plan: PLAN,
  };
  const md = markdown(meta, names, summary, ratios, checks, problems);
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, "latest.md"), md);
  writeFileSync(join(OUT, "latest.json"), JSON.stringify({ meta, summary, ratios, checks, problems, runs }, null, 2) + "\n");
  log(`\n${md}`);
  log(`written: ${join(OUT, "latest.md")}, ${join(OUT, "latest.json")}`);

  if (PROFILE && targets.sluice) await profileSluice(mock.port);
}

function brief(test, res) {
  if (res.error) return `ERROR ${res.error.slice(0, 160)}`;
  switch (test) {
    case "latency":
      return `p50 ${res.p50} ms, p99 ${res.p99} ms (${res.n} req, ${res.errors} errors)${res.baseline ? `; added p50 ${res.added_p50} p99 ${res.added_p99} ms vs direct in the same window (${res.baseline.p50}/${res.baseline.p99})` : ""}`;
    case "throughput":
      return `${res.rps} req/s, p99 ${res.latency_p99_ms} ms, errors ${res.errors + res.non2xx + res.timeouts}`;
    case "sustained":
      return `best ${res.best_rps} req/s at ${res.best_connections} conns (p99 ${res.best_p99_ms} ms); steps ${res.steps.map((x) => `${x.connections}:${x.rps}/${x.latency_p99_ms}ms`).join(" ")}`;
    case "streaming":
      return `ttfb p50 ${res.ttfb_p50_ms} p99 ${res.ttfb_p99_ms} ms, gap p50 ${res.gap_p50_ms} p99 ${res.gap_p99_ms} ms, failed ${res.failed}/${res.streams}${res.baseline ? `; added ttfb p50 ${res.added_ttfb_p50_ms} p99 ${res.added_ttfb_p99_ms}, gap p99 ${res.added_gap_p99_ms} ms` : ""}`;
    case "stalls":
      return `ok up to ${res.max_streams_ok}; ` + res.steps.map((x) => `${x.n}: ${x.ok ? "ok" : "STALL"} gap+${x.worst_gap_over_ms} ttfb ${x.worst_ttfb_ms} ms, failed ${x.failed}${Object.keys(x.errors).length ? ` ${JSON.stringify(x.errors)}` : ""}, listen overflows ${x.listen_overflows}, rss ${x.rss_all_open_mb ?? x.rss_max_mb} MB`).join("; ");
  }
  return JSON.stringify(res);
}

function markdown(meta, names, summary, ratios, checks, problems) {
  const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: 0 }) : String(v));
  const rows = [
    ["latency p50 at c=1 (ms)", "latency_p50_ms", 3],
    ["latency p99 at c=1 (ms)", "latency_p99_ms", 3],
    ["**added** latency p50 at c=1 (ms)", "added_latency_p50_ms", 3],
    ["**added** latency p99 at c=1 (ms)", "added_latency_p99_ms", 3],
    ["req/s, 64 connections, instant upstream", "rps_64", 0],
    ["req/s sustained, 20 ms upstream, p99 < 1 s", "rps_sustained_20ms", 0],
    ["… at connections", "rps_sustained_connections", 0],
    ["stream TTFB p99 (ms)", "ttfb_p99_ms", 2],
    ["**added** stream TTFB p50 (ms)", "added_ttfb_p50_ms", 2],
    ["**added** stream TTFB p99 (ms)", "added_ttfb_p99_ms", 2],
    ["stream inter-chunk gap p99 (ms; 20 expected)", "gap_p99_ms", 2],
    ["**added** inter-chunk gap p99 (ms)", "added_gap_p99_ms", 2],
    ["concurrent streams without a stall (of 250/500/1000)", "streams_without_stall", 0],
    ["RSS at 1,000 open streams (MB)", "rss_mb_at_1000_streams", 1],
    ["slowest first chunk at 1,000 streams (ms)", "worst_ttfb_ms_at_1000_streams", 0],
    ["listen-queue overflows at 1,000 streams (kernel count)", "listen_overflows_at_1000_streams", 0],
  ];
  let md = `# Sluice benchmark${meta.quick ? " (QUICK smoke run: not for comparison)" : ""}\n\n`;
  md += `${meta.date}; median of ${meta.reps} run(s); ${meta.cores} cores (${meta.cpu}); load average ${meta.loadavg_start.join(" ")} at the start, ${meta.loadavg_end.join(" ")} at the end; took ${meta.duration_s} s.\n`;
  if (meta.direct_spread) md += `Steadiness of the machine (direct across runs): req/s at 64 conns ${fmt(meta.direct_spread.rps_64[0], 0)}–${fmt(meta.direct_spread.rps_64[1], 0)}, latency p99 ${fmt(meta.direct_spread.latency_p99_ms[0], 3)}–${fmt(meta.direct_spread.latency_p99_ms[1], 3)} ms.\n`;
  md += `Node ${meta.versions.node}, nginx ${meta.versions.nginx ?? "–"} (${meta.nginx_workers} worker), Portkey gateway ${meta.versions.portkey ?? "–"}, Sluice ${meta.versions.sluice ?? "–"}, autocannon ${meta.versions.autocannon ?? "–"}.\n\n`;
  md += `| metric | ${names.map((n) => LABEL[n]).join(" | ")} |\n|---|${names.map(() => "---:").join("|")}|\n`;
  for (const [label, key, d] of rows) md += `| ${label} | ${names.map((n) => fmt(summary[n][key], d)).join(" | ")} |\n`;
  md += `\nThe direct column is the mock upstream without a proxy (its "RSS" is the mock's own). "Added" = the target's figure minus direct's measured by the same driver in the same window (requests or streams alternating between the two), then the median over runs. RSS is measured on a freshly started gateway.\n\n`;
  const x = (v) => (v === null ? "–" : `${v}×`);
  md += `Sluice/Portkey throughput (64 conns): ${x(ratios.sluice_over_portkey_rps_64)}\n\n`;
  md += `Sluice/nginx throughput (64 conns): ${x(ratios.sluice_over_nginx_rps_64)}\n\n`;
  md += `Sluice/Portkey sustained (20 ms upstream): ${x(ratios.sluice_over_portkey_rps_sustained)}; Sluice/nginx sustained: ${x(ratios.sluice_over_nginx_rps_sustained)}\n\n`;
  if (checks.length) {
    md += `## Targets\n\n`;
    for (const c of checks) md += `- ${c.pass === null ? "N/A " : c.pass ? "PASS" : "FAIL"}: ${c.name} (measured ${c.value === null ? "–" : `${c.value}${c.unit}`})\n`;
  }
  if (problems.length) md += `\n## Problems\n\n${problems.map((p) => `- ${p.replace(/\n/g, " ")}`).join("\n")}\n`;
  return md;
}

main()
  .then(() => cleanupAndExit(0))
  .catch((err) => {
    console.error(`bench: ${err.stack ?? err}`);
    void cleanupAndExit(1);
  });
