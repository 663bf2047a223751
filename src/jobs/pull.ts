import { later, type Timer } from "../timers.ts";
import type { PulledJobQueue } from "./port.ts";
import type { JobService } from "./service.ts";

export interface PullOptions {
  /** Jobs run at once by this runner. */
  concurrency: number;
  /** How often an empty queue is asked again (another replica may have queued something). */
  pollMs: number;
  /** How often finished jobs past their retention are swept. */
  sweepMs: number;
}

/**
 * The runner of a queue the gateway pulls from (Node: the directory store, or Azure Storage
 * Queue): takes ids while it has room, has the service run each (renewing the id's lease while
 * it runs), and completes the id when the service is done with it. An id the service wants to
 * see again (its job runs elsewhere) stays invisible for as long as the service asks.
 */
export class JobPuller {
  private active = 0;
  private stopped = false;
  private timer: Timer | undefined;
  private sweepTimer: Timer | undefined;
  private pulling = false;
  private again = false;
  private readonly runs = new Set<Promise<void>>();

  constructor(
    private readonly service: JobService,
    private readonly queue: PulledJobQueue,
    private readonly options: PullOptions,
  ) {}

  start(): void {
    this.wake();
    this.scheduleSweep();
  }

  /** Something was queued: look now rather than at the next poll. */
  wake(): void {
    if (this.stopped) return;
    if (this.pulling) {
      this.again = true;
      return;
    }
    this.timer?.clear();
    void this.pull();
  }

  private async pull(): Promise<void> {
    this.pulling = true;
    let delay = this.options.pollMs;
    try {
      do {
        this.again = false;
        const room = this.options.concurrency - this.active;
        if (room <= 0) return;
        const lease = this.service.settings.leaseMs;
        const taken = await this.queue.receive(room, lease);
        for (const d of taken) {
          this.active++;
          const run = (async () => {
            try {
              const r = await this.service.deliver(d.id, (ms) => d.extend(ms));
              if (r.done) await d.complete();
              else await d.extend(r.retryInMs);
            } catch (err) {
              // Left in the queue: it comes back when its lease ends.
              console.error(`sluice: job ${d.id} could not be run:`, err);
            } finally {
              this.active--;
              this.wake();
            }
          })();
          this.runs.add(run);
          void run.finally(() => this.runs.delete(run));
        }
        if (taken.length === room) this.again = true;
      } while (this.again && !this.stopped);
    } catch (err) {
      console.error("sluice: the job queue could not be read:", err);
      delay = Math.max(delay, 5000);
    } finally {
      this.pulling = false;
      if (!this.stopped && this.active < this.options.concurrency) this.timer = later(() => this.wake(), delay);
    }
  }

  private scheduleSweep(): void {
    this.sweepTimer = later(() => {
      this.service
        .sweep()
        .catch((err) => console.error("sluice: sweeping expired jobs failed:", err))
        .finally(() => {
          if (!this.stopped) this.scheduleSweep();
        });
    }, this.options.sweepMs);
  }

  /** No new ids are taken; the service's close decides what happens to the runs under way. */
  stop(): void {
    this.stopped = true;
    this.timer?.clear();
    this.sweepTimer?.clear();
  }
}
