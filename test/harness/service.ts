import { afterAll, beforeAll } from "vitest";

/** A service one test file uses (Azurite, redis-server): started before its tests, stopped after them. */
export function useService<T extends { stop(): Promise<void> }>(what: string, start: () => Promise<T>): () => T {
  let running: T | undefined;
  beforeAll(async () => {
    running = await start();
  });
  afterAll(async () => {
    await running?.stop();
    running = undefined;
  });
  return () => {
    if (!running) throw new Error(`${what} is not running (use it inside hooks or tests)`);
    return running;
  };
}
