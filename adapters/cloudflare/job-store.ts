/**
 * The long-running async handoff's store on Workers (src/jobs/port.ts): records in the
 * JobStateObject (a SQLite-backed Durable Object, job-state-object.ts), requests and results in
 * an R2 bucket. The queue is a Cloudflare Queue (job-queue.ts), whose consumer (worker.ts)
 * runs the jobs.
 *
 * R2 layout (keys under an optional prefix):
 *
 *   jobs/{id}/request   the JobRequest: a JSON head (method, target, headers, whether there is a
 *                       body) followed by the raw body bytes.
 *   jobs/{id}/result    the stored response: a JSON head (status, headers) followed by the raw
 *                       body bytes.
 *
 * The head's length is in the object's custom metadata (`headbytes`). Head and body are one
 * object, not two: an R2 object's content and metadata are replaced together (a put, or the
 * completion of a multipart upload), so a job that runs twice (delivery is at least once) can
 * never show one run's head with the other run's body, and a read is one round trip. Heads are
 * too big to trust to custom metadata (2 KiB in all).
 *
 * A result is streamed into R2 as it arrives: R2 needs each value's length up front, so the body
 * is cut into parts of PART_BYTES, each uploaded as it fills (a multipart upload); a body that
 * ends within the first part is one plain put. At most one part is held at a time, whatever the
 * body's length.
 */
import { JOB_ID, type JobRecord, type JobRequest, type JobResult, type JobResultHead, type JobStore } from "../../src/jobs/port.ts";
import type { JobStateRpc } from "./job-state-object.ts";
import { withRetries } from "./rpc-calls.ts";

/** The name of the one JobStateObject that holds a deployment's records. */
export const JOB_STATE_OBJECT = "jobs";

/** Job ids this store accepts: they become R2 keys, so nothing path-like. */
/**
 * Result parts: R2 wants every part of a multipart upload but the last to be of one size, at
 * least 5 MiB; 10,000 parts of 5 MiB allow a 48 GiB result. One part is held per upload (the
 * next is read from the body only once it has been sent), so a consumer running several jobs
 * holds a few of these at most.
 */
export const PART_BYTES = 5 * 1024 * 1024;
/** Heads carry header lists; servers cap those far below this. */
const MAX_HEAD_BYTES = 1024 * 1024;

/** The part of a Durable Object namespace binding the store uses. */
export interface JobStateNamespace {
  idFromName(name: string): unknown;
  get(id: never): JobStateRpc;
}

/** The parts of the R2 binding the store uses (R2Bucket in @cloudflare/workers-types). */
export interface R2ObjectBodyLike {
  readonly body: ReadableStream<Uint8Array>;
  readonly customMetadata?: Record<string, string>;
}
export interface R2UploadedPartLike {
  partNumber: number;
  etag: string;
}
export interface R2MultipartUploadLike {
  uploadPart(partNumber: number, value: Uint8Array): Promise<R2UploadedPartLike>;
  abort(): Promise<void>;
  complete(parts: R2UploadedPartLike[]): Promise<unknown>;
}
interface R2PutOptionsLike {
  customMetadata?: Record<string, string>;
  httpMetadata?: { contentType?: string };
}
export interface R2BucketLike {
  get(key: string): Promise<R2ObjectBodyLike | null>;
  put(key: string, value: Uint8Array, options?: R2PutOptionsLike): Promise<unknown>;
  delete(keys: string | string[]): Promise<void>;
  createMultipartUpload(key: string, options?: R2PutOptionsLike): Promise<R2MultipartUploadLike>;
}

export interface WorkersJobStoreOptions {
  /** The JOB_STATE binding (JobStateObject). */
  state: JobStateNamespace;
  /** The JOB_RESULTS binding. */
  bucket: R2BucketLike;
  /** The object holding the records; default "jobs". Tests use one per store. */
  objectName?: string;
  /** Prefix of every R2 key; default none. Tests use one per store. */
  prefix?: string;
}

export class WorkersJobStore implements JobStore {
  private readonly bucket: R2BucketLike;
  private readonly prefix: string;
  private readonly stateNs: JobStateNamespace;
  private readonly stateId: unknown;

  constructor(options: WorkersJobStoreOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? "";
    this.stateNs = options.state;
    this.stateId = options.state.idFromName(options.objectName ?? JOB_STATE_OBJECT);
  }

  /**
   * A call on the state object, tried again on a transient RPC failure (every call is
   * idempotent: a create or merge applied twice leaves what applying it once does). A stub
   * belongs to the request that made it, and the store is shared by the isolate's requests:
   * one stub per call.
   */
  private state<T>(call: (object: JobStateRpc) => Promise<T>): Promise<T> {
    return withRetries(() => call(this.stateNs.get(this.stateId as never)));
  }

  private key(id: string, what: "request" | "result"): string {
    return `${this.prefix}jobs/${id}/${what}`;
  }

  async create(record: JobRecord, request: JobRequest): Promise<void> {
    requireId(record.id);
    const head = encodeHead({ method: request.method, target: request.target, headers: request.headers, body: request.body !== null });
    const data = request.body ? concat([head, request.body]) : head;
    await this.bucket.put(this.key(record.id, "request"), data, framedOptions(head));
    // The record last: once a record can be seen, its request is there.
    await this.state((o) => o.create(record));
  }

  async get(id: string): Promise<JobRecord | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    return (await this.state((o) => o.get(id))) ?? undefined;
  }

  async request(id: string): Promise<JobRequest | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const framed = await this.openFramed(this.key(id, "request"));
    if (!framed) return undefined;
    const head = framed.head as { method?: unknown; target?: unknown; headers?: unknown; body?: unknown };
    if (typeof head.method !== "string" || typeof head.target !== "string" || !isHeaderList(head.headers)) {
      await framed.body.cancel().catch(() => undefined);
      throw new Error(`job ${id}: malformed request head`);
    }
    const rest = await readAll(framed.body);
    return { method: head.method, target: head.target, headers: head.headers, body: head.body === true ? rest : null };
  }

  async update(id: string, patch: Partial<Omit<JobRecord, "id">>): Promise<JobRecord | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    // The object merges it and applies nextStatus in one atomic step (job-state-object.ts).
    return (await this.state((o) => o.update(id, patch))) ?? undefined;
  }

  async putResult(id: string, head: JobResultHead, body: ReadableStream<Uint8Array> | null): Promise<void> {
    requireId(id);
    const key = this.key(id, "result");
    const headBytes = encodeHead({ status: head.status, headers: head.headers });
    const options = framedOptions(headBytes);
    const reader = body?.getReader();
    const parts = new PartBuffer();
    parts.push(headBytes);
    let upload: R2MultipartUploadLike | undefined;
    const uploaded: R2UploadedPartLike[] = [];
    try {
      for (;;) {
        const next = reader ? await reader.read() : { done: true as const, value: undefined };
        if (next.done) break;
        parts.push(next.value);
        // A part is sent once more than a part's worth is in hand: the body may end right at a
        // part boundary, and a body that fits in one part is one plain put.
        while (parts.size > PART_BYTES) {
          upload ??= await this.bucket.createMultipartUpload(key, options);
          uploaded.push(await upload.uploadPart(uploaded.length + 1, parts.take(PART_BYTES)));
        }
      }
      const rest = parts.take(parts.size);
      if (!upload) {
        await this.bucket.put(key, rest, options);
        return;
      }
      uploaded.push(await upload.uploadPart(uploaded.length + 1, rest));
      await upload.complete(uploaded);
    } catch (err) {
      // Nothing of this run becomes the result: an upload not completed is discarded, and an
      // earlier result stays as it was. The body's producer is stopped too.
      await upload?.abort().catch(() => undefined);
      await reader?.cancel(err).catch(() => undefined);
      throw err;
    }
  }

  async result(id: string): Promise<JobResult | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const framed = await this.openFramed(this.key(id, "result"));
    if (!framed) return undefined;
    const head = framed.head as { status?: unknown; headers?: unknown };
    if (typeof head.status !== "number" || !Number.isInteger(head.status) || !isHeaderList(head.headers)) {
      await framed.body.cancel().catch(() => undefined);
      throw new Error(`job ${id}: malformed result head`);
    }
    return { status: head.status, headers: head.headers, body: framed.body };
  }

  async dropPayload(id: string): Promise<void> {
    if (!JOB_ID.test(id)) return;
    await this.bucket.delete([this.key(id, "request"), this.key(id, "result")]);
  }

  async forget(id: string): Promise<void> {
    if (!JOB_ID.test(id)) return;
    await this.dropPayload(id);
    await this.state((o) => o.forget(id));
  }

  /** Every queued or running job and every finished one still to be notified (the queue redelivers the former by itself; listed anyway, as the port allows). */
  unfinished(): Promise<string[]> {
    return this.state((o) => o.unfinished());
  }

  finishedBefore(before: number): Promise<string[]> {
    return this.state((o) => o.finishedBefore(before));
  }

  /** An object written by `frame`: its head parsed, the rest as a stream. */
  private async openFramed(key: string): Promise<{ head: unknown; body: ReadableStream<Uint8Array> } | undefined> {
    const object = await this.bucket.get(key);
    if (!object) return undefined;
    const headLength = Number(object.customMetadata?.headbytes);
    const reader = object.body.getReader();
    const fail = async (message: string): Promise<never> => {
      await reader.cancel().catch(() => undefined);
      throw new Error(`${key}: ${message}`);
    };
    if (!Number.isInteger(headLength) || headLength <= 0 || headLength > MAX_HEAD_BYTES) return fail("missing or invalid headbytes metadata");
    const got = new PartBuffer();
    while (got.size < headLength) {
      const next = await reader.read();
      if (next.done) return fail("shorter than its head");
      got.push(next.value);
    }
    let head: unknown;
    try {
      head = JSON.parse(new TextDecoder().decode(got.take(headLength)));
    } catch {
      return fail("its head is not JSON");
    }
    let first: Uint8Array | undefined = got.size ? got.take(got.size) : undefined;
    const body = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          if (first) {
            controller.enqueue(first);
            first = undefined;
            return;
          }
          // Loop past empty chunks: a pull that enqueues nothing would not be called again.
          for (;;) {
            const next = await reader.read();
            if (next.done) return controller.close();
            if (next.value.byteLength) return controller.enqueue(next.value);
          }
        },
        cancel: (reason) => reader.cancel(reason),
      },
      { highWaterMark: 0 },
    );
    return { head, body };
  }
}

/** Chunks in hand, taken off the front by length (one copy per take, none per push). */
class PartBuffer {
  private chunks: Uint8Array[] = [];
  size = 0;

  push(chunk: Uint8Array): void {
    if (!chunk.byteLength) return;
    this.chunks.push(chunk);
    this.size += chunk.byteLength;
  }

  take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const want = n - filled;
      if (c.byteLength <= want) {
        out.set(c, filled);
        filled += c.byteLength;
        this.chunks.shift();
      } else {
        out.set(c.subarray(0, want), filled);
        this.chunks[0] = c.subarray(want);
        filled = n;
      }
    }
    this.size -= n;
    return out;
  }
}

function requireId(id: string): void {
  if (!JOB_ID.test(id)) throw new Error(`invalid job id ${JSON.stringify(id)}`);
}

function encodeHead(head: unknown): Uint8Array {
  const bytes = new TextEncoder().encode(JSON.stringify(head));
  if (bytes.byteLength > MAX_HEAD_BYTES) throw new RangeError(`head over ${MAX_HEAD_BYTES} bytes`);
  return bytes;
}

function framedOptions(head: Uint8Array): R2PutOptionsLike {
  return { customMetadata: { headbytes: String(head.byteLength) }, httpMetadata: { contentType: "application/octet-stream" } };
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.byteLength;
  }
  return out;
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  for (;;) {
    const next = await reader.read();
    if (next.done) return concat(parts);
    parts.push(next.value);
  }
}

function isHeaderList(v: unknown): v is [string, string][] {
  return Array.isArray(v) && v.every((h) => Array.isArray(h) && h.length === 2 && typeof h[0] === "string" && typeof h[1] === "string");
}
