/** The part of a Workers ExecutionContext the Worker uses. */
export interface WorkerContext {
  waitUntil(promise: Promise<unknown>): void;
}

/**
 * A response body the runtime has stopped taking for this long, while nothing is waiting on the
 * backend, is taken for a client gone: its exchange is cancelled (and settles). workerd's own
 * HTTP server (wrangler dev, miniflare) neither signals nor cancels when a client that left
 * before the response headers is answered: it takes one chunk and then stalls. A live client
 * does not stall a stream this long (a socket's send buffer holds far more than an LLM stream
 * sends in that time). Below the 30 s the platform gives `waitUntil` work after a client leaves.
 * The binding SLUICE_CLIENT_STALL_MS sets another value.
 */
export const STALLED_BODY_MS = 20_000;

/**
 * Runs one request and keeps its invocation alive until the gateway is done with it: until the
 * response body has ended, errored or been cancelled (a relayed body settles its exchange then),
 * or at once for a response without a body.
 *
 * workerd ends a request's invocation when its response is done, and when the client goes away
 * mid-stream it tears the invocation down at once: the body's `cancel` is never called, and
 * nothing more runs for the request — no settlement, no usage event, no call to a Durable
 * Object. With a promise of the invocation still pending in `waitUntil`, it instead cancels the
 * body, whose cancel reaches the relay's, and the work that follows (Durable Object calls, queue
 * sends, each kept alive by `waitUntil` as it starts) is carried out.
 *
 * With the `enable_request_signal` compatibility flag, `request.signal` aborts when workerd sees
 * the client gone (on the first write that fails). This listener is added before the gateway's
 * own (which abort the upstream fetch and any wait in the queue), so a body being relayed is
 * cancelled first: the relay ends as cancelled by the client, not as a failed backend.
 *
 * @param stalledMs see STALLED_BODY_MS.
 */
export async function keptAlive(request: Request, ctx: WorkerContext | undefined, handle: () => Promise<Response>, stalledMs = STALLED_BODY_MS): Promise<Response> {
  let release!: () => void;
  ctx?.waitUntil(new Promise<void>((resolve) => (release = resolve)));
  const signal = request.signal;
  let left = false;
  let cancelBody: ((reason: unknown) => void) | undefined;
  const onLeave = () => {
    left = true;
    cancelBody?.(signal.reason);
  };
  signal.addEventListener("abort", onLeave, { once: true });
  let ended = false;
  let watchdog: ReturnType<typeof setTimeout> | undefined;
  const end = () => {
    if (ended) return;
    ended = true;
    clearTimeout(watchdog);
    signal.removeEventListener("abort", onLeave);
    release();
  };

  let response: Response;
  try {
    response = await handle();
  } catch (err) {
    end();
    throw err;
  }
  const source = response.body;
  if (!source) {
    end();
    return response;
  }
  if (left) {
    // Gone while the answer was on its way: nobody will read it.
    void source.cancel(signal.reason).catch(() => undefined).finally(end);
    return response;
  }
  const reader = source.getReader();
  // The invocation ends once the cancel has run (the relay settles in it), not before.
  const cancel = (reason: unknown) => reader.cancel(reason).catch(() => undefined).finally(end);
  cancelBody = (reason) => {
    if (!ended) void cancel(reason);
  };

  /** A read of the gateway's body is under way (the backend may be silent: not the client's doing). */
  let reading = false;
  /** When the runtime last had a chunk from us (or the response), and has not asked for more since. */
  let idleSince = Date.now();
  const watch = () => {
    if (ended) return;
    if (!reading && Date.now() - idleSince >= stalledMs) {
      left = true;
      void cancel(new Error(`the client took nothing for ${stalledMs} ms: presumed gone`));
      return;
    }
    watchdog = setTimeout(watch, stalledMs / 2);
  };
  watchdog = setTimeout(watch, stalledMs / 2);

  const body = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        reading = true;
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          end();
          controller.error(err);
          return;
        } finally {
          reading = false;
          idleSince = Date.now();
        }
        if (left) {
          // Cancelled on the client's leaving: not a finished body.
          controller.error(signal.reason ?? new Error("the client went away"));
          return;
        }
        if (chunk.done) {
          end();
          controller.close();
          return;
        }
        controller.enqueue(chunk.value);
      },
      cancel(reason) {
        return cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  return new Response(body, response);
}
