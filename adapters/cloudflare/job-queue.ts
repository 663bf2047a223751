import type { JobQueue } from "../../src/jobs/port.ts";

/** The longest delivery delay Cloudflare Queues accepts on a send or a retry: 12 hours. */
export const MAX_DELAY_SECONDS = 43_200;

/** What a job's queue message carries. */
export interface JobMessage {
  id: string;
}

/** The part of a Cloudflare Queue producer binding (JOBS) the job queue uses. */
export interface JobQueueProducer {
  send(body: JobMessage, options?: { delaySeconds?: number; contentType?: "json" }): Promise<void>;
}

/** A delay in ms as Queues takes it: whole seconds, rounded up (never earlier than asked), at most 12 hours. */
export function delaySeconds(ms: number | undefined): number {
  if (ms === undefined || !Number.isFinite(ms) || ms <= 0) return 0;
  return Math.min(MAX_DELAY_SECONDS, Math.ceil(ms / 1000));
}

/**
 * The job queue on Workers: a Cloudflare Queue (binding JOBS) whose consumer is the gateway
 * Worker itself (its `queue` handler, worker.ts). The platform delivers the ids, so this side
 * only sends; a delivery not acknowledged comes back by itself (a retry, or the end of an
 * invocation that died), which is why Workers needs no `recover()`.
 *
 * A send is not retried here: it is not idempotent, and a failed one fails the submission (503),
 * which is what the service expects. A duplicate would be harmless anyway (a delivery of a job
 * that runs, or has ended, is recognised from its record).
 */
export class WorkersJobQueue implements JobQueue {
  constructor(private readonly producer: JobQueueProducer) {}

  async enqueue(id: string, delayMs?: number): Promise<void> {
    const delay = delaySeconds(delayMs);
    await this.producer.send({ id }, delay > 0 ? { contentType: "json", delaySeconds: delay } : { contentType: "json" });
  }
}
