/** The longest delay setTimeout takes (a 32-bit signed count of ms); a longer one fires at once. */
export const MAX_TIMER_MS = 2_147_483_647;

/**
 * A delay setTimeout/setInterval can take as given: within [min, MAX_TIMER_MS], and a NaN
 * (which a timer treats as 0) as `min`. Every timer under src/ goes through this or `later`.
 */
export function clampDelay(ms: number, min = 0): number {
  return Number.isNaN(ms) ? min : Math.max(min, Math.min(MAX_TIMER_MS, ms));
}

/** A timer that may be cancelled. */
export interface Timer {
  clear(): void;
}

/**
 * setTimeout for any delay: one beyond the 32-bit limit is waited for in steps, so a far-future
 * deadline fires when it is due, never at once. Negative or NaN delays fire on the next turn.
 */
export function later(fn: () => void, ms: number): Timer {
  let handle: ReturnType<typeof setTimeout>;
  let cleared = false;
  const arm = (remaining: number) => {
    const step = clampDelay(remaining);
    handle = setTimeout(() => {
      if (cleared) return;
      const rest = remaining - step;
      if (rest > 0) arm(rest);
      else fn();
    }, step);
  };
  arm(Number.isNaN(ms) ? 0 : ms);
  return {
    clear() {
      cleared = true;
      clearTimeout(handle);
    },
  };
}
