import type { JobsConfig, ProfileConfig, SluiceConfig } from "../config/schema.ts";
import type { Identity } from "../governance/identity.ts";
import { errorResponse } from "../http/errors.ts";
import { upstreamRequestHeaders } from "../http/headers.ts";
import type { UsageEvent } from "../metering/events.ts";
import { later, type Timer } from "../timers.ts";
import type { BodyBytes, ClientSignal } from "../types.ts";
import { deliverWebhook } from "./notify.ts";
import { JOB_ID, TERMINAL, type JobOwner, type JobQueue, type JobRecord, type JobRequest, type JobStatus, type JobStore } from "./port.ts";

/** Where the job resource lives, under the gateway's prefix. */
export const JOBS_PATH = "/_gateway/jobs";
/** Headers of the client's request that ask for the handoff: the job's run must not ask again. */
const ASYNC_HEADERS: ReadonlySet<string> = new Set(["prefer", "s7pasyncmode"]);
/** Polls are asked to come back after this long while a job is not done. */
const POLL_AFTER_S = 2;

/** What the pipeline is given to run a job's request: who it is for, its cancel signal, its deadline. */
export interface JobRun {
  jobId: string;
  identity: Identity;
  signal: ClientSignal;
  deadline: number;
  /** The run's usage event, as the exchange settles. */
  settled(event: UsageEvent): void;
  /** The run was granted its first backend: the job is `running`. */
  started(): void;
}

/** What the pipeline tells a handoff about the exchange it hands over. */
export interface HandoffEvents {
  /** The exchange's usage event, when it settles. */
  settled: Promise<UsageEvent>;
  /** The exchange is (or, when the store fails, is no longer) a job's. */
  handedOff(yes: boolean): void;
  /** True when a backend was already granted; else `then` runs when one is. */
  started(then: () => void): boolean;
}

/** The pipeline of the config version in use: a stored request in, the answer out. */
export type JobPipeline = (request: Request, run: JobRun) => Promise<Response>;

/** How a delivered job id was dealt with: done (the queue may forget it), or to be seen again later. */
export type Delivered = { done: true } | { done: false; retryInMs: number };

/** Sends a final status to a named queue (Azure Storage Queue notifications). */
export type QueueNotifier = (queue: string, message: string) => Promise<void>;

export interface JobServiceOptions {
  store: JobStore;
  queue: JobQueue;
  now?: () => number;
  /** This runner's name in job records (a replica's, a process's). */
  instance?: string;
  /** For webhooks: the global fetch by default. */
  fetch?: typeof fetch;
  notifyQueue?: QueueNotifier;
  /** Called after a job was queued (the Node pull loop wakes at once instead of at its next poll). */
  enqueued?: () => void;
}

/** The job's input, as the pipeline accepted it at submission. */
export interface JobSubmission {
  identity: Identity;
  request: Request;
  url: URL;
  body: BodyBytes | null;
  requestId: string;
  priority: number;
  model: string | null;
  deadline: number;
}

/** A signal a job's run listens to: the DELETE of the job (or, before a handoff, the client leaving). */
class JobSignal implements ClientSignal {
  aborted = false;
  reason: unknown = undefined;
  private readonly listeners = new Set<() => void>();

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    // Every listener hears it, whatever one of them throws (a runtime may refuse I/O from another request's context).
    for (const l of [...this.listeners]) {
      try {
        l();
      } catch (err) {
        console.error("sluice: a job's cancel listener failed:", err);
      }
    }
    this.listeners.clear();
  }

  addEventListener(_type: "abort", listener: () => void): void {
    if (this.aborted) queueMicrotask(listener);
    else this.listeners.add(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    this.listeners.delete(listener);
  }
}

/** A job run by this process right now. */
interface LocalRun {
  signal: JobSignal;
  /** Before a handoff: the client can still leave and cancel it. */
  handedOff: boolean;
  /** Why its signal was aborted: its caller cancelled it, or the process is stopping (it goes back to the queue). */
  stop?: "cancel" | "shutdown";
}

const json = (body: unknown, status: number, headers?: Record<string, string>) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

/**
 * The long-running async handoff (CONTRACT §7), on any JobStore and JobQueue: submission (a
 * 202 and a queued job), the handoff of a request that did not answer within its `wait`, the
 * run of a delivered job through the pipeline in use (same scheduler, priorities, budgets,
 * failover) into the store, the job resource, cancellation, retention and notification.
 *
 * One per process (or isolate): it outlives config versions; each version hands it its
 * pipeline and settings (`use`).
 */
export class JobService {
  private readonly store: JobStore;
  private readonly queue: JobQueue;
  private readonly now: () => number;
  readonly instance: string;
  private pipeline: JobPipeline | undefined;
  private config: JobsConfig | undefined;
  private profiles: Record<string, ProfileConfig> = {};
  private readonly local = new Map<string, LocalRun>();
  /** Runs and notifications under way (a shutdown waits for them, then puts the runs back). */
  private readonly pending = new Set<Promise<unknown>>();
  private stopping = false;

  constructor(private readonly options: JobServiceOptions) {
    this.store = options.store;
    this.queue = options.queue;
    this.now = options.now ?? Date.now;
    this.instance = options.instance ?? crypto.randomUUID();
  }

  /** A config version's pipeline and settings: jobs run on the version in use when they start. */
  use(config: SluiceConfig, pipeline: JobPipeline): void {
    if (!this.options.notifyQueue) {
      for (const [name, p] of Object.entries(config.profiles)) {
        if (p.notify?.queue) console.error(`sluice: profiles.${name}.notify.queue needs an Azure job store (jobs.store type "azure", or Azure Functions); this job store cannot send it, so only the webhook (if any) is notified`);
      }
    }
    this.config = config.jobs;
    this.profiles = config.profiles;
    this.pipeline = pipeline;
  }

  get settings(): JobsConfig {
    if (!this.config) throw new Error("sluice: the job service has no config version yet");
    return this.config;
  }

  /** Jobs this process is running now. */
  get running(): number {
    return this.local.size;
  }

  /** A new job's record; `local`: it runs here already (a handoff), `running` once a backend was granted. */
  private newRecord(s: JobSubmission, status: JobStatus, local = status === "running"): JobRecord {
    const { caller, app, groups, profileName } = s.identity;
    const t = this.now();
    return {
      id: crypto.randomUUID(),
      requestId: s.requestId,
      owner: { caller, app, groups, profileName },
      status,
      priority: s.priority,
      createdAt: t,
      startedAt: status === "running" ? t : null,
      finishedAt: null,
      deadline: s.deadline,
      runs: local ? 1 : 0,
      attempts: 0,
      backend: null,
      model: s.model,
      usage: null,
      resultStatus: null,
      error: null,
      runner: local ? this.instance : null,
      heartbeatAt: local ? t : null,
      cancelRequested: false,
      notified: false,
    };
  }

  private storedRequest(s: JobSubmission): JobRequest {
    return { method: s.request.method, target: s.url.pathname + s.url.search, headers: upstreamRequestHeaders(s.request.headers, ASYNC_HEADERS), body: s.body };
  }

  /** 202 for a new job: where to poll it, and the preference applied. */
  private accepted(record: JobRecord, requestUrl: string): Response {
    const path = `${JOBS_PATH}/${record.id}`;
    return json(this.view(record), 202, {
      location: path,
      "operation-location": new URL(path, requestUrl).href,
      "preference-applied": "respond-async",
      "retry-after": String(POLL_AFTER_S),
      "x-request-id": record.requestId,
    });
  }

  /** Stores and queues a job for the request; 202, or 503 when the store cannot take it (nothing is left behind). */
  async submit(s: JobSubmission): Promise<Response> {
    const record = this.newRecord(s, "queued");
    try {
      await this.store.create(record, this.storedRequest(s));
    } catch (err) {
      console.error(`sluice: job store refused a new job (request ${s.requestId}):`, err);
      return errorResponse({ status: 503, code: "job_store_unavailable", message: "the gateway could not store the job; retry later", headers: { "retry-after": "5", "x-request-id": s.requestId } });
    }
    try {
      await this.queue.enqueue(record.id);
    } catch (err) {
      console.error(`sluice: job ${record.id} could not be queued:`, err);
      await this.store.update(record.id, { status: "failed", error: "the job could not be queued", finishedAt: this.now(), notified: true }).catch(() => undefined);
      return errorResponse({ status: 503, code: "job_queue_unavailable", message: "the gateway could not queue the job; retry later", headers: { "retry-after": "5", "x-request-id": s.requestId } });
    }
    this.options.enqueued?.();
    return this.accepted(record, s.request.url);
  }

  /**
   * `Prefer: respond-async, wait=N`: the request runs now, here, with a signal that follows the
   * client until the handoff; `answer` is the rest of its pipeline. An answer within `waitMs`
   * goes to the client as usual; past it the client gets a 202 and the answer goes to the store.
   * A queued safety copy of the id (invisible for a lease) lets another runner take it over if
   * this process dies.
   */
  async raceHandoff(s: JobSubmission, waitMs: number, clientSignal: ClientSignal | undefined, answer: (signal: ClientSignal) => Promise<Response>, events: HandoffEvents): Promise<Response> {
    const run: LocalRun = { signal: new JobSignal(), handedOff: false };
    const onClientGone = () => {
      if (!run.handedOff) run.signal.abort(clientSignal?.reason);
    };
    clientSignal?.addEventListener("abort", onClientGone);
    if (clientSignal?.aborted) onClientGone();
    let answered = false;
    const pending = answer(run.signal).finally(() => {
      answered = true;
      clientSignal?.removeEventListener("abort", onClientGone);
    });
    let timer: Timer | undefined;
    const waited = await Promise.race([pending.then(() => false), new Promise<boolean>((resolve) => (timer = later(() => resolve(true), waitMs)))]);
    timer?.clear();
    if (!waited || answered) return pending;
    run.handedOff = true;
    events.handedOff(true);
    let record!: JobRecord;
    const leased = events.started(() => this.track(this.markRunning(record.id)));
    record = this.newRecord(s, leased ? "running" : "queued", true);
    try {
      await this.store.create(record, this.storedRequest(s));
      await this.queue.enqueue(record.id, this.settings.leaseMs);
    } catch (err) {
      // No store to hand off to: the client keeps waiting for the synchronous answer.
      console.error(`sluice: job handoff of request ${s.requestId} failed; answering synchronously:`, err);
      run.handedOff = false;
      events.handedOff(false);
      return pending;
    }
    clientSignal?.removeEventListener("abort", onClientGone);
    this.track(this.runLocally(record, run, pending, events.settled));
    return this.accepted(record, s.request.url);
  }

  private track(p: Promise<unknown>): void {
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  /**
   * A job id from the queue: run it, unless it is done, already running here, or running on a
   * runner whose heartbeat is fresh (then: see it again when that heartbeat would go stale).
   */
  async deliver(id: string, extend?: (ms: number) => Promise<void>): Promise<Delivered> {
    if (!JOB_ID.test(id)) return { done: true };
    const lease = this.settings.leaseMs;
    if (this.stopping) return { done: false, retryInMs: 1000 };
    const record = await this.store.get(id);
    if (!record) return { done: true };
    if (TERMINAL.has(record.status)) {
      if (!record.notified) await this.notify(record);
      return { done: true };
    }
    const mine = this.local.get(id);
    if (mine) {
      // Running here, and saying so: see it again later. A run here whose heartbeat went stale
      // was cut by the platform (a Workers invocation's end): forget it and run the job again.
      if (record.heartbeatAt !== null && this.now() - record.heartbeatAt < lease) return { done: false, retryInMs: lease };
      this.local.delete(id);
    }
    const t = this.now();
    if (record.runner !== null && record.runner !== this.instance && record.heartbeatAt !== null && t - record.heartbeatAt < lease) {
      return { done: false, retryInMs: lease - (t - record.heartbeatAt) + 100 };
    }
    const request = await this.store.request(id);
    if (!request) {
      await this.finish(id, { status: "failed", error: "the job's request is missing from the store" });
      return { done: true };
    }
    const claimed = await this.store.update(id, { runner: this.instance, heartbeatAt: t, runs: record.runs + 1 });
    if (!claimed || TERMINAL.has(claimed.status)) return { done: true };
    const pipeline = this.pipeline;
    if (!pipeline) throw new Error("sluice: the job service has no pipeline yet");
    const run: LocalRun = { signal: new JobSignal(), handedOff: true };
    let settled!: (e: UsageEvent) => void;
    const event = new Promise<UsageEvent>((resolve) => (settled = resolve));
    const identity: Identity = { ...claimed.owner, profile: claimed.owner.profileName !== null ? this.profiles[claimed.owner.profileName] : undefined };
    const started = () => this.track(this.markRunning(id));
    const answer = pipeline(toRequest(claimed, request), { jobId: id, identity, signal: run.signal, deadline: claimed.deadline, settled, started });
    const done = this.runLocally(claimed, run, answer, event, extend);
    this.track(done);
    await done;
    // Stopped by a shutdown: the id stays queued for the next runner.
    return run.stop === "shutdown" ? { done: false, retryInMs: 0 } : { done: true };
  }

  /** Runs a job here until its answer is stored: heartbeats (and queue lease renewals) while it runs; a cancel seen in the record stops it. */
  private async runLocally(record: JobRecord, run: LocalRun, answer: Promise<Response>, event: Promise<UsageEvent>, extend?: (ms: number) => Promise<void>): Promise<void> {
    const id = record.id;
    const lease = this.settings.leaseMs;
    this.local.set(id, run);
    let beat: Timer | undefined;
    const heartbeat = () => {
      beat = later(() => {
        void (async () => {
          try {
            const r = await this.store.update(id, { heartbeatAt: this.now(), runner: this.instance });
            if (!r || TERMINAL.has(r.status)) this.cancelRun(run);
            await extend?.(lease);
          } catch (err) {
            console.error(`sluice: job ${id}: heartbeat failed:`, err);
          }
          if (this.local.get(id) === run) heartbeat();
        })();
      }, lease / 3);
    };
    heartbeat();
    try {
      let response: Response;
      try {
        response = await answer;
      } catch (err) {
        await this.finish(id, { status: "failed", error: `the gateway failed to run the job: ${(err as Error).message}` });
        return;
      }
      if (run.signal.aborted) {
        await response.body?.cancel().catch(() => undefined);
        await this.stopped(id, run);
        return;
      }
      try {
        await this.store.putResult(id, { status: response.status, headers: [...response.headers] }, cancellable(response.body, run.signal));
      } catch (err) {
        if (run.signal.aborted) await this.stopped(id, run);
        else await this.finish(id, { status: "failed", error: `the result could not be stored: ${(err as Error).message}` });
        return;
      }
      const e = await event;
      await this.finish(id, {
        status: response.status < 400 ? "succeeded" : "failed",
        resultStatus: response.status,
        attempts: e.attempts,
        backend: e.backend,
        model: e.model ?? record.model,
        usage: { promptTokens: e.promptTokens, completionTokens: e.completionTokens, totalTokens: e.totalTokens, source: e.usageSource },
      });
    } finally {
      beat?.clear();
      if (this.local.get(id) === run) this.local.delete(id);
    }
  }

  private cancelRun(run: LocalRun): void {
    run.stop ??= "cancel";
    run.signal.abort(new Error("the job was cancelled"));
  }

  /** A run that was stopped: cancelled, or (the process stopping) left for close() to queue again. */
  private async stopped(id: string, run: LocalRun): Promise<void> {
    if (run.stop !== "shutdown") await this.finish(id, { status: "cancelled", error: "cancelled by its caller" });
  }

  /** The job was granted a backend. */
  private async markRunning(id: string): Promise<void> {
    const t = this.now();
    await this.store.update(id, { status: "running", startedAt: t }).catch((err) => console.error(`sluice: job ${id}: could not record it running:`, err));
  }

  /** Records a job's end (a terminal record keeps its status: a cancel or expiry wins) and sends its notification. */
  private async finish(id: string, patch: Partial<JobRecord>): Promise<void> {
    let record: JobRecord | undefined;
    try {
      record = await this.store.update(id, { ...patch, finishedAt: this.now(), runner: null, heartbeatAt: null });
    } catch (err) {
      // The record still says running: its heartbeat goes stale and the job runs again.
      console.error(`sluice: job ${id}: its end (${patch.status}) could not be recorded:`, err);
      return;
    }
    if (record) await this.notify(record);
  }

  /** The completion notification, if the owner's profile asks for one: a signed webhook, a queue message. */
  private async notify(record: JobRecord): Promise<void> {
    if (record.notified) return;
    const profile = record.owner.profileName !== null ? this.profiles[record.owner.profileName] : undefined;
    const body = JSON.stringify({ type: "job.finished", job: this.view(record) });
    let delivered = true;
    const hook = profile?.notify?.webhook;
    if (hook) delivered = await deliverWebhook(hook, { id: record.id, body }, this.options.fetch);
    const queue = profile?.notify?.queue;
    if (queue && this.options.notifyQueue) {
      try {
        await this.options.notifyQueue(queue, body);
      } catch (err) {
        console.error(`sluice: job ${record.id}: notification to queue ${queue} failed:`, err);
        delivered = false;
      }
    }
    // Undelivered stays unnotified: a restart tries again (unfinished() lists it).
    if (delivered) await this.store.update(record.id, { notified: true }).catch(() => undefined);
  }

  /** The job as its owner sees it. */
  view(r: JobRecord): Record<string, unknown> {
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    const retention = this.config?.resultTtlMs;
    return {
      id: r.id,
      object: "sluice.job",
      status: r.status,
      requestId: r.requestId,
      createdAt: iso(r.createdAt),
      startedAt: iso(r.startedAt),
      finishedAt: iso(r.finishedAt),
      expiresAt: r.finishedAt !== null && retention !== undefined && r.status !== "expired" ? iso(r.finishedAt + retention) : null,
      runs: r.runs,
      attempts: r.attempts,
      priority: r.priority,
      backend: r.backend,
      model: r.model,
      usage: r.usage,
      resultStatus: r.resultStatus,
      error: r.error,
      result: `${JOBS_PATH}/${r.id}/result`,
    };
  }

  /** The job, if `identity` owns it and it exists; a result past its retention is expired on the way. */
  private async owned(id: string, identity: Identity): Promise<JobRecord | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const r = await this.store.get(id);
    if (!r || r.owner.caller !== identity.caller) return undefined;
    if (r.finishedAt !== null && r.status !== "expired" && r.status !== "cancelled" && this.now() - r.finishedAt >= this.settings.resultTtlMs) return this.expire(r);
    return r;
  }

  private async expire(r: JobRecord): Promise<JobRecord> {
    const expired = (await this.store.update(r.id, { status: "expired" })) ?? r;
    await this.store.dropPayload(r.id);
    return expired;
  }

  /** GET /_gateway/jobs/{id} */
  async status(id: string, identity: Identity): Promise<Response> {
    const r = await this.owned(id, identity);
    if (!r) return notFound();
    return json(this.view(r), 200, TERMINAL.has(r.status) ? {} : { "retry-after": String(POLL_AFTER_S) });
  }

  /** GET /_gateway/jobs/{id}/result: the stored answer as the backend gave it; 202 while the job is not done. */
  async result(id: string, identity: Identity): Promise<Response> {
    const r = await this.owned(id, identity);
    if (!r) return notFound();
    const state = { "x-sluice-job-status": r.status };
    if (!TERMINAL.has(r.status)) return json(this.view(r), 202, { ...state, "retry-after": String(POLL_AFTER_S) });
    if (r.status === "expired") return errorResponse({ status: 410, code: "job_expired", message: "the job's result was kept for its retention time and is gone", headers: state });
    if (r.status === "cancelled") return errorResponse({ status: 410, code: "job_cancelled", message: "the job was cancelled; it has no result", headers: state });
    const stored = r.resultStatus !== null ? await this.store.result(id) : undefined;
    if (!stored) return errorResponse({ status: 500, code: "job_failed", message: r.error ?? "the job failed without a result", headers: state });
    const headers = new Headers(stored.headers);
    headers.set("x-sluice-job-status", r.status);
    return new Response(stored.status === 204 || stored.status === 304 ? null : stored.body, { status: stored.status, headers });
  }

  /** DELETE /_gateway/jobs/{id}: a queued job will not run; a running one's backend request is cancelled (here at once, elsewhere at its next heartbeat). */
  async cancel(id: string, identity: Identity): Promise<Response> {
    const r = await this.owned(id, identity);
    if (!r) return notFound();
    if (TERMINAL.has(r.status)) return errorResponse({ status: 409, code: "job_finished", message: `the job has already ended (${r.status})` });
    const updated = (await this.store.update(id, { status: "cancelled", cancelRequested: true, finishedAt: this.now(), error: "cancelled by its caller" })) ?? r;
    const run = this.local.get(id);
    if (run) this.cancelRun(run);
    // A job with a runner is notified by that runner as it stops (once); a queued one, now.
    if (updated.status === "cancelled" && r.runner === null) this.track(this.notify(updated));
    return json(this.view(updated), 200);
  }

  /**
   * Housekeeping: results past their retention are deleted (the job says `expired`), and
   * expired records are forgotten after another retention period. Returns how many changed.
   */
  async sweep(): Promise<number> {
    const ttl = this.settings.resultTtlMs;
    const t = this.now();
    let changed = 0;
    for (const id of await this.store.finishedBefore(t - ttl)) {
      const r = await this.store.get(id);
      if (!r) continue;
      if (r.status === "expired" || r.status === "cancelled") {
        if (r.finishedAt !== null && r.finishedAt < t - 2 * ttl) await this.store.forget(id);
        else if (r.status === "cancelled") await this.store.dropPayload(id);
        else continue;
      } else await this.expire(r);
      changed++;
    }
    return changed;
  }

  /**
   * After a restart: the jobs the store says are unfinished go back to the queue (a running one
   * whose runner is gone runs again), and finished ones still to be notified are notified.
   * Only for stores whose queue does not redeliver by itself (the local directory).
   */
  async recover(): Promise<number> {
    let n = 0;
    for (const id of await this.store.unfinished()) {
      const r = await this.store.get(id);
      if (!r) continue;
      if (TERMINAL.has(r.status)) this.track(this.notify(r));
      else {
        await this.store.update(id, { status: "queued", runner: null, heartbeatAt: null });
        await this.queue.enqueue(id);
        n++;
      }
    }
    if (n) this.options.enqueued?.();
    return n;
  }

  /**
   * Shutdown: runs get `graceMs` to finish; the ones still running then are stopped and put
   * back in the queue (not cancelled), for the next start or another replica.
   */
  async close(graceMs: number): Promise<void> {
    this.stopping = true;
    let timer: Timer | undefined;
    await Promise.race([Promise.allSettled([...this.pending]), new Promise<void>((resolve) => (timer = later(resolve, graceMs)))]);
    timer?.clear();
    const left = [...this.local.keys()];
    for (const [, run] of this.local) {
      run.stop ??= "shutdown";
      run.signal.abort(new Error("the gateway is shutting down"));
    }
    for (const id of left) {
      await this.store.update(id, { status: "queued", runner: null, heartbeatAt: null }).catch(() => undefined);
      await this.queue.enqueue(id).catch(() => undefined);
    }
  }
}

const notFound = () => errorResponse({ status: 404, code: "job_not_found", message: "there is no such job for this caller" });

/** The stored request as the pipeline takes it, carrying the job's request id. */
function toRequest(record: JobRecord, r: JobRequest): Request {
  const headers = new Headers(r.headers);
  headers.set("x-request-id", record.requestId);
  return new Request(new URL(r.target, "http://sluice.job"), { method: r.method, headers, body: r.body as BodyInit | null });
}

/** The answer's body, erroring (not ending) when the job is cancelled, so a store never keeps a cut result as whole. */
function cancellable(body: ReadableStream<Uint8Array> | null, signal: JobSignal): ReadableStream<Uint8Array> | null {
  if (!body) return null;
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    start(controller) {
      signal.addEventListener("abort", () => {
        controller.error(signal.reason);
        reader.cancel(signal.reason).catch(() => undefined);
      });
    },
    async pull(controller) {
      const r = await reader.read();
      if (signal.aborted) return;
      if (r.done) controller.close();
      else controller.enqueue(r.value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

export type { JobOwner };
