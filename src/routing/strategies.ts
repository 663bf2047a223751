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

/** Backends whose average time to first byte is within this share of the fastest's (or LATENCY_NOISE_MS) count as equally fast. */
const LATENCY_TOLERANCE = 0.25;
const LATENCY_NOISE_MS = 25;

/**
 * Lowest moving-average time to first byte. Unmeasured backends go first; backends within noise
 * of the fastest share the traffic at random (two equal deployments split evenly instead of one
 * winning on a jitter); and a share of requests explores at random so that a backend that was
 * slow is measured again after it recovers.
 */
const latency: Strategy = (c, ctx) => {
  if (c.length > 1 && ctx.random() < ctx.latencyExploration) return random(c, ctx);
  let fastest = Number.POSITIVE_INFINITY;
  for (const b of c) {
    const t = b.live.ttfbMs;
    if (t === undefined) return b;
    if (t < fastest) fastest = t;
  }
  const limit = Math.max(fastest * (1 + LATENCY_TOLERANCE), fastest + LATENCY_NOISE_MS);
  let near = 0;
  for (const b of c) if (b.live.ttfbMs! <= limit) near++;
  let pick = Math.floor(ctx.random() * near);
  for (const b of c) if (b.live.ttfbMs! <= limit && pick-- === 0) return b;
  return c[0]!;
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
