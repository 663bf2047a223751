/**
 * The job-store conformance suite against WorkersJobStore + WorkersJobQueue running inside
 * workerd (miniflare): a test Worker holds the real store (the JobStateObject, an R2 bucket, a
 * Queue) and exposes its operations over fetch; this process drives it through a thin JobStore
 * that forwards each call. Request and result bodies cross as streams both ways, so putResult is
 * fed as the suite's stream is pulled and a result is read as the store streams it. Each test gets
 * a store of its own (its own JobStateObject name and R2 key prefix), all in one miniflare.
 *
 * WorkersJobQueue only sends (the platform delivers to the Worker's `queue` handler: there is no
 * `receive`), so the suite's pulled-queue tests skip themselves; the tests below check what the
 * consumer is given instead, and the R2 multipart path the suite's bodies are too small to reach.
 */
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JobQueue, JobRecord, JobRequest, JobResult, JobResultHead, JobStore } from "../../src/jobs/port.ts";
import { bundleForWorkers, COMPATIBILITY_DATE, JOB_STATE_CLASS, jobOptions } from "../harness/workers.ts";
import { until } from "../harness/until.ts";
import { jobStoreSuite, newRecord, newRequest, pseudoRandomBytes, readBytes, streamOf } from "./job-store-suite.ts";

/** The test Worker: the store's operations over fetch, its JobStateObject, and a consumer that records what the JOBS queue delivers. */
const DRIVER = `
import { WorkersJobStore, PART_BYTES } from "./job-store.ts";
import { WorkersJobQueue } from "./job-queue.ts";
export { JobStateObject } from "./job-state-object.ts";

/** What the store asked of R2, to tell a plain put from a multipart upload. */
let stats = { puts: 0, multipart: 0, parts: [], aborted: 0, completed: 0 };
const delivered = [];

function counted(bucket) {
  return {
    get: (k) => bucket.get(k),
    delete: (k) => bucket.delete(k),
    put: (k, v, o) => (stats.puts++, bucket.put(k, v, o)),
    async createMultipartUpload(k, o) {
      stats.multipart++;
      const u = await bucket.createMultipartUpload(k, o);
      return {
        uploadPart: (n, v) => (stats.parts.push(v.byteLength), u.uploadPart(n, v)),
        abort: () => (stats.aborted++, u.abort()),
        complete: (p) => (stats.completed++, u.complete(p)),
      };
    },
  };
}

const b64 = (bytes) => {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/stats") {
      const out = Response.json({ ...stats, partBytes: PART_BYTES });
      if (request.method === "DELETE") stats = { puts: 0, multipart: 0, parts: [], aborted: 0, completed: 0 };
      return out;
    }
    if (url.pathname === "/delivered") return Response.json(delivered);
    const name = request.headers.get("x-store");
    const store = new WorkersJobStore({ state: env.JOB_STATE, bucket: counted(env.JOB_RESULTS), objectName: "jobs-" + name, prefix: name + "/" });
    const queue = new WorkersJobQueue(env.JOBS);
    try {
      if (url.pathname === "/put-result") {
        const head = JSON.parse(request.headers.get("x-head"));
        await store.putResult(request.headers.get("x-id"), head, request.headers.has("x-null-body") ? null : request.body);
        return Response.json({ value: null });
      }
      const { op, args } = await request.json();
      if (op === "result") {
        const r = await store.result(args[0]);
        if (!r) return new Response(null, { status: 404 });
        return new Response(r.body, { headers: { "x-head": JSON.stringify({ status: r.status, headers: r.headers }) } });
      }
      if (op === "create") {
        const [record, req] = args;
        await store.create(record, { ...req, body: req.body === null ? null : unb64(req.body) });
        return Response.json({ value: null });
      }
      if (op === "request") {
        const r = await store.request(args[0]);
        return Response.json({ value: r ? { ...r, body: r.body === null ? null : b64(r.body) } : null });
      }
      if (op === "enqueue") return Response.json({ value: (await queue.enqueue(...args)) ?? null });
      const value = await store[op](...args);
      return Response.json({ value: value ?? null });
    } catch (err) {
      return Response.json({ error: String(err && err.stack || err) }, { status: 500 });
    }
  },
  async queue(batch) {
    for (const m of batch.messages) delivered.push({ body: m.body, attempts: m.attempts, at: Date.now() });
    batch.ackAll();
  },
};
`;

let mf: Miniflare;
let base: string;

beforeAll(async () => {
  const contents = await bundleForWorkers({ source: DRIVER, resolveDir: fileURLToPath(new URL("../../adapters/cloudflare/", import.meta.url)) });
  mf = new Miniflare({
    modules: [{ type: "ESModule", path: "driver.js", contents }],
    compatibilityDate: COMPATIBILITY_DATE,
    durableObjects: { JOB_STATE: JOB_STATE_CLASS },
    ...jobOptions(),
    host: "127.0.0.1",
    port: 0,
  });
  base = (await mf.ready).origin;
}, 60_000);

afterAll(async () => {
  await mf?.dispose();
});

const b64 = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");

/** A JobStore whose every call runs in the test Worker, on a store of its own. */
class ForwardedStore implements JobStore {
  constructor(readonly name: string) {}

  private async call<T>(op: string, ...args: unknown[]): Promise<T> {
    const res = await fetch(`${base}/op`, { method: "POST", headers: { "x-store": this.name, "content-type": "application/json" }, body: JSON.stringify({ op, args }) });
    const answer = (await res.json()) as { value?: T; error?: string };
    if (answer.error !== undefined) throw new Error(answer.error);
    return answer.value as T;
  }

  create(record: JobRecord, request: JobRequest): Promise<void> {
    return this.call("create", record, { ...request, body: request.body === null ? null : b64(request.body) });
  }

  async get(id: string): Promise<JobRecord | undefined> {
    return (await this.call<JobRecord | null>("get", id)) ?? undefined;
  }

  async request(id: string): Promise<JobRequest | undefined> {
    const r = await this.call<(Omit<JobRequest, "body"> & { body: string | null }) | null>("request", id);
    if (!r) return undefined;
    return { ...r, body: r.body === null ? null : new Uint8Array(Buffer.from(r.body, "base64")) };
  }

  async update(id: string, patch: Partial<Omit<JobRecord, "id">>): Promise<JobRecord | undefined> {
    return (await this.call<JobRecord | null>("update", id, patch)) ?? undefined;
  }

  async putResult(id: string, head: JobResultHead, body: ReadableStream<Uint8Array> | null): Promise<void> {
    const headers: Record<string, string> = { "x-store": this.name, "x-id": id, "x-head": JSON.stringify(head) };
    if (!body) headers["x-null-body"] = "1";
    const res = await fetch(`${base}/put-result`, { method: "POST", headers, body, duplex: "half" } as RequestInit);
    const answer = (await res.json()) as { error?: string };
    if (answer.error !== undefined) throw new Error(answer.error);
  }

  async result(id: string): Promise<JobResult | undefined> {
    const res = await fetch(`${base}/op`, { method: "POST", headers: { "x-store": this.name }, body: JSON.stringify({ op: "result", args: [id] }) });
    if (res.status === 404) {
      await res.body?.cancel();
      return undefined;
    }
    if (!res.ok) throw new Error(`result: ${res.status} ${await res.text()}`);
    const head = JSON.parse(res.headers.get("x-head")!) as JobResultHead;
    return { ...head, body: res.body as ReadableStream<Uint8Array> };
  }

  dropPayload(id: string): Promise<void> {
    return this.call("dropPayload", id);
  }

  forget(id: string): Promise<void> {
    return this.call("forget", id);
  }

  unfinished(): Promise<string[]> {
    return this.call("unfinished");
  }

  finishedBefore(before: number): Promise<string[]> {
    return this.call("finishedBefore", before);
  }
}

class ForwardedQueue implements JobQueue {
  constructor(private readonly store: ForwardedStore) {}

  async enqueue(id: string, delayMs?: number): Promise<void> {
    const res = await fetch(`${base}/op`, { method: "POST", headers: { "x-store": this.store.name }, body: JSON.stringify({ op: "enqueue", args: delayMs === undefined ? [id] : [id, delayMs] }) });
    const answer = (await res.json()) as { error?: string };
    if (answer.error !== undefined) throw new Error(answer.error);
  }
}

function open() {
  const store = new ForwardedStore(randomUUID());
  return { store, queue: new ForwardedQueue(store) };
}

jobStoreSuite("workers (JobStateObject + R2 + Queues, miniflare)", async () => ({ ...open(), close: async () => undefined }));

interface R2Stats {
  puts: number;
  multipart: number;
  parts: number[];
  aborted: number;
  completed: number;
  partBytes: number;
}
const stats = async (reset = false): Promise<R2Stats> => (await fetch(`${base}/stats`, { method: reset ? "DELETE" : "GET" })).json() as Promise<R2Stats>;
const sameBytes = (a: Uint8Array, b: Uint8Array) => a.byteLength === b.byteLength && Buffer.from(a).equals(Buffer.from(b));

describe("WorkersJobStore on R2: results past one part", () => {
  it("streams a 12 MiB body as a multipart upload of equal 5 MiB parts (the last shorter), byte for byte", async () => {
    const { store } = open();
    const id = randomUUID();
    await store.create(newRecord(id), newRequest());
    const body = pseudoRandomBytes(12 * 1024 * 1024 + 5, 11);
    await stats(true);
    await store.putResult(id, { status: 200, headers: [["content-type", "application/octet-stream"]] }, streamOf(body, 64 * 1024 + 3));
    const s = await stats();
    expect(s.multipart).toBe(1);
    expect(s.completed).toBe(1);
    expect(s.puts).toBe(0);
    expect(s.parts.length).toBe(3);
    // Every part but the last is one part's size: at most a part is held at a time.
    expect(s.parts.slice(0, -1).every((n) => n === s.partBytes)).toBe(true);
    expect(s.parts.at(-1)!).toBeLessThanOrEqual(s.partBytes);
    const result = await store.result(id);
    expect(result?.status).toBe(200);
    expect(result?.headers).toEqual([["content-type", "application/octet-stream"]]);
    expect(sameBytes(await readBytes(result!.body), body)).toBe(true);
  });

  it("a body ending exactly at a part boundary is stored whole", async () => {
    const { store } = open();
    const id = randomUUID();
    const head: JobResultHead = { status: 200, headers: [] };
    const { partBytes } = await stats(true);
    // Head and body fill exactly two parts.
    const headBytes = Buffer.byteLength(JSON.stringify(head));
    const body = pseudoRandomBytes(2 * partBytes - headBytes, 5);
    await store.putResult(id, head, streamOf(body, 1024 * 1024));
    const s = await stats();
    expect(s.parts).toEqual([partBytes, partBytes]);
    expect(sameBytes(await readBytes((await store.result(id))!.body), body)).toBe(true);
  });

  it("a body that fails after a part was sent aborts the upload, and the earlier result stays", async () => {
    const { store } = open();
    const id = randomUUID();
    const first = pseudoRandomBytes(2000, 2);
    await store.putResult(id, { status: 200, headers: [["x-run", "1"]] }, streamOf(first, 500));
    await stats(true);
    const big = pseudoRandomBytes(6 * 1024 * 1024, 3);
    let offset = 0;
    const failing = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (offset >= big.length) return controller.error(new Error("backend reset"));
        controller.enqueue(big.slice(offset, offset + 256 * 1024));
        offset += 256 * 1024;
      },
    });
    await expect(store.putResult(id, { status: 200, headers: [["x-run", "2"]] }, failing)).rejects.toThrow();
    await until("the upload aborted", async () => (await stats()).aborted === 1);
    const s = await stats();
    expect(s.multipart).toBe(1);
    expect(s.completed).toBe(0);
    const result = await store.result(id);
    expect(result?.headers).toEqual([["x-run", "1"]]);
    expect(sameBytes(await readBytes(result!.body), first)).toBe(true);
  });
});

describe("WorkersJobQueue on Queues", () => {
  it("sends { id } as JSON; a delay is rounded up to whole seconds", async () => {
    const { queue } = open();
    const now: string = randomUUID();
    const later: string = randomUUID();
    const sentAt = Date.now();
    await queue.enqueue(now);
    await queue.enqueue(later, 1200);
    const delivered = await until(
      "both ids delivered",
      async () => {
        const all = (await (await fetch(`${base}/delivered`)).json()) as { body: unknown; attempts: number; at: number }[];
        const mine = all.filter((d) => [now, later].includes((d.body as { id?: string }).id ?? ""));
        return mine.length === 2 ? mine : undefined;
      },
      15_000,
      50,
    );
    const of = (id: string) => delivered.find((d) => (d.body as { id: string }).id === id)!;
    expect(of(now).body).toEqual({ id: now });
    expect(of(now).attempts).toBe(1);
    // 1200 ms is sent as 2 s: never earlier than asked (slack for the two clocks).
    expect(of(later).at - sentAt).toBeGreaterThanOrEqual(2000 - 50);
  });
});
