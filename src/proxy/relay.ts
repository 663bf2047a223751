import { streamErrorEvent } from "../http/errors.ts";
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

export function relay(
  upstream: ReadableStream<Uint8Array>,
  options: { sse: boolean; api: ApiKind; backend: string; tap?: BodyTap; onEnd: (how: RelayEnd) => void },
): ReadableStream<Uint8Array> {
  const tap = options.tap;
  const reader = upstream.getReader();
  let ended = false;
  const end = (how: RelayEnd) => {
    if (ended) return;
    ended = true;
    options.onEnd(how);
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        // Loops only when the tap held a whole chunk back (part of an event), so the reader still gets bytes.
        for (;;) {
          let chunk: ReadableStreamReadResult<Uint8Array>;
          try {
            chunk = await reader.read();
          } catch (err) {
            end("error");
            if (options.sse) {
              controller.enqueue(streamErrorEvent(options.api, options.backend, tap?.nextSequence?.()));
              controller.close();
            } else controller.error(err);
            return;
          }
          if (chunk.done) {
            const rest = tap?.flush();
            if (rest?.byteLength) controller.enqueue(rest);
            end("complete");
            controller.close();
            return;
          }
          const out = tap ? tap.chunk(chunk.value) : chunk.value;
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
