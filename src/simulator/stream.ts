/** Raised (as a stream error or a rejected fetch) to make the host drop the connection. */
export class SimulatedReset extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SimulatedReset";
  }
}

/** Lifecycle callbacks for one response body; feeds the open/completed/cancelled counters. */
export interface BodyTracker {
  completed(): void;
  cancelled(): void;
  errored(): void;
}

/** Resolves after `ms`, or early (never rejecting) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

export interface PacedBodyOptions {
  paceMs: number;
  /** Error the stream once this many chunks were delivered (after all of them if larger). */
  resetAfter?: number;
  /** After this many chunks, send nothing more until cancelled. */
  stallAfter?: number;
  tracker: BodyTracker;
}

/**
 * A body that hands out one chunk per read. highWaterMark 0 keeps production driven by the
 * consumer, so pacing is observed at the client rather than absorbed by an internal queue,
 * and a reset never discards chunks already produced.
 */
export function pacedBody(chunks: Uint8Array[], options: PacedBodyOptions): ReadableStream<Uint8Array> {
  const { paceMs, resetAfter, stallAfter, tracker } = options;
  const stop = new AbortController();
  let next = 0;
  let finished = false;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const resetDue = resetAfter !== undefined && next >= resetAfter;
        if (next > 0 && paceMs > 0 && (next < chunks.length || resetDue)) {
          await sleep(paceMs, stop.signal);
          if (finished) return;
        }
        if (stallAfter !== undefined && next >= stallAfter) {
          await sleep(600_000, stop.signal);
          return;
        }
        if (resetDue) {
          finished = true;
          tracker.errored();
          controller.error(new SimulatedReset(`simulated reset after ${next} chunks`));
          return;
        }
        const chunk = chunks[next];
        if (chunk === undefined) {
          finished = true;
          tracker.completed();
          controller.close();
          return;
        }
        next += 1;
        controller.enqueue(chunk);
      },
      cancel() {
        if (finished) return;
        finished = true;
        stop.abort();
        tracker.cancelled();
      },
    },
    { highWaterMark: 0 },
  );
}

function startsWithAt(bytes: Uint8Array, at: number, pattern: readonly number[]): boolean {
  if (at + pattern.length > bytes.length) return false;
  return pattern.every((b, i) => bytes[at + i] === b);
}

const LF_LF = [0x0a, 0x0a] as const;
const CRLF_CRLF = [0x0d, 0x0a, 0x0d, 0x0a] as const;

/**
 * Splits a recorded SSE body into events, each keeping its blank-line terminator, so the
 * chunks concatenate to the exact original bytes. Works on bytes to stay byte-identical even
 * for odd encodings.
 */
export function splitEvents(bytes: Uint8Array): Uint8Array[] {
  const events: Uint8Array[] = [];
  let start = 0;
  let i = 0;
  while (i < bytes.length) {
    const sep = startsWithAt(bytes, i, LF_LF) ? 2 : startsWithAt(bytes, i, CRLF_CRLF) ? 4 : 0;
    if (sep > 0) {
      events.push(bytes.subarray(start, i + sep));
      i += sep;
      start = i;
    } else {
      i += 1;
    }
  }
  if (start < bytes.length) events.push(bytes.subarray(start));
  return events;
}

/**
 * Cuts a body into `parts` nearly equal pieces, so a reset after N chunks can truncate a
 * JSON answer mid-way.
 */
export function splitEven(bytes: Uint8Array, parts: number): Uint8Array[] {
  if (parts <= 1 || bytes.length <= 1) return [bytes];
  const n = Math.min(parts, bytes.length);
  const size = Math.ceil(bytes.length / n);
  const out: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += size) out.push(bytes.subarray(at, at + size));
  return out;
}

/** True when a body looks like Server-Sent Events rather than JSON. */
export function looksLikeSse(bytes: Uint8Array): boolean {
  let at = 0;
  if (startsWithAt(bytes, 0, [0xef, 0xbb, 0xbf])) at = 3;
  while (at < bytes.length && (bytes[at] === 0x20 || bytes[at] === 0x0a || bytes[at] === 0x0d || bytes[at] === 0x09)) at += 1;
  const head = new TextDecoder().decode(bytes.subarray(at, at + 6));
  return head.startsWith("data:") || head.startsWith("event:");
}
