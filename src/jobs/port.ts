/**
 * The long-running async handoff's ports (CONTRACT §7): where a job's record, request and
 * result are kept (`JobStore`), and how its id reaches a runner (`JobQueue`). Every adapter
 * implements both (Node: a local directory, or Azure Blob + Storage Queue; Azure Functions: Blob
 * + the Storage Queue trigger; Workers: a Durable Object + R2 + Queues), and one conformance
 * suite (test/jobs/job-store-suite.ts) runs against each.
 *
 * Delivery is at least once: a runner that dies mid-job leaves the job `running` with a
 * heartbeat that goes stale, and the next runner to see its id runs it again.
 */

/** What a job id may be (the service makes UUIDs): every store refuses anything else, so an id can never name a path. */
export const JOB_ID = /^[A-Za-z0-9-]{1,64}$/;

export type JobStatus = "queued" | "running" | "succeeded" | "failed" | "expired" | "cancelled";

export const TERMINAL: ReadonlySet<JobStatus> = new Set(["succeeded", "failed", "expired", "cancelled"]);

/**
 * The status a record takes when an update asks for `wanted`: a job that has ended keeps its
 * end (a late runner cannot undo a cancel), except that a finished result may expire. Every
 * store applies this inside its update.
 */
export function nextStatus(current: JobStatus, wanted: JobStatus | undefined): JobStatus {
  if (wanted === undefined || wanted === current) return current;
  if (!TERMINAL.has(current)) return wanted;
  return wanted === "expired" && (current === "succeeded" || current === "failed") ? "expired" : current;
}

/** Who created the job, as the gateway verified it: only this caller may read or cancel it. */
export interface JobOwner {
  caller: string;
  app: string | null;
  groups: string[];
  profileName: string | null;
}

/** Tokens the job used, as metered (the usage event's fields). */
export interface JobUsage {
  promptTokens: number | null;
  completionTokens: number | null;
  totalTokens: number | null;
  source: string | null;
}

/** A job's state: small JSON, read on every poll. */
export interface JobRecord {
  id: string;
  /** The request id of the exchange that runs it (its usage event's). */
  requestId: string;
  owner: JobOwner;
  status: JobStatus;
  priority: number;
  /** Epoch ms. */
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  /** The job must have started by then (its TTL); queued past it, it fails with 412. */
  deadline: number;
  /** Times a runner started it (more than 1 after a runner died mid-job). */
  runs: number;
  /** Backend attempts of the last run. */
  attempts: number;
  backend: string | null;
  model: string | null;
  usage: JobUsage | null;
  /** The stored response's status, once there is one. */
  resultStatus: number | null;
  /** Why the job failed (or was cancelled) when the gateway, not a backend, decided it. */
  error: string | null;
  /** The runner instance that runs it, and when it last said so (epoch ms). */
  runner: string | null;
  heartbeatAt: number | null;
  /** DELETE asked for it while it ran: the runner that holds it stops and records `cancelled`. */
  cancelRequested: boolean;
  /** The completion notification was delivered (or there is none to deliver). */
  notified: boolean;
}

/** The request to run, as the gateway accepted it (credentials and hop-by-hop headers removed). */
export interface JobRequest {
  method: string;
  /** Path and query, as the pipeline saw them. */
  target: string;
  headers: [string, string][];
  body: Uint8Array | null;
}

/** A stored response head. */
export interface JobResultHead {
  status: number;
  headers: [string, string][];
}

export interface JobResult extends JobResultHead {
  body: ReadableStream<Uint8Array>;
}

export interface JobStore {
  /** Stores a new job's record and request (before its id is queued). */
  create(record: JobRecord, request: JobRequest): Promise<void>;
  get(id: string): Promise<JobRecord | undefined>;
  request(id: string): Promise<JobRequest | undefined>;
  /**
   * Merges `patch` into the record and returns the result; undefined when there is no such job.
   * The status becomes `nextStatus(current, patch.status)`: a record in a terminal state keeps
   * it (so a late runner cannot undo a cancel), except succeeded/failed → expired.
   */
  update(id: string, patch: Partial<Omit<JobRecord, "id">>): Promise<JobRecord | undefined>;
  /**
   * Stores the response, its body streamed as it arrives (never held whole). Resolves once the
   * whole body is stored; rejects when the store or the body fails.
   */
  putResult(id: string, head: JobResultHead, body: ReadableStream<Uint8Array> | null): Promise<void>;
  result(id: string): Promise<JobResult | undefined>;
  /** Deletes the job's request and result; the record stays (as a tombstone) until `forget`. */
  dropPayload(id: string): Promise<void>;
  /** Deletes everything of the job. */
  forget(id: string): Promise<void>;
  /**
   * Ids of jobs whose record says `queued` or `running`, and of finished jobs still to be
   * notified: what a restart of a single-process store must pick up (a queue that redelivers by
   * itself, like Storage Queue or Workers Queues, does not need it, but every store answers it).
   */
  unfinished(): Promise<string[]>;
  /** Ids of jobs finished before `before` (epoch ms): results past their retention. */
  finishedBefore(before: number): Promise<string[]>;
}

/** A job id taken from the queue, invisible to other runners until it is completed or its lease ends. */
export interface JobDelivery {
  id: string;
  /** Times this id was delivered (1 the first time). */
  dequeueCount: number;
  /** Keeps it invisible for `ms` more (a long job renews this while it runs). */
  extend(ms: number): Promise<void>;
  /** Done with it: the queue forgets it. */
  complete(): Promise<void>;
}

/** Where job ids wait for a runner. On Azure Functions and Workers the platform delivers them (a queue trigger, a Queues consumer); on Node the gateway pulls them (`PulledJobQueue`). */
export interface JobQueue {
  /** Queues a job id; with `delayMs`, invisible until then. */
  enqueue(id: string, delayMs?: number): Promise<void>;
}

export interface PulledJobQueue extends JobQueue {
  /**
   * Takes up to `max` ids, each invisible to other runners for `leaseMs` (a queue may round
   * leases and delays up: Azure Storage Queue to whole seconds). Resolves [] at once when there
   * is none. After a lease was lost, `extend` rejects and `complete` resolves.
   */
  receive(max: number, leaseMs: number): Promise<JobDelivery[]>;
}
