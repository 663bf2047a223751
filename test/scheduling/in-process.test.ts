import { parseConfig } from "../../src/config/load.ts";
import { inProcessScheduler } from "../../src/runtime.ts";
import { BackendPool } from "../../src/routing/pool.ts";
import { schedulerConformance } from "./scheduler-suite.ts";

schedulerConformance("in-process", async (input) => {
  const config = parseConfig(input);
  return { scheduler: inProcessScheduler(new BackendPool(config), config), close: async () => undefined };
});
