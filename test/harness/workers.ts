import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import type { Readable } from "node:stream";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { GatewayUnderTest, StartGateway, StartGatewayWithEvents } from "./types.ts";
import { ConsoleEvents } from "./usage-events.ts";

const entry = fileURLToPath(new URL("../../adapters/cloudflare/worker.ts", import.meta.url));
let bundled: Promise<string> | undefined;

/** Bundles a Workers module as wrangler would (runtime modules such as cloudflare:workers left to workerd). */
export async function bundleForWorkers(options: { entry: string } | { source: string; resolveDir: string }): Promise<string> {
  const r = await build({
    ...("entry" in options ? { entryPoints: [options.entry] } : { stdin: { contents: options.source, resolveDir: options.resolveDir, loader: "ts" as const } }),
    bundle: true,
    format: "esm",
    platform: "neutral",
    mainFields: ["module", "main"],
    external: ["cloudflare:*"],
    write: false,
    logLevel: "error",
  });
  return r.outputFiles[0]!.text;
}

/** Bundles the Workers entry once per test process. */
export function bundleWorker(): Promise<string> {
  bundled ??= bundleForWorkers({ entry });
  return bundled;
}

export const COMPATIBILITY_DATE = "2026-04-01";
/** The compatibility flags wrangler.toml sets: request.signal aborts when the client goes away. */
export const COMPATIBILITY_FLAGS = ["enable_request_signal"];
/** The scheduler object as wrangler.toml binds it (SQLite-backed, as new_sqlite_classes declares). */
export const SCHEDULER_CLASS = { className: "SchedulerObject", useSQLite: true } as const;
/** The limiter object as wrangler.toml binds it (SQLite-backed, as new_sqlite_classes declares). */
export const LIMITER_CLASS = { className: "LimiterObject", useSQLite: true } as const;

/** The job state object as wrangler.toml binds it as JOB_STATE (SQLite-backed, migration v3). */
export const JOB_STATE_CLASS = { className: "JobStateObject", useSQLite: true } as const;
/** The job queue's name, as in wrangler.toml. */
export const JOBS_QUEUE = "sluice-jobs";
/**
 * How long the test consumer lets a batch fill (s): short, so a job starts promptly (wrangler.toml
 * says 1 s too). Miniflare dispatches one batch at a time per queue (a new one only once the
 * running one has returned, or when a full batch is waiting), so tests that queue several jobs
 * at once need them in one batch: the batch size is larger than wrangler.toml's.
 */
export const JOBS_BATCH_TIMEOUT_S = 1;
export const JOBS_BATCH_SIZE = 10;

/**
 * The async-handoff bindings wrangler.toml declares, for a miniflare worker: the JOBS queue
 * (producer, and this worker its consumer), the JOB_RESULTS bucket (in memory) and the
 * JOB_STATE object (add JOB_STATE_CLASS to the worker's durableObjects).
 */
export function jobOptions(consumer = true) {
  return {
    queueProducers: { JOBS: { queueName: JOBS_QUEUE } },
    ...(consumer ? { queueConsumers: { [JOBS_QUEUE]: { maxBatchSize: JOBS_BATCH_SIZE, maxBatchTimeout: JOBS_BATCH_TIMEOUT_S, maxRetries: 100 } } } : {}),
    r2Buckets: ["JOB_RESULTS"],
  };
}

/** The Worker's stderr (console.error): discarded, or shown with SLUICE_TEST_WORKER_STDERR=1 to debug a test. */
function showStderr(err: Readable): void {
  if (process.env.SLUICE_TEST_WORKER_STDERR) err.pipe(process.stderr);
  else err.resume();
}

/** The gateway under workerd via miniflare, on an ephemeral 127.0.0.1 port, with the Durable Object scheduler and limiter. */
export const startWorkersGateway: StartGateway = (input) =>
  // Usage events on the console would flood the test output; tests that read them name a sink.
  startMiniflareGateway({ metering: { sinks: [] }, ...input });

/** The gateway under workerd with a console usage sink, its events picked out of the Worker's stdout. */
export const startWorkersGatewayWithEvents: StartGatewayWithEvents = (input) => startWithEvents(input, false);

/**
 * The gateway under workerd with the async-handoff bindings of wrangler.toml (JOBS queue with
 * this worker as its consumer, JOB_RESULTS in R2, JOB_STATE), and a console usage sink.
 */
export const startWorkersJobsGatewayWithEvents: StartGatewayWithEvents = (input) => startWithEvents(input, true);

async function startWithEvents(input: SluiceConfigInput, jobs: boolean) {
  const events = new ConsoleEvents();
  const gw = await startMiniflareGateway(
    { ...input, metering: { sinks: [{ type: "console" }] } },
    (stdout) => {
      stdout.setEncoding("utf8");
      stdout.on("data", (d: string) => events.feed(d));
    },
    { jobs },
  );
  return { ...gw, events: () => events.events };
}

async function startMiniflareGateway(config: SluiceConfigInput, stdout?: (s: Readable) => void, options: { jobs?: boolean } = {}): Promise<GatewayUnderTest> {
  const contents = await bundleWorker();
  const mf = new Miniflare({
    modules: [{ type: "ESModule", path: "worker.js", contents }],
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: COMPATIBILITY_FLAGS,
    bindings: { SLUICE_CONFIG: JSON.stringify(config) },
    durableObjects: { SCHEDULER: SCHEDULER_CLASS, LIMITER: LIMITER_CLASS, ...(options.jobs ? { JOB_STATE: JOB_STATE_CLASS } : {}) },
    ...(options.jobs ? jobOptions() : {}),
    host: "127.0.0.1",
    port: 0,
    ...(stdout ? { handleRuntimeStdio: (out: Readable, err: Readable) => (stdout(out), showStderr(err)) } : {}),
  });
  const url = await mf.ready;
  return { url: url.origin, close: () => mf.dispose() };
}

/**
 * One of several Worker scripts sharing Durable Objects: `objectsIn` names the script that
 * defines them (undefined: this one). Each script is its own isolate with its own gateway.
 */
export function gatewayScript(contents: string, name: string, objectsIn: string | undefined, extra: { bindings?: Record<string, string>; kvNamespaces?: string[]; limiter?: boolean } = {}) {
  const bound = (cls: typeof SCHEDULER_CLASS | typeof LIMITER_CLASS) => (objectsIn ? { ...cls, scriptName: objectsIn } : cls);
  return {
    name,
    modules: [{ type: "ESModule" as const, path: `${name}.js`, contents }],
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: COMPATIBILITY_FLAGS,
    ...(extra.kvNamespaces ? { kvNamespaces: extra.kvNamespaces } : {}),
    bindings: extra.bindings ?? {},
    durableObjects: { SCHEDULER: bound(SCHEDULER_CLASS), ...(extra.limiter ? { LIMITER: bound(LIMITER_CLASS) } : {}) },
  };
}
