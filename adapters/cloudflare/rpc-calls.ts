import { waitUntil } from "cloudflare:workers";

/** Calls made to a Durable Object for one operation, the first included. */
const MAX_CALLS = 3;

/** Transient RPC failures worth one more try (a reset object, a lost connection), not overload. */
function retryable(err: unknown): boolean {
  const e = err as { retryable?: unknown; overloaded?: unknown } | null;
  return e?.retryable === true && e.overloaded !== true;
}

/** The object said it is overloaded: answer the client with back-off instead of retrying. */
export function overloaded(err: unknown): boolean {
  return (err as { overloaded?: unknown } | null)?.overloaded === true;
}

/**
 * Calls `call` until it succeeds or fails for good. Callers pass the same ticket on every try,
 * so an object that did act on a call whose reply was lost answers with what it did.
 */
export async function withRetries<T>(call: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await call();
    } catch (err) {
      if (n >= MAX_CALLS || !retryable(err)) throw err;
    }
  }
}

/**
 * Calls nobody waits for (releases, settlements, cancels, usage events): kept, and the
 * invocation kept alive, until delivered; a failure is logged, never thrown at a request.
 *
 * The invocation kept alive is the one making the call: `waitUntil` from cloudflare:workers is
 * the current request's `ctx.waitUntil`, found through the runtime's async context. So one
 * holder per isolate serves every request, including concurrent ones (a holder told "the
 * current request's ctx" by the fetch handler would hand a later request's ctx to an earlier
 * request's call). The call must start while its request's invocation is alive: the Worker keeps
 * each invocation alive until its exchange has settled (lifetime.ts).
 */
export class BackgroundCalls {
  private readonly pending = new Set<Promise<void>>();

  /**
   * @param label names the calls in the log line of a failure.
   * @param retry whether a transient RPC failure is tried again (withRetries); not for calls
   *   that are not idempotent, such as a queue send.
   */
  constructor(
    private readonly label: string,
    private readonly retry = true,
  ) {}

  send(what: string, call: () => Promise<void>): void {
    let started: Promise<void>;
    try {
      started = this.retry ? withRetries(call) : call();
    } catch (err) {
      started = Promise.reject(err);
    }
    const p = started.catch((err: unknown) => console.error(`sluice: ${this.label} ${what} failed`, err));
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
    try {
      waitUntil(p);
    } catch {
      // Outside a request (no invocation to extend): the promise is still kept above.
    }
  }

  /** Resolves when every call sent so far has been delivered (or has failed and been logged). */
  async flush(): Promise<void> {
    while (this.pending.size) await Promise.all(this.pending);
  }
}
