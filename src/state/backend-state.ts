import { CircuitBreaker, type BreakerOptions } from "../resilience/breaker.ts";

export type Unavailability = "cooling" | "busy" | "open";

/** How one attempt ended, for the backend's state (see SlotRelease in scheduling/port.ts). */
export type Verdict = "success" | "failure" | "throttled" | "abandoned";

/** A breaker state change, as the store reports it (logged and counted by the gateway). */
export interface BackendBreakerChange {
  backend: string;
  from: string;
  to: string;
  at: number;
  reason: string;
}

/**
 * The live state of one backend, keyed by its name: what the gateway has learned about it
 * (breaker, cooldown, latency) and what it holds there (in-flight leases). It outlives config
 * versions: a reload that keeps a backend's name keeps this, so a cooldown, an open breaker,
 * the latency average and the leases held by requests of the old version stay in force, and
 * every version checks `maxConcurrency` against one count.
 */
export class BackendLive {
  inFlight = 0;
  cooldownUntil = 0;
  /** Moving average of time to first byte; undefined until measured. */
  ttfbMs: number | undefined;
  /** Smooth weighted round-robin running weight. */
  wrrCurrent = 0;
  /** The newest config version's limit: every version's requests are held to it. */
  maxConcurrency = Number.POSITIVE_INFINITY;
  /**
   * The slots of `maxConcurrency` this replica holds when replicas share them (Redis): its
   * leases never exceed it. Undefined without shared state, or while it is unreachable.
   */
  share: number | undefined;
  /**
   * Back from a cooldown but not yet answered: one request (the probe) goes first, and only its
   * answer lets the others follow — no herd of waiters against a deployment that may still throttle.
   */
  private recovering = false;
  private probeOut = false;
  readonly breaker: CircuitBreaker;

  constructor(
    readonly name: string,
    breaker: BreakerOptions,
    onBreakerChange: (change: BackendBreakerChange) => void,
    /** Told of each cooldown an answer through this replica started (to share it with other replicas). */
    private readonly onCooldown?: (backend: string, until: number) => void,
  ) {
    this.breaker = new CircuitBreaker(breaker, (c) => onBreakerChange({ backend: name, ...c }));
  }

  /** Why the backend cannot take a request now, or undefined when it can. */
  unavailable(now: number): Unavailability | undefined {
    if (this.cooldownUntil > now) return "cooling";
    if (!this.breaker.canPass(now)) return "open";
    if (this.atLimit() || (this.recovering && this.probeOut)) return "busy";
    return undefined;
  }

  /** Every slot this replica may use is taken (its share of them, when replicas share them). */
  atLimit(): boolean {
    return this.inFlight >= (this.share === undefined ? this.maxConcurrency : Math.min(this.maxConcurrency, this.share));
  }

  /** When a backend that cannot take requests now may again by itself (a cooldown's end, a breaker's half-open); undefined when a release decides. */
  availableAt(now: number): number | undefined {
    if (this.cooldownUntil > now) return this.cooldownUntil;
    if (this.breaker.state(now) === "open") return this.breaker.reopensAt();
    return undefined;
  }

  /** Takes a lease (and the half-open or after-cooldown probe, if that is the state). */
  acquire(now: number): boolean {
    if (this.unavailable(now) || !this.breaker.tryPass(now)) return false;
    this.inFlight++;
    if (this.recovering) this.probeOut = true;
    return true;
  }

  /**
   * The backend asked not to be called before `until` (its Retry-After): this replica's answer,
   * or another's through shared state. After it, one probe goes first.
   */
  coolDown(until: number): void {
    if (until > this.cooldownUntil) this.cooldownUntil = until;
    this.recovering = true;
  }

  /** Gives a lease back and records what the attempt said about the backend's health. */
  release(verdict: Verdict, now: number, latencyAlpha: number, ttfbMs?: number, cooldownUntil?: number): void {
    if (this.inFlight > 0) this.inFlight--;
    switch (verdict) {
      case "success":
        this.breaker.onSuccess(now);
        if (ttfbMs !== undefined) this.ttfbMs = this.ttfbMs === undefined ? ttfbMs : this.ttfbMs + latencyAlpha * (ttfbMs - this.ttfbMs);
        break;
      case "failure":
        this.breaker.onFailure(now);
        break;
      default:
        this.breaker.onAbandon();
    }
    const throttled = cooldownUntil !== undefined && cooldownUntil > now;
    if (throttled) {
      this.coolDown(cooldownUntil);
      this.onCooldown?.(this.name, cooldownUntil);
    } else if (this.probeOut) {
      // The probe's answer: anything but a new throttle or an abandoned attempt ends the recovery.
      if (verdict !== "abandoned") this.recovering = false;
    }
    if (this.probeOut) this.probeOut = false;
  }

}

/** What the store needs of a config version's backend definition. */
export interface BackendTerms {
  name: string;
  maxConcurrency: number;
  breaker: BreakerOptions;
}

/**
 * The backend-state store: one BackendLive per backend name, kept across config versions.
 * In-process on Node and Azure Functions (one per process), in the Durable Object on Workers.
 * The queue (scheduling/) reads and leases through it; with Redis, a slot broker
 * (scheduling/broker.ts) sets each backend's `share` of the slots every replica shares.
 */
export interface BackendStateStore {
  /** The state of `terms.name`, created on first sight; a newer version's terms replace the old ones. */
  attach(terms: BackendTerms): BackendLive;
  get(name: string): BackendLive | undefined;
  /** Every backend's state seen so far (shared state renews and reports them). */
  all(): IterableIterator<BackendLive>;
  /** Round-robin cursors, per priority group, kept across versions too. */
  cursor(key: string): { next: number };
}

export class InProcessBackendStore implements BackendStateStore {
  private readonly live = new Map<string, BackendLive>();
  private readonly cursors = new Map<string, { next: number }>();

  constructor(
    private readonly onBreakerChange: (change: BackendBreakerChange) => void = logBreakerChange,
    /** Told of each cooldown a backend's answer started here (shared state passes it on). */
    private readonly onCooldown?: (backend: string, until: number) => void,
  ) {}

  attach(terms: BackendTerms): BackendLive {
    let b = this.live.get(terms.name);
    if (!b) {
      b = new BackendLive(terms.name, terms.breaker, this.onBreakerChange, this.onCooldown);
      this.live.set(terms.name, b);
    } else b.breaker.configure(terms.breaker);
    b.maxConcurrency = terms.maxConcurrency;
    return b;
  }

  get(name: string): BackendLive | undefined {
    return this.live.get(name);
  }

  all(): IterableIterator<BackendLive> {
    return this.live.values();
  }

  cursor(key: string): { next: number } {
    let c = this.cursors.get(key);
    if (!c) {
      c = { next: 0 };
      this.cursors.set(key, c);
    }
    return c;
  }
}

/** The default report of a breaker change: one line on the console. */
export function logBreakerChange(c: BackendBreakerChange): void {
  console.warn(`sluice: backend ${c.backend} circuit ${c.from} → ${c.to} (${c.reason})`);
}
