import type { Backend } from "./backend.ts";

export type StrategyName = "latency" | "weighted-round-robin" | "round-robin" | "random";

export interface StrategyContext {
  random: () => number;
  latencyExploration: number;
}

/** Picks one of `candidates` (non-empty, all free now). */
export type Strategy = (candidates: readonly Backend[], ctx: StrategyContext) => Backend;

const random: Strategy = (c, ctx) => c[Math.floor(ctx.random() * c.length)]!;

/** Smooth weighted round-robin (as nginx): exact shares, no bursts to one backend. */
const weightedRoundRobin: Strategy = (c) => {
  let total = 0;
  let best = c[0]!;
  for (const b of c) {
    b.live.wrrCurrent += b.weight;
    total += b.weight;
    if (b.live.wrrCurrent > best.live.wrrCurrent) best = b;
  }
  best.live.wrrCurrent -= total;
  return best;
};

/** The cursor comes from the backend-state store, so a reload does not restart the rotation. */
function roundRobin(cursor: { next: number }): Strategy {
  return (c) => c[cursor.next++ % c.length]!;
}

/**
 * Lowest moving-average time to first byte. Unmeasured backends go first, and a share of
 * requests explores at random so that a backend that was slow is measured again after it
 * recovers.
 */
const latency: Strategy = (c, ctx) => {
  if (c.length > 1 && ctx.random() < ctx.latencyExploration) return random(c, ctx);
  let best = c[0]!;
  for (const b of c) {
    if (b.live.ttfbMs === undefined) return b;
    if (b.live.ttfbMs < best.live.ttfbMs!) best = b;
  }
  return best;
};

/** A strategy instance; round-robin keeps its own cursor, so make one per priority group. */
export function createStrategy(name: StrategyName, cursor: { next: number } = { next: 0 }): Strategy {
  switch (name) {
    case "latency":
      return latency;
    case "weighted-round-robin":
      return weightedRoundRobin;
    case "round-robin":
      return roundRobin(cursor);
    case "random":
      return random;
  }
}
