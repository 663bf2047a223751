/** The part of a Workers ExecutionContext the Worker uses. */
export interface WorkerContext {
  waitUntil(promise: Promise<unknown>): void;
}

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
 */
export async function keptAlive(request: Request, ctx: WorkerContext | undefined, handle: () => Promise<Response>): Promise<Response> {
  let release!: () => void;
  const whole = new Promise<void>((resolve) => (release = resolve));
  ctx?.waitUntil(whole);
  const signal = request.signal;
  let left = false;
  let cancelBody: ((reason: unknown) => void) | undefined;
  const onLeave = () => {
    left = true;
    cancelBody?.(signal.reason);
  };
  signal.addEventListener("abort", onLeave, { once: true });
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
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
  const body = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          end();
          controller.error(err);
          return;
        }
        if (left) {
          // Cancelled on the client's leaving: not a finished body.
          controller.error(signal.reason);
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
