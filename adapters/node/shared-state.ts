/**
 * Everything replicas share through Redis (config `state.redis`), opened once at start for the
 * Node server and the Azure Functions app: budgets (redis-limiter.ts), cooldowns and breakers
 * (redis-backend-state.ts), backend slots and queue order (redis-slots.ts), on one connection.
 * Without `state.redis` nothing is opened and the runtime keeps it all in process.
 */
import type { SluiceConfig } from "../../src/config/schema.ts";
import type { SharedStateStatus } from "../../src/ops.ts";
import type { GatewayRuntime, RuntimeOptions } from "../../src/runtime.ts";
import { backendStateSharing } from "./redis-backend-state.ts";
import { openNodeLimiter } from "./redis-limiter.ts";
import { shareSlots } from "./redis-slots.ts";

export interface NodeSharedState {
  /** For createRuntime: the shared budgets and the hooks that share backend state. */
  runtimeOptions: Pick<RuntimeOptions, "limiter" | "onCooldown" | "onBreakerChange" | "broker">;
  /** For createGateway: what /_gateway/health and /metrics say of it (none without shared state). */
  status?: () => SharedStateStatus;
  /** After each config version is built: its backends' slots are shared (the first call waits for one renewal, bounded). */
  adopted(): Promise<void>;
  /** Stops sharing; `crash` (tests) leaves as a killed process would: the slots stay recorded until their lease ends. */
  close(options?: { crash?: boolean }): Promise<void>;
}

export async function openSharedState(config: SluiceConfig, runtime: () => GatewayRuntime): Promise<NodeSharedState> {
  const limiter = await openNodeLimiter(config);
  const conn = limiter?.connection;
  const backends = backendStateSharing(conn, runtime);
  const slots = conn ? shareSlots(conn, runtime, config.state!.redis!.leaseMs) : undefined;
  return {
    runtimeOptions: { limiter: limiter?.limiter, onCooldown: backends.onCooldown, onBreakerChange: backends.onBreakerChange, broker: slots?.broker },
    status: conn
      ? () => ({
          store: "redis",
          reachable: conn.healthy,
          error: conn.healthy ? null : (conn.lastError ?? "not connected"),
          shares: ["budgets", "cooldowns", "breakers", "slots", "queue order", "latency"],
          backends: slots!.status(),
        })
      : undefined,
    adopted: () => slots?.sync() ?? Promise.resolve(),
    async close(options) {
      await slots?.close(options);
      await backends.close();
      await limiter?.close();
    },
  };
}
