import { waitUntil } from "cloudflare:workers";
import type { SluiceConfig } from "../../src/config/schema.ts";
import type { ClientSignal } from "../../src/proxy/attempt.ts";
import type { Scheduler, SchedulerStats, SlotDecision, SlotRelease, SlotRequest } from "../../src/scheduling/port.ts";
import type { SchedulerRpc } from "./scheduler-object.ts";

/** The part of a Durable Object namespace binding the client uses. */
export interface SchedulerNamespace {
  idFromName(name: string): unknown;
  get(id: never): SchedulerRpc;
}

/**
 * The name of the scheduler object for a config: one per backend pool, so that every Worker
 * serving the same backends shares one queue, and a config naming other backends starts afresh.
 */
export function poolKey(config: SluiceConfig): string {
  return `pool:${config.backends.map((b) => b.name).sort().join(",")}`;
}

const MAX_CALLS = 3;

/** Transient RPC failures worth one more try (a reset object, a lost connection), not overload. */
function retryable(err: unknown): boolean {
  const e = err as { retryable?: unknown; overloaded?: unknown } | null;
  return e?.retryable === true && e.overloaded !== true;
}

/**
 * The Scheduler port on Workers: every call goes to the pool's SchedulerObject, which holds
 * the one queue all isolates share. A ClientSignal cannot cross the RPC boundary, so an abort
 * here becomes a `cancel` call there.
 */
export class DurableObjectScheduler implements Scheduler {
  /** Tickets of the slots this isolate holds, per backend (slots of one backend are interchangeable). */
  private readonly held = new Map<string, string[]>();
  private readonly background = new Set<Promise<void>>();

  /**
   * @param stub returns a stub of the scheduler object. A Durable Object stub belongs to the
   *   request that made it (using it from another request throws), so a gateway shared by an
   *   isolate's requests passes a function that makes one per call.
   * @param overloadRetryMs Retry-After of the queue-full answer given when the object reports
   *   itself overloaded (the gateway's queue is, in effect, full).
   */
  constructor(
    private readonly stub: () => SchedulerRpc,
    private readonly overloadRetryMs = 1_000,
  ) {}

  acquire(request: SlotRequest, signal?: ClientSignal): Promise<SlotDecision> {
    if (signal?.aborted) return Promise.resolve({ kind: "cancelled" });
    const ticket = crypto.randomUUID();
    return new Promise<SlotDecision>((resolve, reject) => {
      let settled = false;
      const onAbort = () => {
        if (settled) return;
        settled = true;
        resolve({ kind: "cancelled" });
        this.send("cancel", () => this.stub().cancel(ticket));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.call(request, ticket).then(
        (decision) => {
          signal?.removeEventListener("abort", onAbort);
          if (settled) {
            // Cancelled first: the object frees this grant when the cancel reaches it; say it
            // again in case the cancel was lost (a second free of one ticket is a no-op).
            if (decision.kind === "granted") this.send("release", () => this.stub().release(decision.backend, { verdict: "abandoned" }, ticket));
            return;
          }
          settled = true;
          if (decision.kind === "granted") {
            const tickets = this.held.get(decision.backend);
            if (tickets) tickets.push(ticket);
            else this.held.set(decision.backend, [ticket]);
          }
          resolve(decision);
        },
        (err: unknown) => {
          signal?.removeEventListener("abort", onAbort);
          if (settled) return;
          settled = true;
          if ((err as { overloaded?: unknown } | null)?.overloaded === true) resolve({ kind: "queue-full", retryAfterMs: this.overloadRetryMs });
          else reject(err);
        },
      );
    });
  }

  release(backend: string, outcome: SlotRelease): void {
    const tickets = this.held.get(backend);
    const ticket = tickets?.shift();
    if (tickets && !tickets.length) this.held.delete(backend);
    this.send("release", () => this.stub().release(backend, outcome, ticket));
  }

  stats(): Promise<SchedulerStats> {
    return this.stub().stats();
  }

  /** Resolves when every release and cancel sent so far has been delivered (or has failed and been logged). */
  async flush(): Promise<void> {
    while (this.background.size) await Promise.all(this.background);
  }

  private async call(request: SlotRequest, ticket: string): Promise<SlotDecision> {
    for (let n = 1; ; n++) {
      try {
        return await this.stub().acquire(request, ticket);
      } catch (err) {
        // The same ticket again: if the first call did get a slot, the object answers with it.
        if (n >= MAX_CALLS || !retryable(err)) throw err;
      }
    }
  }

  /** A call nobody waits for; kept (and the invocation kept alive) until delivered, its failure logged. */
  private send(what: string, call: () => Promise<void>): void {
    const p = (async () => {
      for (let n = 1; ; n++) {
        try {
          return await call();
        } catch (err) {
          if (n >= MAX_CALLS || !retryable(err)) {
            console.error(`sluice: scheduler ${what} failed`, err);
            return;
          }
        }
      }
    })();
    this.background.add(p);
    void p.finally(() => this.background.delete(p));
    try {
      waitUntil(p);
    } catch {
      // Outside a request (no invocation to extend): the promise is still kept above.
    }
  }
}
