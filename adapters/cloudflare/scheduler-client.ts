import type { SluiceConfig } from "../../src/config/schema.ts";
import type { ClientSignal } from "../../src/proxy/attempt.ts";
import type { Scheduler, SchedulerStats, SlotDecision, SlotRelease, SlotRequest } from "../../src/scheduling/port.ts";
import { BackgroundCalls, overloaded, withRetries } from "./rpc-calls.ts";
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


/**
 * The Scheduler port on Workers: every call goes to the pool's SchedulerObject, which holds
 * the one queue all isolates share. A ClientSignal cannot cross the RPC boundary, so an abort
 * here becomes a `cancel` call there.
 */
export class DurableObjectScheduler implements Scheduler {
  /** Tickets of the slots this isolate holds, per backend (slots of one backend are interchangeable). */
  private readonly held = new Map<string, string[]>();
  private readonly background = new BackgroundCalls("scheduler");

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
        this.background.send("cancel", () => this.stub().cancel(ticket));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.call(request, ticket).then(
        (decision) => {
          signal?.removeEventListener("abort", onAbort);
          if (settled) {
            // Cancelled first: the object frees this grant when the cancel reaches it; say it
            // again in case the cancel was lost (a second free of one ticket is a no-op).
            if (decision.kind === "granted") this.background.send("release", () => this.stub().release(decision.backend, { verdict: "abandoned" }, ticket));
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
          if (overloaded(err)) resolve({ kind: "queue-full", retryAfterMs: this.overloadRetryMs });
          else reject(err);
        },
      );
    });
  }

  release(backend: string, outcome: SlotRelease): void {
    const tickets = this.held.get(backend);
    const ticket = tickets?.shift();
    if (tickets && !tickets.length) this.held.delete(backend);
    this.background.send("release", () => this.stub().release(backend, outcome, ticket));
  }

  stats(): Promise<SchedulerStats> {
    return this.stub().stats();
  }

  /** Resolves when every release and cancel sent so far has been delivered (or has failed and been logged). */
  flush(): Promise<void> {
    return this.background.flush();
  }

  /** The same ticket on every try: if a call did get a slot, the object answers with it. */
  private call(request: SlotRequest, ticket: string): Promise<SlotDecision> {
    return withRetries(() => this.stub().acquire(request, ticket));
  }
}
