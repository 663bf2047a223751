/**
 * One conformance suite for the job handoff's ports (src/jobs/port.ts), run against every
 * JobStore / JobQueue implementation so the runtimes keep one semantics.
 *
 * Each test opens a fresh store and queue and closes them after, so listings and receives only
 * ever see that test's jobs. Queue timing is checked with lower bounds and bounded polls, never
 * with an upper bound on speed: an implementation may round a lease up (Azure Storage Queue
 * rounds to whole seconds), so the suite waits past the longest rounding it allows (1 s) where
 * it has to prove something is still hidden.
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { TERMINAL, type JobDelivery, type JobQueue, type JobRecord, type JobRequest, type JobStatus, type JobStore, type PulledJobQueue } from "../../src/jobs/port.ts";
import { until } from "../harness/until.ts";

export interface OpenedJobStore {
  store: JobStore;
  queue: PulledJobQueue | JobQueue;
  close(): Promise<void>;
}

/** The coarsest lease granularity an implementation may round up to. */
const MAX_ROUNDING_MS = 1000;

/** A plausible queued record; `patch` overrides any field. */
export function newRecord(id: string, patch: Partial<JobRecord> = {}): JobRecord {
  return {
    id,
    requestId: `req-${id}`,
    owner: { caller: "alice", app: "notebook", groups: ["research", "ops"], profileName: null },
    status: "queued",
    priority: 2,
    createdAt: 1_700_000_000_000,
    startedAt: null,
    finishedAt: null,
    deadline: 1_700_000_600_000,
    runs: 0,
    attempts: 0,
    backend: null,
    model: "gpt-4o",
    usage: null,
    resultStatus: null,
    error: null,
    runner: null,
    heartbeatAt: null,
    cancelRequested: false,
    notified: false,
    ...patch,
  };
}

export function newRequest(patch: Partial<JobRequest> = {}): JobRequest {
  return {
    method: "POST",
    target: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    headers: [
      ["content-type", "application/json"],
      ["x-b", "2"],
      ["x-a", "1"],
      ["x-a", "again"],
    ],
    body: new TextEncoder().encode(JSON.stringify({ messages: [{ role: "user", content: "hello" }] })),
    ...patch,
  };
}

/** Every byte value, twice, so no encoding step can pass for identity. */
export function everyByte(): Uint8Array {
  const bytes = new Uint8Array(512);
  for (let i = 0; i < bytes.length; i++) bytes[i] = i % 256;
  return bytes;
}

/** Deterministic, incompressible-looking bytes. */
export function pseudoRandomBytes(length: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** A stream that hands out `bytes` in chunks of `chunkSize`, only as they are pulled. */
export function streamOf(bytes: Uint8Array, chunkSize: number): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (offset >= bytes.length) return controller.close();
        const end = Math.min(bytes.length, offset + chunkSize);
        // A copy, so the store cannot get away with keeping a view of the caller's array.
        controller.enqueue(bytes.slice(offset, end));
        offset = end;
      },
    },
    { highWaterMark: 0 },
  );
}

export function streamOfChunks(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        const chunk = chunks[i++];
        if (chunk) controller.enqueue(chunk.slice());
        else controller.close();
      },
    },
    { highWaterMark: 0 },
  );
}

export async function readBytes(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
    size += value.byteLength;
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.byteLength;
  }
  return out;
}

/** Byte equality with a short message on failure (not a 3 MiB diff). */
function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.byteLength, "body length").toBe(expected.byteLength);
  const first = actual.findIndex((b, i) => b !== expected[i]);
  expect(first, "first differing byte").toBe(-1);
}

function isPulled(queue: PulledJobQueue | JobQueue): queue is PulledJobQueue {
  return typeof (queue as Partial<PulledJobQueue>).receive === "function";
}

/** One receive, answering the delivery of `id` or undefined (for `until`, which wants a falsy miss). */
async function receiveOne(queue: PulledJobQueue, id: string): Promise<[JobDelivery] | undefined> {
  const got = (await queue.receive(1, 5000)).filter((d) => d.id === id);
  return got.length === 1 ? [got[0]!] : undefined;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sorted = (ids: string[]) => [...ids].sort();
const jobId = () => randomUUID();

export function jobStoreSuite(name: string, open: () => Promise<OpenedJobStore>): void {
  describe(`JobStore conformance: ${name}`, () => {
    let opened: OpenedJobStore;
    let store: JobStore;

    beforeEach(async () => {
      opened = await open();
      store = opened.store;
    });
    afterEach(async () => {
      await opened?.close();
    });

    describe("records and requests", () => {
      it("create → get → request round-trips the record and the request byte for byte", async () => {
        const id = jobId();
        const record = newRecord(id, {
          owner: { caller: "bob", app: null, groups: [], profileName: "batch" },
          usage: { promptTokens: 1, completionTokens: null, totalTokens: 1, source: "estimate" },
        });
        const body = everyByte();
        const request = newRequest({ body });
        await store.create(record, request);
        expect(await store.get(id)).toEqual(record);
        const back = await store.request(id);
        expect(back).toBeDefined();
        expect(back!.method).toBe(request.method);
        expect(back!.target).toBe(request.target);
        expect(back!.headers).toEqual(request.headers);
        expect(back!.body).toBeInstanceOf(Uint8Array);
        expectSameBytes(back!.body!, body);
      });

      it("keeps a null request body null and an empty one empty", async () => {
        const a = jobId();
        const b = jobId();
        await store.create(newRecord(a), newRequest({ method: "GET", body: null, headers: [] }));
        await store.create(newRecord(b), newRequest({ body: new Uint8Array(0) }));
        const ra = await store.request(a);
        expect(ra).toEqual({ method: "GET", target: newRequest().target, headers: [], body: null });
        const rb = await store.request(b);
        expect(rb!.body).not.toBeNull();
        expect(rb!.body!.byteLength).toBe(0);
      });

      it("answers undefined for an unknown id", async () => {
        const id = jobId();
        expect(await store.get(id)).toBeUndefined();
        expect(await store.request(id)).toBeUndefined();
        expect(await store.result(id)).toBeUndefined();
      });

      it("never finds anything under an id that is a path", async () => {
        const id = jobId();
        await store.create(newRecord(id), newRequest());
        // Rejecting is fine too; answering with another job's data is not.
        for (const bad of [`../${id}`, `${id}/../${id}`, `a/${id}`, "..", ""]) {
          expect(await store.get(bad).catch(() => undefined)).toBeUndefined();
          expect(await store.request(bad).catch(() => undefined)).toBeUndefined();
        }
      });
    });

    describe("update", () => {
      it("merges the patch, returns the merged record and keeps it", async () => {
        const id = jobId();
        const record = newRecord(id);
        await store.create(record, newRequest());
        const patch = { status: "running", startedAt: 1_700_000_001_000, runs: 1, runner: "r-1", heartbeatAt: 1_700_000_001_500 } as const;
        const merged = await store.update(id, patch);
        expect(merged).toEqual({ ...record, ...patch });
        expect(await store.get(id)).toEqual(merged);
        const usage = { promptTokens: 10, completionTokens: 20, totalTokens: 30, source: "usage" };
        const again = await store.update(id, { usage, attempts: 2 });
        expect(again).toEqual({ ...record, ...patch, usage, attempts: 2 });
        expect(await store.get(id)).toEqual(again);
      });

      it("returns undefined for an unknown id and creates nothing", async () => {
        const id = jobId();
        expect(await store.update(id, { status: "running" })).toBeUndefined();
        expect(await store.get(id)).toBeUndefined();
      });

      it("does not lose fields when updates race", async () => {
        const id = jobId();
        const record = newRecord(id);
        await store.create(record, newRequest());
        const patches: Partial<JobRecord>[] = [
          { runs: 3 },
          { attempts: 4 },
          { backend: "east" },
          { model: "gpt-4.1" },
          { runner: "r-9" },
          { heartbeatAt: 123 },
          { error: "boom" },
          { resultStatus: 200 },
          { priority: 7 },
          { cancelRequested: true },
        ];
        await Promise.all(patches.map((p) => store.update(id, p)));
        expect(await store.get(id)).toEqual(Object.assign({}, record, ...patches));
      });

      for (const terminal of TERMINAL) {
        it(`keeps a ${terminal} record ${terminal} while other fields still update`, async () => {
          const id = jobId();
          await store.create(newRecord(id, { status: "running", runs: 1 }), newRequest());
          const finished = await store.update(id, { status: terminal, finishedAt: 1_700_000_009_000, error: terminal === "succeeded" ? null : "why" });
          expect(finished?.status).toBe(terminal);
          for (const late of ["running", "queued", terminal === "succeeded" ? "failed" : "succeeded"] as JobStatus[]) {
            const after = await store.update(id, { status: late, heartbeatAt: 42, runs: 2, notified: true });
            expect(after?.status).toBe(terminal);
            expect(after?.heartbeatAt).toBe(42);
            expect(after?.runs).toBe(2);
            expect(after?.notified).toBe(true);
          }
          const stored = await store.get(id);
          expect(stored?.status).toBe(terminal);
          expect(stored?.finishedAt).toBe(1_700_000_009_000);
          expect(stored?.heartbeatAt).toBe(42);
          // Only a finished result may expire; a cancel stays a cancel.
          const expiring = await store.update(id, { status: "expired" });
          expect(expiring?.status).toBe(terminal === "succeeded" || terminal === "failed" ? "expired" : terminal);
          expect((await store.get(id))?.status).toBe(expiring?.status);
        });
      }
    });

    describe("results", () => {
      const headers: [string, string][] = [
        ["content-type", "text/event-stream"],
        ["set-cookie", "a=1"],
        ["x-request-id", "abc"],
        ["set-cookie", "b=2"],
      ];

      it("stores a 3 MiB body streamed in chunks, byte for byte", async () => {
        const id = jobId();
        await store.create(newRecord(id), newRequest());
        const body = pseudoRandomBytes(3 * 1024 * 1024 + 17);
        await store.putResult(id, { status: 200, headers }, streamOf(body, 64 * 1024 + 3));
        const result = await store.result(id);
        expect(result?.status).toBe(200);
        expect(result?.headers).toEqual(headers);
        expectSameBytes(await readBytes(result!.body), body);
      });

      it("stores a binary body of every byte value, sent in uneven chunks", async () => {
        const id = jobId();
        const bytes = everyByte();
        const chunks = [bytes.subarray(0, 1), bytes.subarray(1, 1), bytes.subarray(1, 200), bytes.subarray(200, 201), bytes.subarray(201)];
        await store.putResult(id, { status: 502, headers: [["content-type", "application/octet-stream"]] }, streamOfChunks(chunks));
        const result = await store.result(id);
        expect(result?.status).toBe(502);
        expect(result?.headers).toEqual([["content-type", "application/octet-stream"]]);
        expectSameBytes(await readBytes(result!.body), bytes);
      });

      it("stores a null body as an empty body", async () => {
        const id = jobId();
        await store.putResult(id, { status: 204, headers: [] }, null);
        const result = await store.result(id);
        expect(result?.status).toBe(204);
        expect(result?.headers).toEqual([]);
        expect((await readBytes(result!.body)).byteLength).toBe(0);
      });

      it("replaces an earlier result (a job that ran twice)", async () => {
        const id = jobId();
        await store.putResult(id, { status: 500, headers: [["x-run", "1"]] }, streamOf(pseudoRandomBytes(100_000, 7), 10_000));
        const second = pseudoRandomBytes(5_000, 9);
        await store.putResult(id, { status: 200, headers: [["x-run", "2"]] }, streamOf(second, 1_000));
        const result = await store.result(id);
        expect(result?.status).toBe(200);
        expect(result?.headers).toEqual([["x-run", "2"]]);
        expectSameBytes(await readBytes(result!.body), second);
      });

      it("rejects when the body stream fails", async () => {
        const id = jobId();
        let sent = 0;
        const failing = new ReadableStream<Uint8Array>({
          pull(controller) {
            if (sent++ === 0) controller.enqueue(pseudoRandomBytes(10_000));
            else controller.error(new Error("backend reset"));
          },
        });
        await expect(store.putResult(id, { status: 200, headers: [] }, failing)).rejects.toThrow();
      });

      it("can be read more than once", async () => {
        const id = jobId();
        const body = pseudoRandomBytes(1000, 3);
        await store.putResult(id, { status: 200, headers: [] }, streamOf(body, 100));
        expectSameBytes(await readBytes((await store.result(id))!.body), body);
        expectSameBytes(await readBytes((await store.result(id))!.body), body);
      });
    });

    describe("dropPayload and forget", () => {
      it("dropPayload removes request and result but keeps the record", async () => {
        const id = jobId();
        const record = newRecord(id, { status: "succeeded", finishedAt: 1_700_000_010_000, resultStatus: 200 });
        await store.create(record, newRequest());
        await store.putResult(id, { status: 200, headers: [] }, streamOf(everyByte(), 100));
        await store.dropPayload(id);
        expect(await store.request(id)).toBeUndefined();
        expect(await store.result(id)).toBeUndefined();
        expect(await store.get(id)).toEqual(record);
        await store.dropPayload(id);
        await store.dropPayload(jobId());
      });

      it("forget removes everything", async () => {
        const id = jobId();
        await store.create(newRecord(id, { status: "failed", finishedAt: 1000, notified: false }), newRequest());
        await store.putResult(id, { status: 500, headers: [] }, null);
        await store.forget(id);
        expect(await store.get(id)).toBeUndefined();
        expect(await store.request(id)).toBeUndefined();
        expect(await store.result(id)).toBeUndefined();
        expect(await store.unfinished()).not.toContain(id);
        expect(await store.finishedBefore(Number.MAX_SAFE_INTEGER)).not.toContain(id);
        expect(await store.update(id, { notified: true })).toBeUndefined();
        await store.forget(id);
      });
    });

    describe("listings", () => {
      it("unfinished() lists queued, running and unnotified finished jobs", async () => {
        const jobs: Record<string, Partial<JobRecord>> = {
          queued: { status: "queued" },
          running: { status: "running", startedAt: 1 },
          succeededUnnotified: { status: "succeeded", finishedAt: 2, notified: false },
          expiredUnnotified: { status: "expired", finishedAt: 2, notified: false },
          failedNotified: { status: "failed", finishedAt: 2, notified: true },
          cancelledNotified: { status: "cancelled", finishedAt: 2, notified: true },
        };
        const ids: Record<string, string> = {};
        for (const [k, patch] of Object.entries(jobs)) {
          ids[k] = jobId();
          await store.create(newRecord(ids[k]!, patch), newRequest());
        }
        expect(sorted(await store.unfinished())).toEqual(sorted([ids.queued!, ids.running!, ids.succeededUnnotified!, ids.expiredUnnotified!]));

        // The listing follows updates: a job starting, finishing, being notified.
        await store.update(ids.succeededUnnotified!, { notified: true });
        await store.update(ids.running!, { status: "failed", finishedAt: 3, notified: true });
        expect(sorted(await store.unfinished())).toEqual(sorted([ids.queued!, ids.expiredUnnotified!]));
      });

      it("finishedBefore(t) lists only jobs with finishedAt < t", async () => {
        const early = jobId();
        const middle = jobId();
        const late = jobId();
        const open = jobId();
        await store.create(newRecord(early, { status: "succeeded", finishedAt: 1_000, notified: true }), newRequest());
        await store.create(newRecord(middle, { status: "failed", finishedAt: 2_000 }), newRequest());
        await store.create(newRecord(late, { status: "cancelled", finishedAt: 3_000 }), newRequest());
        await store.create(newRecord(open, { status: "running" }), newRequest());
        expect(await store.finishedBefore(1_000)).toEqual([]);
        expect(await store.finishedBefore(2_000)).toEqual([early]);
        expect(sorted(await store.finishedBefore(3_000))).toEqual(sorted([early, middle]));
        expect(sorted(await store.finishedBefore(Number.MAX_SAFE_INTEGER))).toEqual(sorted([early, middle, late]));

        await store.update(open, { status: "succeeded", finishedAt: 1_500 });
        expect(sorted(await store.finishedBefore(2_000))).toEqual(sorted([early, open]));
      });
    });

    describe("queue", () => {
      it("accepts enqueue, with and without a delay", async () => {
        await opened.queue.enqueue(jobId());
        await opened.queue.enqueue(jobId(), 100);
      });

      describe("pulled", () => {
        let queue: PulledJobQueue;
        beforeEach(({ skip }) => {
          if (!isPulled(opened.queue)) return skip();
          queue = opened.queue;
        });

        it("receive on an empty queue resolves [] without waiting for messages", async () => {
          // A bound on "at once", far above any round trip, so a long poll fails it.
          let timer: ReturnType<typeof setTimeout> | undefined;
          const timeout = new Promise<"still waiting">((r) => (timer = setTimeout(() => r("still waiting"), 5000)));
          expect(await Promise.race([queue.receive(5, 300), timeout])).toEqual([]);
          clearTimeout(timer);
        });

        it("enqueue → receive gives the id once, with dequeueCount 1", async () => {
          const id = jobId();
          await queue.enqueue(id);
          const [d, ...more] = await queue.receive(10, 5000);
          expect(more).toEqual([]);
          expect(d?.id).toBe(id);
          expect(d?.dequeueCount).toBe(1);
          expect(await queue.receive(10, 5000)).toEqual([]);
          await d!.complete();
        });

        it("hides a received id until its lease ends, then delivers it again with dequeueCount 2", async () => {
          const id = jobId();
          await queue.enqueue(id);
          const leaseMs = 300;
          const [first] = await queue.receive(1, leaseMs);
          const receivedAt = Date.now();
          expect(first?.id).toBe(id);
          expect(await queue.receive(1, leaseMs)).toEqual([]);
          const [again] = await until("the lease to end", () => receiveOne(queue, id), leaseMs + MAX_ROUNDING_MS + 3000, 50);
          // Small slack for the two clocks involved (the store's and ours).
          expect(Date.now() - receivedAt).toBeGreaterThanOrEqual(leaseMs - 50);
          expect(again?.dequeueCount).toBe(2);
          await again!.complete();
        });

        it("extend() keeps an id hidden past its original lease", async () => {
          const id = jobId();
          await queue.enqueue(id);
          const [d] = await queue.receive(1, 300);
          expect(d?.id).toBe(id);
          const extendedAt = Date.now();
          await d!.extend(2000);
          await sleep(MAX_ROUNDING_MS + 300);
          expect(await queue.receive(1, 5000)).toEqual([]);
          const [again] = await until("the extended lease to end", () => receiveOne(queue, id), 6000, 50);
          expect(Date.now() - extendedAt).toBeGreaterThanOrEqual(2000 - 50);
          expect(again?.dequeueCount).toBe(2);
          await again!.complete();
        });

        it("complete() removes the id for good", async () => {
          const id = jobId();
          await queue.enqueue(id);
          const [d] = await queue.receive(1, 300);
          expect(d?.id).toBe(id);
          await d!.extend(300);
          await d!.complete();
          await sleep(MAX_ROUNDING_MS + 300);
          expect(await queue.receive(10, 5000)).toEqual([]);
        });

        it("keeps an id enqueued with delayMs hidden until then", async () => {
          const id = jobId();
          const delayMs = 400;
          const enqueuedAt = Date.now();
          await queue.enqueue(id, delayMs);
          expect(await queue.receive(1, 5000)).toEqual([]);
          const [d] = await until("the delay to pass", () => receiveOne(queue, id), delayMs + MAX_ROUNDING_MS + 3000, 50);
          expect(Date.now() - enqueuedAt).toBeGreaterThanOrEqual(delayMs - 50);
          expect(d?.dequeueCount).toBe(1);
          await d!.complete();
        });

        it("receive(max) returns at most max, and every id exactly once", async () => {
          const ids = Array.from({ length: 5 }, jobId);
          for (const id of ids) await queue.enqueue(id);
          const seen: string[] = [];
          const first = await queue.receive(2, 5000);
          expect(first.length).toBeGreaterThan(0);
          expect(first.length).toBeLessThanOrEqual(2);
          seen.push(...first.map((d) => d.id));
          await until("every id", async () => {
            const batch = await queue.receive(2, 5000);
            expect(batch.length).toBeLessThanOrEqual(2);
            seen.push(...batch.map((d) => d.id));
            return seen.length >= ids.length;
          });
          expect(sorted(seen)).toEqual(sorted(ids));
          expect(await queue.receive(1, 5000)).toEqual([]);
          expect(await queue.receive(0, 5000)).toEqual([]);
        });
      });
    });
  });
}
