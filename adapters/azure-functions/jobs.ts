/**
 * The long-running async handoff on Azure Functions (CONTRACT §7): jobs on Blob storage, their
 * ids in a Storage Queue, run by a queue-triggered function.
 *
 *   HTTP function (`sluice`)        stores the job (record + request blobs) and enqueues its id
 *                                   (base64 JSON `{"id":"..."}`), answers 202.
 *   queue trigger (`sluice-jobs`)   the Functions host receives the message and invokes
 *                                   `onMessage`: the job runs through the pipeline of the config
 *                                   version in use (same scheduler, budgets, failover) and its
 *                                   result is written to the result blob. Returning normally lets
 *                                   the host delete the message; a throw leaves it for the host
 *                                   to retry (host.json `extensions.queues`).
 *   poison trigger (`sluice-jobs-poison`)  a job id the host gave up on (maxDequeueCount failed
 *                                   deliveries, or runs cut by functionTimeout): the job is
 *                                   recorded `failed` and its notification sent, instead of
 *                                   staying `queued`/`running` forever.
 *   timer (`sluice-jobs-sweep`)     every 5 minutes: results past `jobs.resultTtlMs` are deleted.
 *
 * The job resource (`/_gateway/jobs/{id}`, `/result`) is served by the HTTP function from the
 * same blobs, on whichever instance the poll lands.
 *
 * Connection settings. A trigger's `connection` is the NAME of an app setting, which the
 * Functions host (a separate process that reads the registration when the worker indexes the
 * app) resolves from its own configuration; setting process.env in the worker would not reach
 * it. So the store always uses a connection string that is the value of an app setting, and the
 * trigger names that setting:
 *
 *   1. `jobs.store` of type "azure" in the config: its `connectionString` (write
 *      `"${SLUICE_JOBS_STORAGE}"`), container and queue. The trigger names the app setting whose
 *      value is exactly that string: SLUICE_JOBS_STORAGE, else AzureWebJobsStorage, else any
 *      other setting (first by name). None: the app refuses to start, saying so.
 *   2. no `jobs.store`: the app setting SLUICE_JOBS_STORAGE when set, else AzureWebJobsStorage
 *      (the app's own storage account) when it holds a connection string; container and queue
 *      `sluice-jobs`. An identity-based AzureWebJobsStorage (`AzureWebJobsStorage__accountName`)
 *      has no connection string: jobs are off then (async requests are 501) unless
 *      SLUICE_JOBS_STORAGE is set.
 *   3. `jobs.store` of type "directory": refused at start (instances are ephemeral and many;
 *      each would see only its own jobs).
 *
 * Read once when the app starts: a reload that changes `jobs.store` needs a restart.
 */
import { hostname } from "node:os";
import type { InvocationContext, Timer } from "@azure/functions";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { JOB_ID, TERMINAL } from "../../src/jobs/port.ts";
import { JobService } from "../../src/jobs/service.ts";
import { DEFAULT_CONTAINER, DEFAULT_QUEUE, type AzureJobQueue, type AzureJobStore } from "../azure/job-store.ts";
import { openAzureJobs } from "../azure/jobs.ts";

/** The app setting for a storage account of the jobs' own. */
export const JOBS_STORAGE_SETTING = "SLUICE_JOBS_STORAGE";
/** The Function App's own storage account (the host requires it anyway). */
export const HOST_STORAGE_SETTING = "AzureWebJobsStorage";

/** Function names as registered with @azure/functions. */
export const JOBS_FUNCTION = "sluice-jobs";
export const POISON_FUNCTION = "sluice-jobs-poison";
export const SWEEP_FUNCTION = "sluice-jobs-sweep";
/** NCRONTAB (with seconds): every 5 minutes. Timer triggers run on one instance at a time. */
export const SWEEP_SCHEDULE = "0 */5 * * * *";

/** Storage Queue names: 3-63 characters. The host names a queue's poison queue `<queue>-poison`. */
const MAX_QUEUE_NAME = 63;
/** A job run gets at most this much of the worker's shutdown; the rest go back to the queue. */
const MAX_CLOSE_GRACE_MS = 5_000;

/** Where the jobs are: a connection string and the name of the app setting that holds it. */
export interface FunctionsJobsPlan {
  /** The app setting the triggers' `connection` names. */
  connectionSetting: string;
  connectionString: string;
  container: string;
  queue: string;
  /** Where the store came from, for the start-up log line. */
  origin: "jobs.store" | "app setting";
}

const nonEmpty = (v: string | undefined): v is string => typeof v === "string" && v.trim() !== "";

/** What a storage connection string looks like (account key, SAS, or the emulator's shorthand). */
function looksLikeConnectionString(v: string): boolean {
  return /(^|;)\s*(AccountName|BlobEndpoint|QueueEndpoint|SharedAccessSignature)\s*=/i.test(v) || /^\s*UseDevelopmentStorage\s*=\s*true/i.test(v);
}

/**
 * Decides the job store from the config and the app settings (see the module comment); undefined
 * when there is none (async requests are then 501). Throws, with what to change, for a store the
 * Functions adapter cannot use.
 */
export function planFunctionsJobs(config: SluiceConfig, env: Record<string, string | undefined>): FunctionsJobsPlan | undefined {
  const s = config.jobs.store;
  if (s?.type === "directory") {
    throw new Error(
      'sluice: jobs.store of type "directory" cannot be used on Azure Functions: instances are ephemeral and many, and each would see only its own jobs. ' +
        `Use { "type": "azure", "connectionString": "\${${JOBS_STORAGE_SETTING}}" }, or leave jobs.store out to keep jobs in the app's storage account (${HOST_STORAGE_SETTING}).`,
    );
  }
  if (s?.type === "azure") {
    const preferred = [JOBS_STORAGE_SETTING, HOST_STORAGE_SETTING];
    const others = Object.keys(env)
      .filter((k) => !preferred.includes(k))
      .sort();
    const setting = [...preferred, ...others].find((k) => env[k] === s.connectionString);
    if (!setting) {
      throw new Error(
        "sluice: jobs.store.connectionString must be the value of an app setting, because the Storage Queue trigger that runs jobs names its connection by app setting: " +
          `put the connection string in the app setting ${JOBS_STORAGE_SETTING} and write "connectionString": "\${${JOBS_STORAGE_SETTING}}" in the config.`,
      );
    }
    return { connectionSetting: setting, connectionString: s.connectionString, container: s.container, queue: s.queue, origin: "jobs.store" };
  }
  const own = env[JOBS_STORAGE_SETTING];
  if (nonEmpty(own)) return { connectionSetting: JOBS_STORAGE_SETTING, connectionString: own, container: DEFAULT_CONTAINER, queue: DEFAULT_QUEUE, origin: "app setting" };
  const host = env[HOST_STORAGE_SETTING];
  if (nonEmpty(host) && looksLikeConnectionString(host)) {
    return { connectionSetting: HOST_STORAGE_SETTING, connectionString: host, container: DEFAULT_CONTAINER, queue: DEFAULT_QUEUE, origin: "app setting" };
  }
  if (nonEmpty(host) || Object.keys(env).some((k) => k.startsWith(`${HOST_STORAGE_SETTING}__`))) {
    console.warn(`sluice: ${HOST_STORAGE_SETTING} holds no connection string (identity-based?): async jobs are off; set ${JOBS_STORAGE_SETTING} to a storage connection string to turn them on`);
  }
  return undefined;
}

/** The job id a queue message names: the host hands over the decoded JSON (`{"id":"..."}`), or a string, or bytes. */
export function jobIdOf(message: unknown): string | undefined {
  let value = message;
  if (value instanceof Uint8Array) value = Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("utf8");
  if (typeof value === "string") {
    const text = value.trim();
    if (JOB_ID.test(text)) return text;
    try {
      value = JSON.parse(text) as unknown;
    } catch {
      return undefined;
    }
  }
  const id = value && typeof value === "object" ? (value as { id?: unknown }).id : undefined;
  return typeof id === "string" && JOB_ID.test(id) ? id : undefined;
}

/** The Functions app's job service and its trigger handlers. */
export interface FunctionsJobs {
  plan: FunctionsJobsPlan;
  service: JobService;
  store: AzureJobStore;
  queue: AzureJobQueue;
  /** The poison queue's name, when it is a valid queue name (the poison trigger is registered then). */
  poisonQueue: string | undefined;
  /** The `sluice-jobs` queue trigger. */
  onMessage(message: unknown, context: InvocationContext): Promise<void>;
  /** The `sluice-jobs-poison` queue trigger. */
  onPoison(message: unknown, context: InvocationContext): Promise<void>;
  /** The `sluice-jobs-sweep` timer. */
  onSweep(timer: Timer, context: InvocationContext): Promise<void>;
  /** appTerminate: runs get min(graceMs, 5 s); those still running then go back to the queue. */
  close(graceMs: number): Promise<void>;
}

/** Opens the planned store (creating its container and queue when missing) and the one JobService of this worker. */
export async function openFunctionsJobs(plan: FunctionsJobsPlan, now: () => number = Date.now): Promise<FunctionsJobs> {
  let opened;
  try {
    opened = await openAzureJobs({ type: "azure", connectionString: plan.connectionString, container: plan.container, queue: plan.queue });
  } catch (err) {
    throw new Error(`sluice: the job store (container ${plan.container}, queue ${plan.queue}, app setting ${plan.connectionSetting}) could not be opened: ${(err as Error).message}`, { cause: err });
  }
  const { store, queue, notifyQueue } = opened;
  // A runner's name in job records: the instance (WEBSITE_INSTANCE_ID on Azure) and the worker process.
  const instance = `${(process.env.WEBSITE_INSTANCE_ID ?? hostname()).slice(0, 16)}:${process.pid}:${crypto.randomUUID().slice(0, 8)}`;
  // Only `enqueue` of the queue is used: the Functions host receives, renews and deletes messages.
  const service = new JobService({ store, queue, notifyQueue, now, instance });
  const poison = `${plan.queue}-poison`;
  const poisonQueue = poison.length <= MAX_QUEUE_NAME ? poison : undefined;
  if (!poisonQueue) console.warn(`sluice: queue name ${plan.queue} is too long for a poison queue (${poison}): jobs the host gives up on stay unfinished`);

  return {
    plan,
    service,
    store,
    queue,
    poisonQueue,

    async onMessage(message, context) {
      const id = jobIdOf(message);
      if (!id) {
        // Can never run: returning deletes it (a throw would only poison it).
        context.warn(`sluice: a message in queue ${plan.queue} names no job; dropped`);
        return;
      }
      // No `extend`: while this invocation runs, the host keeps the message invisible itself.
      const r = await service.deliver(id);
      // Not done (it runs elsewhere with a fresh heartbeat, or here already, or this worker is
      // stopping): see the id again after the delay the service asks for. The host deletes this
      // message when the invocation returns.
      if (!r.done) await queue.enqueue(id, r.retryInMs);
    },

    async onPoison(message, context) {
      const id = jobIdOf(message);
      if (!id) return;
      const record = await store.get(id);
      if (!record) return;
      if (!TERMINAL.has(record.status)) {
        const t = now();
        const lease = service.settings.leaseMs;
        if (record.runner !== null && record.heartbeatAt !== null && t - record.heartbeatAt < lease) {
          // A runner is still on it: back to the queue, to be looked at when its heartbeat would go stale.
          await queue.enqueue(id, lease - (t - record.heartbeatAt) + 100);
          return;
        }
        context.warn(`sluice: job ${id} was given up on by the queue trigger; recording it failed`);
        await store.update(id, {
          status: "failed",
          error: "the job could not be run: every delivery of it failed (see the Function's logs), or its runs did not finish within the Function's timeout",
          finishedAt: t,
          runner: null,
          heartbeatAt: null,
        });
      }
      // A finished job still to be notified is notified by its delivery.
      await service.deliver(id);
    },

    async onSweep(_timer, context) {
      const changed = await service.sweep();
      if (changed) context.log(`sluice: ${changed} finished job(s) past their retention swept`);
    },

    async close(graceMs) {
      await service.close(Math.max(0, Math.min(MAX_CLOSE_GRACE_MS, graceMs)));
    },
  };
}
