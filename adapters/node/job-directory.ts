import { randomUUID } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, open, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { JobDelivery, JobRecord, JobRequest, JobResult, JobResultHead, JobStore, PulledJobQueue } from "../../src/jobs/port.ts";
import { JOB_ID, nextStatus, TERMINAL } from "../../src/jobs/port.ts";


function checkId(id: string): void {
  if (!JOB_ID.test(id)) throw new Error(`sluice: "${id.slice(0, 80)}" is not a job id`);
}

/** Writes a file whole or not at all: a crash mid-write leaves the old one (or none), never half of it. */
async function writeAtomically(file: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${file}.${randomUUID()}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, file);
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** One writer at a time per key, in order (read-modify-write of a record, the queue's files). */
class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key) ?? Promise.resolve();
    const next = before.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }
}

interface QueueEntry {
  visibleAt: number;
  dequeueCount: number;
}

/**
 * The Node gateway's embedded job store: a local directory, no server needed, that survives a
 * restart of the process. `jobs/{id}/` holds `record.json`, `request.json` + `request.body`,
 * `result.json` + `result.body`; `queue/{id}.json` is the id waiting (or leased) for a runner.
 * Every file is written to a temporary name and renamed, so a kill leaves whole files only.
 *
 * One gateway process per directory (a `lock` file says which): the queue's leases and the
 * records' read-modify-writes are serialized in that process. Listing (`unfinished`,
 * `finishedBefore`, `receive`) reads the directory, which is fine for the thousands of jobs a
 * single process holds; many replicas use the Azure store.
 */
export class DirectoryJobStore implements JobStore, PulledJobQueue {
  private readonly jobsDir: string;
  private readonly queueDir: string;
  private readonly lock = new KeyedLock();

  private constructor(
    readonly root: string,
    private readonly now: () => number,
  ) {
    this.jobsDir = join(root, "jobs");
    this.queueDir = join(root, "queue");
  }

  /** Opens (creating) the directory; refuses one that a live process other than this one holds. */
  static async open(path: string, now: () => number = Date.now): Promise<DirectoryJobStore> {
    const root = resolve(path);
    const store = new DirectoryJobStore(root, now);
    await mkdir(store.jobsDir, { recursive: true });
    await mkdir(store.queueDir, { recursive: true });
    const lockFile = join(root, "lock");
    const holder = Number((await readFile(lockFile, "utf8").catch(() => "")).trim());
    if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
      throw new Error(`sluice: the job directory ${root} is in use by process ${holder}; give each gateway process a directory of its own (jobs.store.path)`);
    }
    await writeAtomically(lockFile, String(process.pid));
    return store;
  }

  private dir(id: string): string {
    checkId(id);
    return join(this.jobsDir, id);
  }

  async create(record: JobRecord, request: JobRequest): Promise<void> {
    const dir = this.dir(record.id);
    await mkdir(dir, { recursive: true });
    await writeAtomically(join(dir, "request.body"), request.body ?? new Uint8Array());
    await writeAtomically(join(dir, "request.json"), JSON.stringify({ method: request.method, target: request.target, headers: request.headers, hasBody: request.body !== null }));
    // The record last: a job is there once its request is.
    await writeAtomically(join(dir, "record.json"), JSON.stringify(record));
  }

  async get(id: string): Promise<JobRecord | undefined> {
    // An id that is not one (a path, say) names no job: nothing is read for it.
    if (!JOB_ID.test(id)) return undefined;
    return readJson<JobRecord>(join(this.dir(id), "record.json"));
  }

  async request(id: string): Promise<JobRequest | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const dir = this.dir(id);
    const head = await readJson<{ method: string; target: string; headers: [string, string][]; hasBody: boolean }>(join(dir, "request.json"));
    if (!head) return undefined;
    const body = head.hasBody ? new Uint8Array(await readFile(join(dir, "request.body"))) : null;
    return { method: head.method, target: head.target, headers: head.headers, body };
  }

  async update(id: string, patch: Partial<Omit<JobRecord, "id">>): Promise<JobRecord | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const file = join(this.dir(id), "record.json");
    return this.lock.run(id, async () => {
      const r = await readJson<JobRecord>(file);
      if (!r) return undefined;
      const next: JobRecord = { ...r, id: r.id, status: nextStatus(r.status, patch.status) };
      // An undefined in the patch is "not given", as it is after a JSON round trip.
      for (const [k, v] of Object.entries(patch)) if (v !== undefined && k !== "id" && k !== "status") (next as unknown as Record<string, unknown>)[k] = v;
      await writeAtomically(file, JSON.stringify(next));
      return next;
    });
  }

  async putResult(id: string, head: JobResultHead, body: ReadableStream<Uint8Array> | null): Promise<void> {
    const dir = this.dir(id);
    await mkdir(dir, { recursive: true });
    const file = join(dir, "result.body");
    const tmp = `${file}.${randomUUID()}.tmp`;
    try {
      if (body) await pipeline(Readable.fromWeb(body as import("node:stream/web").ReadableStream<Uint8Array>), createWriteStream(tmp));
      else await writeFile(tmp, new Uint8Array());
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    await writeAtomically(join(dir, "result.json"), JSON.stringify(head));
  }

  async result(id: string): Promise<JobResult | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const dir = this.dir(id);
    const head = await readJson<JobResultHead>(join(dir, "result.json"));
    if (!head) return undefined;
    let handle;
    try {
      handle = await open(join(dir, "result.body"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    const stream = handle.createReadStream({ highWaterMark: 64 * 1024 });
    return { ...head, body: Readable.toWeb(stream) as unknown as ReadableStream<Uint8Array> };
  }

  async dropPayload(id: string): Promise<void> {
    const dir = this.dir(id);
    await Promise.all(["request.json", "request.body", "result.json", "result.body"].map((f) => rm(join(dir, f), { force: true })));
  }

  async forget(id: string): Promise<void> {
    await this.complete(id);
    await rm(this.dir(id), { recursive: true, force: true });
  }

  private async records(): Promise<JobRecord[]> {
    const out: JobRecord[] = [];
    for (const id of await readdir(this.jobsDir)) {
      if (!JOB_ID.test(id)) continue;
      const r = await this.get(id).catch(() => undefined);
      if (r) out.push(r);
    }
    return out;
  }

  async unfinished(): Promise<string[]> {
    return (await this.records()).filter((r) => !TERMINAL.has(r.status) || !r.notified).map((r) => r.id);
  }

  async finishedBefore(before: number): Promise<string[]> {
    return (await this.records()).filter((r) => r.finishedAt !== null && r.finishedAt < before).map((r) => r.id);
  }

  // The queue: one file per waiting id.

  private entry(id: string): string {
    checkId(id);
    return join(this.queueDir, `${id}.json`);
  }

  enqueue(id: string, delayMs = 0): Promise<void> {
    const file = this.entry(id);
    return this.lock.run("queue", async () => {
      const had = await readJson<QueueEntry>(file);
      await writeAtomically(file, JSON.stringify({ visibleAt: this.now() + delayMs, dequeueCount: had?.dequeueCount ?? 0 } satisfies QueueEntry));
    });
  }

  receive(max: number, leaseMs: number): Promise<JobDelivery[]> {
    return this.lock.run("queue", async () => {
      const t = this.now();
      const visible: { id: string; e: QueueEntry }[] = [];
      for (const name of await readdir(this.queueDir)) {
        if (!name.endsWith(".json")) continue;
        const id = name.slice(0, -5);
        if (!JOB_ID.test(id)) continue;
        const e = await readJson<QueueEntry>(join(this.queueDir, name)).catch(() => undefined);
        if (e && e.visibleAt <= t) visible.push({ id, e });
      }
      visible.sort((a, b) => a.e.visibleAt - b.e.visibleAt);
      const out: JobDelivery[] = [];
      for (const { id, e } of visible.slice(0, max)) {
        const taken: QueueEntry = { visibleAt: t + leaseMs, dequeueCount: e.dequeueCount + 1 };
        await writeAtomically(this.entry(id), JSON.stringify(taken));
        out.push({
          id,
          dequeueCount: taken.dequeueCount,
          extend: (ms) => this.extend(id, ms),
          complete: () => this.complete(id),
        });
      }
      return out;
    });
  }

  private extend(id: string, ms: number): Promise<void> {
    const file = this.entry(id);
    return this.lock.run("queue", async () => {
      const e = await readJson<QueueEntry>(file);
      if (e) await writeAtomically(file, JSON.stringify({ ...e, visibleAt: this.now() + ms }));
    });
  }

  private complete(id: string): Promise<void> {
    const file = this.entry(id);
    return this.lock.run("queue", () => rm(file, { force: true }));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
