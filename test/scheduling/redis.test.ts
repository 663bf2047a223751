/**
 * The scheduler conformance suite against the in-process queue whose backend slots are shared
 * through Redis (redis-slots.ts): one replica on a real redis-server must behave exactly as the
 * in-process scheduler does.
 */
import { openRedis } from "../../adapters/node/redis.ts";
import { shareSlots } from "../../adapters/node/redis-slots.ts";
import { parseConfig } from "../../src/config/load.ts";
import { BackendPool } from "../../src/routing/pool.ts";
import { createRuntime, type GatewayRuntime } from "../../src/runtime.ts";
import { useRedis } from "../harness/redis.ts";
import { schedulerConformance } from "./scheduler-suite.ts";

const redis = useRedis();
let n = 0;

schedulerConformance("in-process, slots on Redis", async (input) => {
  const conn = await openRedis({ url: redis().url, keyPrefix: `sched${Date.now().toString(36)}${++n}:` });
  await conn.ready(2_000);
  let runtime: GatewayRuntime | undefined;
  const slots = shareSlots(conn, () => runtime!, 2_000);
  runtime = createRuntime({ broker: slots.broker });
  const config = parseConfig(input);
  runtime.adopt(config, new BackendPool(config, runtime.store));
  await slots.sync();
  return {
    scheduler: runtime.scheduler,
    close: async () => {
      await slots.close();
      await conn.close();
    },
  };
});
