import type { SluiceConfig } from "../../src/config/schema.ts";
import type { JobStore, PulledJobQueue } from "../../src/jobs/port.ts";
import { JobPuller } from "../../src/jobs/pull.ts";
import { JobService, type QueueNotifier } from "../../src/jobs/service.ts";
import { DirectoryJobStore } from "./job-directory.ts";

/** The Node gateway's async handoff: its store, the service, and the runner pulling from the queue. */
export interface NodeJobs {
  service: JobService;
  /** Starts pulling (after the first config version is in use). */
  start(): Promise<void>;
  /** Stops pulling; runs get `graceMs`, the rest go back to the queue. */
  close(graceMs: number): Promise<void>;
}

/** Polls of an empty shared queue (another replica may have queued a job); a local enqueue wakes the runner at once. */
const POLL_MS = 1000;

/** Where the `sluice` command keeps jobs when the config names no store. */
export const DEFAULT_JOBS_DIRECTORY = ".sluice/jobs";

async function openStore(config: SluiceConfig, defaultDirectory: string | undefined): Promise<{ store: JobStore; queue: PulledJobQueue; notifyQueue?: QueueNotifier; shared: boolean } | undefined> {
  const s = config.jobs.store ?? (defaultDirectory !== undefined ? { type: "directory" as const, path: defaultDirectory } : undefined);
  if (!s) return undefined;
  if (s.type === "directory") {
    const dir = await DirectoryJobStore.open(s.path);
    return { store: dir, queue: dir, shared: false };
  }
  const { openAzureJobs } = await import("../azure/jobs.ts");
  return { ...(await openAzureJobs(s)), shared: true };
}

/**
 * Opens the configured job store, else a directory store at `defaultDirectory` (the `sluice`
 * command: `.sluice/jobs`); with neither, none (async requests are 501). Read once at start,
 * like the listeners: a reload that changes `jobs.store` needs a restart.
 */
export async function openNodeJobs(config: SluiceConfig, defaultDirectory?: string): Promise<NodeJobs | undefined> {
  const opened = await openStore(config, defaultDirectory);
  if (!opened) return undefined;
  const { store, queue, notifyQueue, shared } = opened;
  let puller: JobPuller | undefined;
  const service = new JobService({ store, queue, notifyQueue, enqueued: () => puller?.wake() });
  return {
    service,
    async start() {
      // A single process owns a directory: what it left queued or running is picked up now.
      // A shared queue redelivers by itself (when a dead replica's lease ends); only the
      // notifications still owed are looked for.
      const recovered = shared ? 0 : await service.recover();
      if (recovered) console.log(`sluice: ${recovered} unfinished job(s) from before the restart queued again`);
      const jobs = service.settings;
      puller = new JobPuller(service, queue, { concurrency: jobs.concurrency, pollMs: POLL_MS, sweepMs: Math.min(60_000, Math.max(1000, jobs.resultTtlMs / 10)) });
      puller.start();
    },
    async close(graceMs) {
      puller?.stop();
      await service.close(graceMs);
    },
  };
}
