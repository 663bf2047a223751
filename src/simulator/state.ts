import type { BodyTracker } from "./stream.ts";
import { TokenWindow } from "./tpm.ts";
import type { Fault, ReceivedRequest, SimulatorOptions, SimulatorStats } from "./types.ts";

const KEEP_REQUESTS = 500;

/** Everything a simulator remembers between requests. */
export class SimState {
  readonly name: string;
  readonly fixtures: Record<string, Uint8Array>;
  readonly paceMs: number;
  readonly now: () => number;
  readonly tokens: TokenWindow | undefined;
  queue: Fault[] = [];
  always: Fault | null = null;
  private received = 0;
  private requests: ReceivedRequest[] = [];
  private open = 0;
  private peakOpen = 0;
  private cancelled = 0;
  private completed = 0;
  // Bodies started before a reset() must not move the counters of the next test.
  private generation = 0;

  constructor(options: SimulatorOptions) {
    this.name = options.name;
    this.fixtures = options.fixtures ?? {};
    this.paceMs = options.paceMs ?? 0;
    this.now = options.now ?? Date.now;
    this.tokens = options.tpm !== undefined ? new TokenWindow(options.tpm, this.now) : undefined;
  }

  record(entry: Omit<ReceivedRequest, "seq" | "at">): ReceivedRequest {
    this.received += 1;
    const full: ReceivedRequest = { seq: this.received, at: this.now(), ...entry };
    this.requests.push(full);
    if (this.requests.length > KEEP_REQUESTS) this.requests.splice(0, this.requests.length - KEEP_REQUESTS);
    return full;
  }

  /** Counts one response body as open until it ends one way or another. */
  trackBody(): BodyTracker {
    const generation = this.generation;
    this.open += 1;
    if (this.open > this.peakOpen) this.peakOpen = this.open;
    const settle = (count: () => void) => () => {
      if (generation !== this.generation) return;
      this.open -= 1;
      count();
    };
    return {
      completed: settle(() => (this.completed += 1)),
      cancelled: settle(() => (this.cancelled += 1)),
      errored: settle(() => {}),
    };
  }

  stats(): SimulatorStats {
    return {
      name: this.name,
      received: this.received,
      requests: this.requests.slice(),
      open: this.open,
      peakOpen: this.peakOpen,
      cancelled: this.cancelled,
      completed: this.completed,
    };
  }

  reset(): void {
    this.generation += 1;
    this.received = 0;
    this.requests = [];
    this.open = 0;
    this.peakOpen = 0;
    this.cancelled = 0;
    this.completed = 0;
    this.queue = [];
    this.always = null;
    this.tokens?.clear();
  }
}
