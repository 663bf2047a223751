import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { clampDelay, later, MAX_TIMER_MS } from "../../src/timers.ts";

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("timers that cannot overflow", () => {
  it("clampDelay keeps every delay a timer can take as given", () => {
    expect(clampDelay(2 ** 31)).toBe(MAX_TIMER_MS);
    expect(clampDelay(Number.POSITIVE_INFINITY)).toBe(MAX_TIMER_MS);
    expect(clampDelay(Number.NaN, 1_000)).toBe(1_000);
    expect(clampDelay(-5)).toBe(0);
    expect(clampDelay(10, 1_000)).toBe(1_000);
    expect(clampDelay(1_500, 1_000)).toBe(1_500);
  });

  it("later() past the 32-bit limit fires when due, not at once and not at the limit", () => {
    const fired = vi.fn();
    const delay = MAX_TIMER_MS + 5_000;
    later(fired, delay);
    vi.advanceTimersByTime(1);
    expect(fired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(MAX_TIMER_MS);
    expect(fired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(5_000);
    expect(fired).toHaveBeenCalledOnce();
  });

  it("a cleared later() never fires, even between its steps", () => {
    const fired = vi.fn();
    const t = later(fired, MAX_TIMER_MS * 2);
    vi.advanceTimersByTime(MAX_TIMER_MS + 1);
    t.clear();
    vi.advanceTimersByTime(MAX_TIMER_MS * 2);
    expect(fired).not.toHaveBeenCalled();
  });
});
