import type { SluiceConfig } from "../config/schema.ts";
import { configCredentials, type CredentialsFactory } from "../credentials/from-config.ts";
import { InProcessBackendStore, type BackendStateStore } from "../state/backend-state.ts";
import { Backend } from "./backend.ts";
import { createStrategy, type Strategy, type StrategyContext } from "./strategies.ts";

export interface Eligibility {
  /** Some backend serves the model at all (else: 404). */
  modelKnown: boolean;
  /** Names of the backends serving the model at this priority, lowest group first. */
  names: readonly string[];
}

/** Distinct (model, priority) answers kept; a '*' backend lets clients name any model. */
const ELIGIBILITY_CACHE_MAX = 1024;

/** All backends of one config version, grouped by priority group. */
export class BackendPool {
  readonly backends: Backend[];
  private readonly strategies = new Map<number, Strategy>();
  private readonly eligibility = new Map<string, Eligibility>();
  private readonly named: Map<string, Backend>;
  /** Backends of a list of names, kept per list: the eligibility lists are cached, so each is resolved once. */
  private readonly resolved = new WeakMap<readonly string[], readonly Backend[]>();
  private readonly ctx: StrategyContext;

  /**
   * @param store where the backends' live state is kept; a reload passes the same store, so
   *   the state outlives this version.
   */
  constructor(config: SluiceConfig, readonly store: BackendStateStore = new InProcessBackendStore(), random: () => number = Math.random, credentials: CredentialsFactory = configCredentials) {
    this.backends = config.backends
      .map((b) => new Backend(b, config, store, credentials(b)))
      .sort((a, b) => a.group - b.group);
    this.named = new Map(this.backends.map((b) => [b.name, b]));
    for (const b of this.backends) {
      if (!this.strategies.has(b.group)) this.strategies.set(b.group, createStrategy(config.routing.strategy, store.cursor(`group:${b.group}`)));
    }
    this.ctx = { random, latencyExploration: config.routing.latencyExploration };
  }

  /** The backends of these names that this version has, in order; `cache` only for lists that never change (the eligibility lists). */
  resolve(names: readonly string[], cache = true): readonly Backend[] {
    let out = cache ? this.resolved.get(names) : undefined;
    if (!out) {
      out = names.map((n) => this.named.get(n)).filter((b): b is Backend => b !== undefined);
      if (cache) this.resolved.set(names, out);
    }
    return out;
  }

  byName(name: string): Backend | undefined {
    return this.named.get(name);
  }

  /** Which backends may take a request for `model` at `priority`; the answer is the same for every request, so it is kept. */
  eligible(model: string | undefined, priority: number): Eligibility {
    const key = `${priority}|${model ?? ""}`;
    const known = this.eligibility.get(key);
    if (known) return known;
    const names: string[] = [];
    let modelKnown = false;
    for (const b of this.backends) {
      if (b.deploymentFor(model) === undefined) continue;
      modelKnown = true;
      if (b.acceptsPriority(priority)) names.push(b.name);
    }
    const answer = { modelKnown, names };
    if (this.eligibility.size >= ELIGIBILITY_CACHE_MAX) this.eligibility.clear();
    this.eligibility.set(key, answer);
    return answer;
  }

  /** Whether one of the untried backends could take a request now (no strategy state touched). */
  hasFree(eligible: readonly Backend[], tried: ReadonlySet<Backend>, now: number): boolean {
    return eligible.some((b) => !tried.has(b) && !b.unavailable(now));
  }

  /**
   * The next backend to try: the affinity backend when it is free, else the strategy's pick
   * among the free untried backends of the lowest group that has one. Undefined when none is free.
   */
  pick(eligible: readonly Backend[], tried: ReadonlySet<Backend>, now: number, affinity?: string): Backend | undefined {
    if (affinity) {
      const sticky = eligible.find((b) => b.name === affinity);
      if (sticky && !tried.has(sticky) && !sticky.unavailable(now)) return sticky;
    }
    let group = -1;
    let free: Backend[] = [];
    for (const b of eligible) {
      if (b.group !== group) {
        if (free.length) break;
        group = b.group;
      }
      if (!tried.has(b) && !b.unavailable(now)) free.push(b);
    }
    if (!free.length) return undefined;
    return free.length === 1 ? free[0] : this.strategies.get(group)!(free, this.ctx);
  }
}
