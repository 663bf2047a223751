import type { SluiceConfig } from "../../src/config/schema.ts";
import { ConfigError } from "../../src/config/load.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import { createRuntime, type GatewayRuntime } from "../../src/runtime.ts";
import { errorResponse } from "../../src/http/errors.ts";
import type { ConfigStatus } from "../../src/config/holder.ts";
import { JobService, type HandoffEvents, type JobPipeline, type JobSubmission } from "../../src/jobs/service.ts";
import type { ClientSignal } from "../../src/types.ts";
import { workersConfigProblems } from "./config-check.ts";
import { ConfigVersions, KV_PROFILES_KEY, KvReadError, type ConfigEnv } from "./config-source.ts";
import { delaySeconds, WorkersJobQueue, type JobQueueProducer } from "./job-queue.ts";
import { WorkersJobStore, type JobStateNamespace, type R2BucketLike } from "./job-store.ts";
import { keptAlive, STALLED_BODY_MS, type WorkerContext } from "./lifetime.ts";
import { DurableObjectRateLimiter, LIMITS_OBJECT, type LimiterNamespace } from "./limiter-client.ts";
import { DurableObjectScheduler, poolKey, type SchedulerNamespace } from "./scheduler-client.ts";
import { workerSinks } from "./sinks.ts";
import { fetchWithDemoSimulators } from "./demo-simulator.ts";
import { webUpstream } from "../../src/proxy/attempt.ts";

/** The Durable Object classes wrangler binds as SCHEDULER, LIMITER and JOB_STATE: exported from the entry module. */
export { SchedulerObject } from "./scheduler-object.ts";
export { LimiterObject } from "./limiter-object.ts";
export { JobStateObject } from "./job-state-object.ts";
export type { ConfigKv } from "./config-source.ts";

/**
 * The Worker's bindings: the config (SLUICE_CONFIG, SLUICE_CONFIG_KV, SLUICE_CONFIG_KV_TTL_MS; see
 * config-source.ts), which the SchedulerObject reads the same way, and the Durable Objects.
 */
export interface Env extends ConfigEnv {
  /** The SchedulerObject namespace: when bound, every isolate shares one queue per backend pool. */
  SCHEDULER?: SchedulerNamespace;
  /** The LimiterObject namespace: when bound, every isolate admits against one set of token and request budgets. */
  LIMITER?: LimiterNamespace;
  /** How long (ms) a response body may go untaken by the runtime before its client is presumed gone; default 20000 (see lifetime.ts). */
  SLUICE_CLIENT_STALL_MS?: string;
  /**
   * The async handoff (CONTRACT §7), on when all three are bound: the Queue job ids wait in
   * (this Worker is its consumer), the R2 bucket of requests and results, and the
   * JobStateObject namespace holding the job records.
   */
  JOBS?: JobQueueProducer;
  JOB_RESULTS?: R2BucketLike;
  JOB_STATE?: JobStateNamespace;
}

/** The bindings the async handoff needs, all of them. */
const JOB_BINDINGS = ["JOBS", "JOB_RESULTS", "JOB_STATE"] as const;

function stalledMs(env: Env): number {
  const n = Number(env.SLUICE_CLIENT_STALL_MS);
  return env.SLUICE_CLIENT_STALL_MS?.trim() && Number.isFinite(n) && n > 0 ? n : STALLED_BODY_MS;
}

/**
 * Per isolate: the gateway for the config documents as they are now (re-read from
 * SLUICE_CONFIG_KV at most every SLUICE_CONFIG_KV_TTL_MS), rebuilt only when they change. An
 * invalid new version is refused and logged once, and the gateway in use keeps serving; with
 * none in use yet, ConfigError is thrown.
 */
const versions = new ConfigVersions<Gateway, Env>(build);

function build(config: SluiceConfig, status: () => ConfigStatus, env: Env): Gateway {
  // What a Worker cannot do (jobs.store, a managed identity): refused naming the field.
  const problems = workersConfigProblems(config);
  if (problems.length) throw new ConfigError(problems);
  if (config.profilesSource) {
    console.error(`sluice: profilesSource is followed by the Node gateway; on Workers put that document in SLUICE_CONFIG_KV under the key "${KV_PROFILES_KEY}" (ignored here)`);
  }
  return createGateway({
    config,
    runtime: runtimeFor(config, env),
    usageSinks: workerSinks(config.metering.sinks, env),
    configStatus: status,
    // The global fetch, except for the demo's backends on *.sluice-simulator.invalid (demo-simulator.ts).
    upstream: webUpstream(fetchWithDemoSimulators),
  });
}

/**
 * What outlives config versions in this isolate: the queue (its own, or the pool's Durable
 * Object), the budgets, the metrics and the JWKS caches. One per queue: a config naming other
 * backends is another pool's object.
 */
const runtimes = new Map<string, GatewayRuntime>();

function runtimeFor(config: SluiceConfig, env: Env): GatewayRuntime {
  const ns = env.SCHEDULER;
  const key = ns ? poolKey(config) : "isolate";
  let runtime = runtimes.get(key);
  if (runtime) return runtime;
  const id = ns?.idFromName(key);
  const lns = env.LIMITER;
  const lid = lns?.idFromName(LIMITS_OBJECT);
  runtime = createRuntime({
    scheduler: ns ? new DurableObjectScheduler(() => ns.get(id as never), config.scheduling.queueFullRetryMs) : undefined,
    limiter: lns ? new DurableObjectRateLimiter(() => lns.get(lid as never)) : undefined,
    jobs: jobServiceFor(env),
  });
  runtimes.set(key, runtime);
  return runtime;
}

/**
 * The JobService on Workers: every request and every queue batch is an invocation of its own,
 * and an I/O object (a fetch, a stream) may only be touched by the invocation that made it. A
 * DELETE of a job that this isolate runs for another invocation (a consumer's batch, or the
 * request a job was handed off from) aborts the run's signal from the DELETE's invocation; the
 * pipeline's listeners (which abort the backend fetch, cancel the relay) must run in the run's
 * own. So the pipeline of each run listens to a signal of its own, made in the run's invocation,
 * which the job's signal aborts through a promise created there too: workerd runs a promise's
 * reactions in the invocation that created it, whichever resolves it.
 */
class WorkersJobService extends JobService {
  /** Runs of delivered jobs (the consumer's invocation). */
  override use(config: SluiceConfig, pipeline: JobPipeline): void {
    super.use(config, (request, run) => pipeline(request, { ...run, signal: inThisInvocation(run.signal) }));
  }

  /** Handoffs: the rest of the request's pipeline runs on in the request's invocation. */
  override raceHandoff(s: JobSubmission, waitMs: number, clientSignal: ClientSignal | undefined, answer: (signal: ClientSignal) => Promise<Response>, events: HandoffEvents): Promise<Response> {
    return super.raceHandoff(s, waitMs, clientSignal, (signal) => answer(inThisInvocation(signal)), events);
  }
}

/** A signal that follows `signal`, its listeners called in the invocation that makes it. */
function inThisInvocation(signal: ClientSignal): ClientSignal {
  const local = new AbortController();
  if (signal.aborted) {
    local.abort(signal.reason);
    return local.signal;
  }
  let fire!: () => void;
  void new Promise<void>((resolve) => (fire = resolve)).then(() => local.abort(signal.reason));
  signal.addEventListener("abort", () => fire());
  return local.signal;
}

/**
 * The isolate's one JobService, shared by every runtime and config version (each version hands
 * it its pipeline as it is built); undefined until the bindings were looked at, null when jobs
 * are off (none of the bindings, or only some: then an error names the missing ones).
 */
let jobService: JobService | null | undefined;

function jobServiceFor(env: Env): JobService | undefined {
  if (jobService !== undefined) return jobService ?? undefined;
  const missing = JOB_BINDINGS.filter((b) => !env[b]);
  if (missing.length === 0) {
    jobService = new WorkersJobService({
      store: new WorkersJobStore({ state: env.JOB_STATE!, bucket: env.JOB_RESULTS! }),
      queue: new WorkersJobQueue(env.JOBS!),
    });
    return jobService;
  }
  if (missing.length < JOB_BINDINGS.length) {
    console.error(
      `sluice: async jobs are off: the binding${missing.length > 1 ? "s" : ""} ${missing.join(", ")} ${missing.length > 1 ? "are" : "is"} missing; the handoff needs all of ${JOB_BINDINGS.join(", ")} (see wrangler.toml). Async requests are answered 501 meanwhile.`,
    );
  }
  jobService = null;
  return undefined;
}

/** The gateway for the config as it is now; ConfigError and KvReadError are logged and answered undefined. */
async function currentGateway(env: Env, what: string): Promise<Gateway | undefined> {
  try {
    return await versions.get(env);
  } catch (err) {
    if (!(err instanceof ConfigError) && !(err instanceof KvReadError)) throw err;
    console.error(`sluice: ${what}: ${err.message}`);
    return undefined;
  }
}

/** A message of the JOBS queue, as the consumer uses it (Message in @cloudflare/workers-types). */
export interface JobQueueMessage {
  readonly body: unknown;
  /** Deliveries of this message so far, this one included (1 the first time). */
  readonly attempts: number;
  ack(): void;
  retry(options?: { delaySeconds?: number }): void;
}

export interface JobMessageBatch {
  readonly queue: string;
  readonly messages: readonly JobQueueMessage[];
  retryAll(options?: { delaySeconds?: number }): void;
}

/**
 * A delivery the service wants to see again (its job runs here or elsewhere) is retried with
 * that delay; a retry counts towards the consumer's max_retries, past which Queues drops the
 * message. A job running elsewhere may want many looks (one per lease while it runs), so from
 * this many attempts on the message is replaced by a fresh one (sent, then acknowledged) instead.
 * Below the default max_retries (3), so it holds whatever wrangler.toml sets.
 */
const FRESH_MESSAGE_AFTER_ATTEMPTS = 3;
/** A delivery that failed (the store unreachable, no valid config) is tried again after this many seconds, doubled per attempt. */
const ERROR_RETRY_S = 5;
const MAX_ERROR_RETRY_S = 300;

const errorDelay = (attempts: number) => Math.min(MAX_ERROR_RETRY_S, ERROR_RETRY_S * 2 ** Math.max(0, Math.min(10, attempts - 1)));

function jobIdOf(body: unknown): string | undefined {
  const id = (body as { id?: unknown } | null)?.id;
  return typeof id === "string" ? id : undefined;
}

/** Runs one delivered job id through the service: ack when done, a retry (or a fresh message) when it is to be seen again. */
async function deliverOne(service: JobService, queue: WorkersJobQueue, msg: JobQueueMessage): Promise<void> {
  const id = jobIdOf(msg.body);
  if (id === undefined) {
    console.error(`sluice: a JOBS message without a job id was dropped: ${JSON.stringify(msg.body)?.slice(0, 200)}`);
    msg.ack();
    return;
  }
  let delivered;
  try {
    delivered = await service.deliver(id);
  } catch (err) {
    const delay = errorDelay(msg.attempts);
    console.error(`sluice: job ${id} could not be run (delivery ${msg.attempts}); tried again in ${delay} s:`, err);
    msg.retry({ delaySeconds: delay });
    return;
  }
  if (delivered.done) {
    msg.ack();
    return;
  }
  if (msg.attempts >= FRESH_MESSAGE_AFTER_ATTEMPTS) {
    try {
      await queue.enqueue(id, delivered.retryInMs);
      msg.ack();
      return;
    } catch (err) {
      console.error(`sluice: job ${id}: a fresh message could not be sent; retrying this one:`, err);
    }
  }
  msg.retry({ delaySeconds: Math.max(1, delaySeconds(delivered.retryInMs)) });
}

/** How often a handoff's invocation looks whether the isolate's job runs have ended. */
const HANDOFF_POLL_MS = 250;

/**
 * A `Prefer: respond-async, wait=N` request answered 202 was handed off: its job runs on in this
 * invocation (the backend request, the result's upload, the record's end), and workerd cancels
 * what an invocation still has under way once its response is done unless it is kept alive. The
 * service does not say which of its runs belong to which invocation, so the invocation is kept
 * alive until the isolate runs no job at all (a consumer's run in the same isolate keeps it too).
 *
 * The platform ends `waitUntil` work 30 s after the response: a handoff still running then is cut
 * and its heartbeat goes stale. The safety copy of its id (queued with the handoff, visible after
 * jobs.leaseMs) then has a consumer run it again, in this isolate too: JobService.deliver takes a
 * local run whose heartbeat has gone stale for a dead one.
 */
function keepHandoffAlive(request: Request, response: Response, service: JobService | undefined, ctx: WorkerContext): void {
  if (!service || response.status !== 202 || !response.headers.has("preference-applied")) return;
  if (!/\bwait\s*=/i.test(request.headers.get("prefer") ?? "")) return;
  ctx.waitUntil(
    (async () => {
      while (service.running > 0) await new Promise((r) => setTimeout(r, HANDOFF_POLL_MS));
    })(),
  );
}

/**
 * With SCHEDULER bound, the queue and the backends' state live in the pool's Durable Object,
 * shared by all isolates (the object reads the config as the Worker does); without it, in the
 * isolate (shared by the requests it serves). Likewise, with LIMITER bound the budgets of
 * `limits` live in one Durable Object; without it, each isolate keeps its own.
 *
 * Each request's invocation is kept alive until its exchange has settled (see lifetime.ts): a
 * client that leaves mid-stream still gets its lease released, its reservation settled and its
 * usage event sent.
 */
export default {
  fetch(request: Request, env: Env, ctx: WorkerContext): Promise<Response> {
    return keptAlive(request, ctx, async () => {
      let gateway: Gateway;
      try {
        gateway = await versions.get(env);
      } catch (err) {
        // The details (field names, unset variables) go to the log only, never to a caller.
        if (err instanceof ConfigError) {
          console.error(err.message);
          return errorResponse({ status: 503, code: "invalid_config", message: "the gateway has no valid configuration; its log names the problem" });
        }
        if (!(err instanceof KvReadError)) throw err;
        console.error(`sluice: ${err.message}`);
        return errorResponse({ status: 503, code: "config_unavailable", message: "the gateway could not read its configuration; its log says why" });
      }
      const response = await gateway.fetch(request, env, ctx as never);
      keepHandoffAlive(request, response, jobService ?? undefined, ctx);
      return response;
    }, stalledMs(env));
  },

  /**
   * The JOBS queue's consumer: each delivered job id runs through the pipeline of the config
   * version in use (same scheduler, budgets, failover), its result streamed to R2, its record
   * kept in JOB_STATE. The messages of a batch run side by side; each is acknowledged when its
   * job has ended, or retried when the service wants to see it again. The invocation lasts until
   * every job of the batch has ended (the platform caps a consumer invocation's wall time at
   * 15 min: a job still running then is delivered again and, its heartbeat gone stale, run again).
   */
  async queue(batch: JobMessageBatch, env: Env, ctx: WorkerContext): Promise<void> {
    const service = jobServiceFor(env);
    if (!service) {
      console.error(`sluice: a batch of ${batch.messages.length} job(s) from queue ${batch.queue} arrived, but async jobs are off (bindings ${JOB_BINDINGS.join(", ")} needed); retried in ${MAX_ERROR_RETRY_S} s`);
      batch.retryAll({ delaySeconds: MAX_ERROR_RETRY_S });
      return;
    }
    // The gateway of the config in use: building it hands the service its pipeline.
    if (!(await currentGateway(env, "job queue"))) {
      batch.retryAll({ delaySeconds: ERROR_RETRY_S * 6 });
      return;
    }
    const queue = new WorkersJobQueue(env.JOBS!);
    const all = Promise.all(batch.messages.map((msg) => deliverOne(service, queue, msg)));
    ctx.waitUntil(all);
    await all;
  },

  /** A cron trigger (wrangler.toml): results past jobs.resultTtlMs are deleted and their jobs say `expired`. */
  async scheduled(_controller: unknown, env: Env, ctx: WorkerContext): Promise<void> {
    const service = jobServiceFor(env);
    if (!service || !(await currentGateway(env, "job sweep"))) return;
    const swept = service.sweep().then(
      (n) => void (n && console.log(`sluice: ${n} finished job(s) past their retention expired or forgotten`)),
      (err: unknown) => console.error("sluice: sweeping expired jobs failed:", err),
    );
    ctx.waitUntil(swept);
    await swept;
  },
};
