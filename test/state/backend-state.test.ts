/**
 * The backend-state conformance suite on each store: in process (one replica, nothing to share)
 * and on Redis (each replica a runtime of its own on its own connection to one redis-server).
 */
import { openSharedState } from "../../adapters/node/shared-state.ts";
import { parseConfig } from "../../src/config/load.ts";
import { BackendPool } from "../../src/routing/pool.ts";
import { createRuntime, type GatewayRuntime } from "../../src/runtime.ts";
import { useRedis } from "../harness/redis.ts";
import { backendStateConformance, type Replica } from "./backend-state-suite.ts";

const redis = useRedis();

backendStateConformance("in-process", async (input, count) => {
  const config = parseConfig(input);
  const runtime = createRuntime();
  runtime.adopt(config, new BackendPool(config, runtime.store));
  const one: Replica = { scheduler: runtime.scheduler, store: runtime.store };
  return { replicas: Array.from({ length: count }, () => one), close: async () => undefined };
});

let n = 0;
const LEASE_MS = 1_500;

backendStateConformance("redis", async (input, count) => {
  const config = parseConfig({ ...input, state: { redis: { url: redis().url, keyPrefix: `bs${Date.now().toString(36)}${++n}:`, leaseMs: LEASE_MS } } });
  const opened: { runtime: GatewayRuntime; shared: Awaited<ReturnType<typeof openSharedState>> }[] = [];
  for (let i = 0; i < count; i++) {
    let runtime: GatewayRuntime | undefined;
    const shared = await openSharedState(config, () => runtime!);
    runtime = createRuntime(shared.runtimeOptions);
    runtime.adopt(config, new BackendPool(config, runtime.store));
    await shared.adopted();
    opened.push({ runtime, shared });
  }
  const closed = new Set<number>();
  return {
    replicas: opened.map(({ runtime }) => ({ scheduler: runtime.scheduler, store: runtime.store })),
    leaseMs: LEASE_MS,
    // A crash says no goodbye: the connection drops, the slots stay recorded until the lease ends.
    crash: async (i) => {
      closed.add(i);
      await opened[i]!.shared.close({ crash: true });
    },
    close: async () => {
      for (const [i, o] of opened.entries()) if (!closed.has(i)) await o.shared.close();
    },
  };
});
