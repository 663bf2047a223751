import { streamErrorEvent } from "../http/errors.ts";
import { IdleReader, type BodyReader } from "./idle-watch.ts";
import type { ApiKind } from "../types.ts";

export type RelayEnd = "complete" | "error" | "cancel";

/**
 * Passes an upstream body to the client chunk by chunk (pull-driven, nothing buffered),
 * and reports once how it ended. A broken SSE stream ends with an `event: error` and no
 * `[DONE]`, so a client cannot mistake it for a finished answer; any other broken body
 * errors the client's stream, so the client sees a truncated transfer.
 * Cancelling the client side cancels the upstream read at once.
 */
/** Sees the body as it passes (metering); returns the bytes to pass on. */
export interface BodyTap {
  chunk(bytes: Uint8Array): Uint8Array;
  /** Bytes still held when the body ends. */
  flush(): Uint8Array | undefined;
  /** One after the last Responses API `sequence_number` seen (for the error event of a broken Responses stream). */
  nextSequence?(): number | undefined;
}

const LF = 0x0a;
const CR = 0x0d;
/** A partial event held back longer than this is passed on anyway: the relay never buffers a stream. */
const HELD_MAX = 64 * 1024;

/** The offset just after the last SSE event boundary (a blank line: LF LF, CR CR, CRLF CRLF, LF CRLF) in `b`, or 0. */
function afterLastEvent(b: Uint8Array): number {
  for (let i = b.byteLength - 1; i >= 1; i--) {
    const c = b[i];
    // LF LF, or CRLF after LF (which covers CRLF CRLF).
    if (c === LF && (b[i - 1] === LF || (i >= 2 && b[i - 1] === CR && b[i - 2] === LF))) return i + 1;
    if (c === CR && b[i - 1] === CR) return i + 1;
  }
  return 0;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

export interface RelayOptions {
  sse: boolean;
  api: ApiKind;
  backend: string;
  tap?: BodyTap;
  /** Longest silence allowed while waiting on the backend; past it the body ends as broken. */
  idleMs: number;
  /** A read already taken (the first, which the attempt loop waited for). */
  first?: ReadableStreamReadResult<Uint8Array>;
  /** Relays in flight, so a shutdown can end them as broken (`interruptAll`) rather than cut them. */
  active?: Set<RelayHandle>;
  onEnd: (how: RelayEnd) => void;
}

/** A relay in flight, as a shutdown sees it. */
export interface RelayHandle {
  /** Ends the body now as a broken one: the SSE error event (no [DONE]), or an errored stream. */
  interrupt(): void;
}

/** Ends every relay in `active` as broken (the end of a shutdown's grace period). */
export function interruptAll(active: Set<RelayHandle>): void {
  for (const r of [...active]) r.interrupt();
}

export function relay(upstream: ReadableStream<Uint8Array> | BodyReader, options: RelayOptions): ReadableStream<Uint8Array> {
  const tap = options.tap;
  const reader = upstream instanceof IdleReader ? upstream : new IdleReader(upstream instanceof ReadableStream ? upstream.getReader() : upstream, options.idleMs);
  let first = options.first;
  let ended = false;
  /**
   * SSE: the start of an event whose end has not arrived. It is passed on with its end, so a
   * stream that breaks mid-event ends with a whole `event: error`, never one glued to half an
   * event (which a client would fail to parse instead of seeing the gateway's message).
   */
  let held: Uint8Array | undefined;
  let interrupted = false;
  const handle: RelayHandle = {
    interrupt() {
      interrupted = true;
      // A pending read then ends (done), and is treated as a break below.
      reader.cancel(new Error("the gateway is shutting down")).catch(() => undefined);
    },
  };
  options.active?.add(handle);
  const end = (how: RelayEnd) => {
    if (ended) return;
    ended = true;
    options.active?.delete(handle);
    options.onEnd(how);
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        // Loops only when the tap held a whole chunk back (part of an event), so the reader still gets bytes.
        for (;;) {
          let chunk: ReadableStreamReadResult<Uint8Array>;
          try {
            if (first) {
              chunk = first;
              first = undefined;
            } else chunk = await reader.read();
            if (interrupted) throw new Error("the gateway is shutting down");
          } catch (err) {
            end("error");
            if (options.sse) {
              held = undefined;
              controller.enqueue(streamErrorEvent(options.api, options.backend, tap?.nextSequence?.()));
              controller.close();
            } else controller.error(err);
            return;
          }
          if (chunk.done) {
            if (held) controller.enqueue(held);
            held = undefined;
            const rest = tap?.flush();
            if (rest?.byteLength) controller.enqueue(rest);
            end("complete");
            controller.close();
            return;
          }
          let out = tap ? tap.chunk(chunk.value) : chunk.value;
          if (options.sse && out.byteLength) {
            if (held) {
              out = concat(held, out);
              held = undefined;
            }
            const cut = afterLastEvent(out);
            if (cut < out.byteLength && out.byteLength - cut <= HELD_MAX) {
              held = out.subarray(cut);
              out = out.subarray(0, cut);
            }
          }
          if (out.byteLength) {
            controller.enqueue(out);
            return;
          }
        }
      },
      cancel(reason) {
        end("cancel");
        return reader.cancel(reason).catch(() => undefined);
      },
    },
    { highWaterMark: 0 },
  );
}
