/**
 * The long-running async handoff on Azure Storage (src/jobs/port.ts): `AzureJobStore` on Blob
 * storage, `AzureJobQueue` on a Storage Queue. Used by the Node container on ACA (which pulls the
 * queue) and by Azure Functions (whose Storage Queue trigger reads the same messages).
 *
 * Blob layout, one container (default `sluice-jobs`):
 *
 *   jobs/{id}/record.json   the JobRecord as JSON; its status, notified flag and finishedAt are
 *                           copied into the blob's metadata in the same PUT, so listing the
 *                           container with metadata answers `unfinished()` and `finishedBefore()`
 *                           without reading every record.
 *   jobs/{id}/request       the JobRequest: a JSON head (method, target, headers, whether there is
 *                           a body) followed by the raw body bytes.
 *   jobs/{id}/result        the stored response: a JSON head (status, headers) followed by the
 *                           raw body bytes.
 *
 * Request and result are each one blob, head in front of the body, the head's length in the
 * blob's metadata (`headbytes`), rather than a body blob next to a head blob: a block blob's
 * content and metadata change together when its block list is committed, so a job that runs
 * twice (delivery is at least once) can never show one run's head with the other run's body,
 * and a reader needs one round trip. Heads are too big to trust to metadata (8 KiB in all).
 *
 * Queue messages are base64 of `{"id":"..."}`, the encoding the Azure Functions Storage Queue
 * trigger expects by default (host.json `extensions.queues.messageEncoding: base64`).
 */
import { Readable } from "node:stream";
import { BlobServiceClient, type ContainerClient, type StoragePipelineOptions as BlobPipelineOptions } from "@azure/storage-blob";
import { QueueClient, QueueServiceClient, type StoragePipelineOptions as QueuePipelineOptions } from "@azure/storage-queue";
import {
  JOB_ID,
  nextStatus,
  TERMINAL,
  type JobDelivery,
  type JobRecord,
  type JobRequest,
  type JobResult,
  type JobResultHead,
  type JobStore,
  type PulledJobQueue,
} from "../../src/jobs/port.ts";

export const DEFAULT_CONTAINER = "sluice-jobs";
export const DEFAULT_QUEUE = "sluice-jobs";

/** Job ids this store accepts: they become blob names, so nothing path-like. */
const RECORD_BLOB = /^jobs\/([A-Za-z0-9-]{1,64})\/record\.json$/;

/** A record is a few hundred bytes; anything near this is not one of ours. */
const MAX_RECORD_BYTES = 1024 * 1024;
/** Heads carry header lists; servers cap those far below this. */
const MAX_HEAD_BYTES = 1024 * 1024;
/** The largest `maxBodyBytes` the config schema accepts, so any request the gateway took fits. */
const MAX_REQUEST_BODY_BYTES = 1024 * 1024 * 1024;
/**
 * Result upload: blocks of this size, at most this many buffered at once, so one upload holds
 * about BLOCK_BYTES × UPLOAD_BUFFERS whatever the body's length (50,000 blocks of 4 MiB allow a
 * 195 GiB body).
 */
const BLOCK_BYTES = 4 * 1024 * 1024;
const UPLOAD_BUFFERS = 3;
/** Read-modify-write rounds an update tries before giving up on a record under contention. */
const MAX_UPDATE_TRIES = 50;
/** Storage Queue limits: 32 messages per receive, visibility timeouts up to 7 days. */
const MAX_RECEIVE_BATCH = 32;
const MAX_VISIBILITY_SECONDS = 7 * 24 * 3600;

/**
 * What `@azure/identity`'s credentials (ManagedIdentityCredential, DefaultAzureCredential …)
 * look like to the storage SDKs, so callers bring their own without this module depending on it.
 */
export interface TokenCredentialLike {
  getToken(scopes: string | string[], options?: object): Promise<{ token: string; expiresOnTimestamp: number } | null>;
}

export interface AzureJobsCredentialOptions {
  /** Blob service endpoint, e.g. `https://{account}.blob.core.windows.net`. */
  accountUrl: string;
  /** Queue service endpoint, e.g. `https://{account}.queue.core.windows.net`. */
  queueUrl: string;
  credential: TokenCredentialLike;
  container?: string;
  queue?: string;
}

/** A store and its queue on one storage account. */
export interface AzureJobs {
  store: AzureJobStore;
  queue: AzureJobQueue;
  /** Creates the container and the queue when they are missing. */
  ensure(): Promise<void>;
}

export function azureJobsFromConnectionString(connectionString: string, options: { container?: string; queue?: string } = {}): AzureJobs {
  return pair(
    AzureJobStore.fromConnectionString(connectionString, options),
    AzureJobQueue.fromConnectionString(connectionString, options),
  );
}

export function azureJobsFromCredential(options: AzureJobsCredentialOptions): AzureJobs {
  return pair(AzureJobStore.fromCredential(options), AzureJobQueue.fromCredential(options));
}

function pair(store: AzureJobStore, queue: AzureJobQueue): AzureJobs {
  return {
    store,
    queue,
    async ensure() {
      await Promise.all([store.ensure(), queue.ensure()]);
    },
  };
}

export class AzureJobStore implements JobStore {
  constructor(readonly container: ContainerClient) {}

  static fromConnectionString(
    connectionString: string,
    options: { container?: string; pipeline?: BlobPipelineOptions } = {},
  ): AzureJobStore {
    const service = BlobServiceClient.fromConnectionString(connectionString, options.pipeline);
    return new AzureJobStore(service.getContainerClient(options.container ?? DEFAULT_CONTAINER));
  }

  static fromCredential(options: {
    accountUrl: string;
    credential: TokenCredentialLike;
    container?: string;
    pipeline?: BlobPipelineOptions;
  }): AzureJobStore {
    const service = new BlobServiceClient(options.accountUrl, options.credential, options.pipeline);
    return new AzureJobStore(service.getContainerClient(options.container ?? DEFAULT_CONTAINER));
  }

  async ensure(): Promise<void> {
    await this.container.createIfNotExists();
  }

  async create(record: JobRecord, request: JobRequest): Promise<void> {
    requireId(record.id);
    const body = request.body;
    if (body && body.byteLength > MAX_REQUEST_BODY_BYTES) throw new RangeError(`job ${record.id}: request body over ${MAX_REQUEST_BODY_BYTES} bytes`);
    const head = encodeHead({ method: request.method, target: request.target, headers: request.headers, body: body !== null });
    const data = body ? Buffer.concat([head, body]) : head;
    await this.blob(record.id, "request").uploadData(data, {
      metadata: { headbytes: String(head.byteLength) },
      blobHTTPHeaders: { blobContentType: "application/octet-stream" },
    });
    // The record last: once a record can be seen, its request is there.
    await this.writeRecord(record);
  }

  async get(id: string): Promise<JobRecord | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    return (await this.readRecord(id))?.record;
  }

  async request(id: string): Promise<JobRequest | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const framed = await this.openFramed(id, "request");
    if (!framed) return undefined;
    const head = framed.head as { method?: unknown; target?: unknown; headers?: unknown; body?: unknown };
    if (typeof head.method !== "string" || typeof head.target !== "string" || !isHeaderList(head.headers)) {
      await framed.close();
      throw new Error(`job ${id}: malformed request head`);
    }
    const headers = head.headers;
    const rest = await readAll(framed.chunks, MAX_REQUEST_BODY_BYTES, framed.close);
    return { method: head.method, target: head.target, headers, body: head.body === true ? toUint8Array(rest) : null };
  }

  async update(id: string, patch: Partial<Omit<JobRecord, "id">>): Promise<JobRecord | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    // An undefined in the patch means "not given", as it would after a JSON round trip.
    const given = Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) as Partial<JobRecord>;
    for (let attempt = 1; ; attempt++) {
      const current = await this.readRecord(id);
      if (!current) return undefined;
      const next: JobRecord = { ...current.record, ...given, id };
      next.status = nextStatus(current.record.status, patch.status);
      try {
        await this.writeRecord(next, current.etag);
        return next;
      } catch (err) {
        // 412: someone wrote the record since we read it; merge into their version instead.
        if (statusCode(err) !== 412 || attempt >= MAX_UPDATE_TRIES) throw err;
        await sleep(Math.random() * Math.min(100, 5 * attempt));
      }
    }
  }

  async putResult(id: string, head: JobResultHead, body: ReadableStream<Uint8Array> | null): Promise<void> {
    requireId(id);
    const headBytes = encodeHead({ status: head.status, headers: head.headers });
    const reader = body?.getReader();
    async function* frames(): AsyncGenerator<Buffer> {
      yield headBytes;
      if (!reader) return;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        if (value.byteLength) yield Buffer.from(value.buffer, value.byteOffset, value.byteLength);
      }
    }
    // A byte-mode Readable with a byte high-water mark: it reads ahead at most that much of the
    // body beyond the scheduler's own buffers.
    const source = Readable.from(frames(), { objectMode: false, highWaterMark: 256 * 1024 });
    try {
      await this.blob(id, "result").uploadStream(source, BLOCK_BYTES, UPLOAD_BUFFERS, {
        metadata: { headbytes: String(headBytes.byteLength) },
        blobHTTPHeaders: { blobContentType: "application/octet-stream" },
      });
    } catch (err) {
      // The SDK only pauses the source on failure; stop the producer of the body too. Staged,
      // uncommitted blocks are dropped by the service, and any earlier result stays as it was.
      source.destroy();
      await reader?.cancel(err).catch(() => undefined);
      throw err;
    }
  }

  async result(id: string): Promise<JobResult | undefined> {
    if (!JOB_ID.test(id)) return undefined;
    const framed = await this.openFramed(id, "result");
    if (!framed) return undefined;
    const head = framed.head as { status?: unknown; headers?: unknown };
    if (typeof head.status !== "number" || !Number.isInteger(head.status) || !isHeaderList(head.headers)) {
      await framed.close();
      throw new Error(`job ${id}: malformed result head`);
    }
    const headers = head.headers;
    const chunks = framed.chunks;
    const body = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          // Loop past empty chunks: a pull that enqueues nothing would not be called again.
          for (;;) {
            const { value, done } = await chunks.next();
            if (done) return controller.close();
            if (value.byteLength) return controller.enqueue(toUint8Array(value));
          }
        },
        cancel: () => framed.close(),
      },
      { highWaterMark: 0 },
    );
    return { status: head.status, headers, body };
  }

  async dropPayload(id: string): Promise<void> {
    if (!JOB_ID.test(id)) return;
    await Promise.all([this.blob(id, "request").deleteIfExists(), this.blob(id, "result").deleteIfExists()]);
  }

  async forget(id: string): Promise<void> {
    if (!JOB_ID.test(id)) return;
    await this.dropPayload(id);
    // The record last, so a forget cut short leaves a record that finishedBefore() lists again.
    await this.blob(id, "record.json").deleteIfExists();
  }

  /**
   * Lists every blob under `jobs/` with its metadata and keeps the records: one listing call per
   * 5,000 blobs, no per-record reads. That is fine at the scale of results kept for a retention
   * period; a store with millions of jobs would want blob index tags and findBlobsByTags instead.
   * Queued and running jobs are listed too (the queue would redeliver them), so a job whose
   * enqueue failed after its create is still picked up.
   */
  async unfinished(): Promise<string[]> {
    const ids: string[] = [];
    for await (const { id, meta } of this.listRecords()) {
      const status = meta.status as JobRecord["status"];
      if (!TERMINAL.has(status) || !meta.notified) ids.push(id);
    }
    return ids;
  }

  async finishedBefore(before: number): Promise<string[]> {
    const ids: string[] = [];
    for await (const { id, meta } of this.listRecords()) {
      if (meta.finishedAt !== null && meta.finishedAt < before) ids.push(id);
    }
    return ids;
  }

  private blob(id: string, name: "record.json" | "request" | "result") {
    return this.container.getBlockBlobClient(`jobs/${id}/${name}`);
  }

  private async *listRecords(): AsyncGenerator<{ id: string; meta: { status: string; notified: boolean; finishedAt: number | null } }> {
    for await (const item of this.container.listBlobsFlat({ prefix: "jobs/", includeMetadata: true })) {
      const id = RECORD_BLOB.exec(item.name)?.[1];
      if (!id) continue;
      const m = item.metadata ?? {};
      if (typeof m.status === "string") {
        yield { id, meta: { status: m.status, notified: m.notified === "true", finishedAt: m.finishedat ? Number(m.finishedat) : null } };
        continue;
      }
      // A record written without metadata (by hand, or by another tool): read it.
      const record = (await this.readRecord(id))?.record;
      if (record) yield { id, meta: { status: record.status, notified: record.notified, finishedAt: record.finishedAt } };
    }
  }

  private async readRecord(id: string): Promise<{ record: JobRecord; etag: string } | undefined> {
    let res;
    try {
      res = await this.blob(id, "record.json").download(0);
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw err;
    }
    const body = res.readableStreamBody;
    if (!body || !res.etag) throw new Error(`job ${id}: record download without a body or an ETag`);
    const bytes = await readAll(iterate(body), MAX_RECORD_BYTES, () => destroy(body));
    return { record: JSON.parse(bytes.toString("utf8")) as JobRecord, etag: res.etag };
  }

  /** Writes the record; with `ifMatch`, only over that version of it (412 otherwise). */
  private async writeRecord(record: JobRecord, ifMatch?: string): Promise<void> {
    const data = Buffer.from(JSON.stringify(record), "utf8");
    const metadata: Record<string, string> = { status: record.status, notified: String(record.notified) };
    if (record.finishedAt !== null && record.finishedAt !== undefined) metadata.finishedat = String(record.finishedAt);
    await this.blob(record.id, "record.json").upload(data, data.byteLength, {
      metadata,
      blobHTTPHeaders: { blobContentType: "application/json" },
      ...(ifMatch ? { conditions: { ifMatch } } : {}),
    });
  }

  /** Opens a head-then-body blob: its parsed head and an iterator over the bytes after it. */
  private async openFramed(
    id: string,
    name: "request" | "result",
  ): Promise<{ head: unknown; chunks: AsyncIterator<Buffer>; close(): Promise<void> } | undefined> {
    let res;
    try {
      res = await this.blob(id, name).download(0);
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw err;
    }
    const stream = res.readableStreamBody;
    if (!stream) throw new Error(`job ${id}: ${name} download without a body`);
    const close = async () => destroy(stream);
    const headBytes = Number(res.metadata?.headbytes);
    if (!Number.isSafeInteger(headBytes) || headBytes < 2 || headBytes > MAX_HEAD_BYTES) {
      await close();
      throw new Error(`job ${id}: ${name} blob has no valid headbytes metadata`);
    }
    const source = iterate(stream);
    const parts: Buffer[] = [];
    let have = 0;
    let head: unknown;
    let leftover: Buffer | null;
    try {
      while (have < headBytes) {
        const { value, done } = await source.next();
        if (done) throw new Error(`job ${id}: ${name} blob ends inside its head`);
        parts.push(value);
        have += value.byteLength;
      }
      const first = Buffer.concat(parts, have);
      head = JSON.parse(first.subarray(0, headBytes).toString("utf8")) as unknown;
      leftover = first.subarray(headBytes);
    } catch (err) {
      await close();
      throw err;
    }
    const chunks: AsyncIterator<Buffer> = {
      next: async () => {
        if (leftover) {
          const value = leftover;
          leftover = null;
          return { value, done: false };
        }
        return source.next();
      },
    };
    return { head, chunks, close };
  }
}

export class AzureJobQueue implements PulledJobQueue {
  constructor(readonly client: QueueClient) {}

  static fromConnectionString(connectionString: string, options: { queue?: string; pipeline?: QueuePipelineOptions } = {}): AzureJobQueue {
    return new AzureJobQueue(new QueueClient(connectionString, options.queue ?? DEFAULT_QUEUE, options.pipeline));
  }

  static fromCredential(options: { queueUrl: string; credential: TokenCredentialLike; queue?: string; pipeline?: QueuePipelineOptions }): AzureJobQueue {
    const service = new QueueServiceClient(options.queueUrl, options.credential, options.pipeline);
    return new AzureJobQueue(service.getQueueClient(options.queue ?? DEFAULT_QUEUE));
  }

  async ensure(): Promise<void> {
    await this.client.createIfNotExists();
  }

  /**
   * `delayMs` is rounded up to whole seconds (the queue's granularity) and capped at 7 days (its
   * maximum); an early delivery is harmless, since a runner checks the record before it runs.
   * The message never expires (TTL -1): a queued job's deadline, not the queue, ends its wait.
   */
  async enqueue(id: string, delayMs = 0): Promise<void> {
    requireId(id);
    await this.client.sendMessage(encodeMessage(id), { visibilityTimeout: seconds(delayMs, 0), messageTimeToLive: -1 });
  }

  /**
   * Leases are rounded up to whole seconds, at least 1 (the queue's granularity): a 300 ms lease
   * keeps the id invisible for 1 s. Receives 32 at a time (the queue's limit) until `max` or the
   * queue runs dry. A message that names no job can never be run and would come back forever, so
   * it is deleted.
   */
  async receive(max: number, leaseMs: number): Promise<JobDelivery[]> {
    const want = Math.floor(max);
    const visibilityTimeout = seconds(leaseMs, 1);
    const out: JobDelivery[] = [];
    while (out.length < want) {
      const batch = Math.min(MAX_RECEIVE_BATCH, want - out.length);
      const res = await this.client.receiveMessages({ numberOfMessages: batch, visibilityTimeout });
      for (const m of res.receivedMessageItems) {
        const id = decodeMessage(m.messageText);
        if (id) out.push(new AzureDelivery(this.client, m.messageId, m.popReceipt, id, m.dequeueCount));
        else await this.client.deleteMessage(m.messageId, m.popReceipt).catch(() => undefined);
      }
      if (res.receivedMessageItems.length < batch) break;
    }
    return out;
  }
}

class AzureDelivery implements JobDelivery {
  /** extend() and complete() run one at a time, each with the newest pop receipt. */
  private chain: Promise<unknown> = Promise.resolve();
  private completed = false;

  constructor(
    private readonly client: QueueClient,
    private readonly messageId: string,
    private popReceipt: string,
    readonly id: string,
    readonly dequeueCount: number,
  ) {}

  /**
   * Rounded up to whole seconds. Rejects when the lease was lost (it ran out and another runner
   * received the id): the caller should know that someone else may be running the job.
   */
  extend(ms: number): Promise<void> {
    return this.serial(async () => {
      if (this.completed) throw new Error(`job ${this.id}: extend after complete`);
      try {
        const res = await this.client.updateMessage(this.messageId, this.popReceipt, undefined, seconds(ms, 0));
        if (res.popReceipt) this.popReceipt = res.popReceipt;
      } catch (err) {
        if (lostLease(err)) throw new Error(`job ${this.id}: queue lease lost (the message was received again or deleted)`, { cause: err });
        throw err;
      }
    });
  }

  /**
   * Resolves when the message is gone, and also when the lease was lost: then another runner
   * holds the id, and it completes the message once it sees the job's record.
   */
  complete(): Promise<void> {
    return this.serial(async () => {
      if (this.completed) return;
      try {
        await this.client.deleteMessage(this.messageId, this.popReceipt);
      } catch (err) {
        if (!lostLease(err)) throw err;
      }
      this.completed = true;
    });
  }

  private serial(run: () => Promise<void>): Promise<void> {
    const next = this.chain.then(run, run);
    this.chain = next.catch(() => undefined);
    return next;
  }
}

function encodeMessage(id: string): string {
  return Buffer.from(JSON.stringify({ id }), "utf8").toString("base64");
}

/** Base64 JSON (ours and the Functions trigger's default); plain JSON is accepted too. */
function decodeMessage(text: string): string | undefined {
  try {
    const json = text.trimStart().startsWith("{") ? text : Buffer.from(text, "base64").toString("utf8");
    const value = JSON.parse(json) as unknown;
    const id = value && typeof value === "object" ? (value as { id?: unknown }).id : undefined;
    return typeof id === "string" && JOB_ID.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

/** 404 MessageNotFound, or 400 PopReceiptMismatch: the receipt no longer names a message we hold. */
function lostLease(err: unknown): boolean {
  const status = statusCode(err);
  return status === 404 || (status === 400 && (err as { code?: unknown }).code === "PopReceiptMismatch");
}

function seconds(ms: number, min: number): number {
  const s = Number.isFinite(ms) ? Math.ceil(Math.max(0, ms) / 1000) : MAX_VISIBILITY_SECONDS;
  return Math.min(MAX_VISIBILITY_SECONDS, Math.max(min, s));
}

function requireId(id: string): void {
  if (typeof id !== "string" || !JOB_ID.test(id)) throw new TypeError(`invalid job id ${JSON.stringify(id)} (expected [A-Za-z0-9-]{1,64})`);
}

function encodeHead(head: object): Buffer {
  const bytes = Buffer.from(JSON.stringify(head), "utf8");
  if (bytes.byteLength > MAX_HEAD_BYTES) throw new RangeError(`head of ${bytes.byteLength} bytes is over ${MAX_HEAD_BYTES}`);
  return bytes;
}

function isHeaderList(value: unknown): value is [string, string][] {
  return Array.isArray(value) && value.every((h) => Array.isArray(h) && h.length === 2 && typeof h[0] === "string" && typeof h[1] === "string");
}

function statusCode(err: unknown): number | undefined {
  const code = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof code === "number" ? code : undefined;
}

function iterate(stream: NodeJS.ReadableStream): AsyncIterator<Buffer> {
  return (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
}

function destroy(stream: NodeJS.ReadableStream): void {
  (stream as Partial<Readable>).destroy?.();
}

async function readAll(chunks: AsyncIterator<Buffer>, cap: number, close: () => unknown): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await chunks.next();
    if (done) break;
    size += value.byteLength;
    if (size > cap) {
      await close();
      throw new RangeError(`blob over ${cap} bytes`);
    }
    parts.push(value);
  }
  return Buffer.concat(parts, size);
}

/** A plain Uint8Array view, so nothing Node-specific leaks into the core. */
function toUint8Array(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
