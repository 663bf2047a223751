/**
 * The Redis connection shared state goes through (config `state.redis`), for Node and Azure
 * Functions. One client per process; nothing on it may hang a request:
 *
 * - every command gives up after `commandTimeoutMs` (default 250 ms);
 * - a command issued while the connection is down fails at once (no offline queue), and one in
 *   flight when it drops is not retried: the caller falls back instead of waiting;
 * - reconnects go on for as long as the process runs, each after a backoff that doubles from
 *   50 ms up to `maxBackoffMs` (default 2 s), with some jitter so replicas do not reconnect in step.
 *
 * `healthy` says whether the connection is up and ready now; `onHealth` reports each change.
 */
import type { Redis, RedisOptions } from "ioredis";
import type { RedisStateConfig } from "../../src/config/schema.ts";

export interface RedisConnectionOptions {
  /** A command not answered within this long fails (default 250 ms). */
  commandTimeoutMs?: number;
  /** A connection attempt not established within this long fails and is retried (default 1,000 ms). */
  connectTimeoutMs?: number;
  /** Longest wait between reconnect attempts (default 2,000 ms). */
  maxBackoffMs?: number;
}

export interface RedisConnection {
  readonly client: Redis;
  /** `state.redis.keyPrefix`: every key the gateway writes starts with it. */
  readonly keyPrefix: string;
  /** The connection is up and ready for commands. */
  readonly healthy: boolean;
  /** Why it is not, when it is not (the last connection error). */
  readonly lastError: string | undefined;
  /** Calls `listener` on every change of `healthy`; returns the unsubscribe. */
  onHealth(listener: (healthy: boolean, reason?: string) => void): () => void;
  /** Resolves with `healthy` once the connection is ready, or after `timeoutMs` without it. */
  ready(timeoutMs: number): Promise<boolean>;
  /** Closes the connection for good (no reconnect); idempotent. */
  close(): Promise<void>;
}

/** The delay before reconnect attempt `times` (1, 2, …): 50 ms doubling to `max`, ±20% jitter. */
export function reconnectDelay(times: number, max: number): number {
  const base = Math.min(max, 50 * 2 ** Math.min(20, Math.max(0, times - 1)));
  return Math.max(10, Math.round(base * (0.8 + Math.random() * 0.4)));
}

/** The URL without its password, for log lines. */
export function redactedUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(invalid URL)";
  }
}

/**
 * Opens the connection (in the background: use `ready` to wait for it). The client library is
 * loaded here, so a gateway without `state.redis` never loads it.
 */
export async function openRedis(config: Pick<RedisStateConfig, "url" | "keyPrefix">, options: RedisConnectionOptions = {}): Promise<RedisConnection> {
  const { Redis } = await import("ioredis");
  const maxBackoffMs = options.maxBackoffMs ?? 2_000;
  const redisOptions: RedisOptions = {
    commandTimeout: options.commandTimeoutMs ?? 250,
    connectTimeout: options.connectTimeoutMs ?? 1_000,
    // Fail fast instead of queueing: the limiter falls back to its in-process budgets.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (times) => reconnectDelay(times, maxBackoffMs),
    connectionName: "sluice",
    lazyConnect: false,
  };
  const client = new Redis(config.url, redisOptions);
  const listeners = new Set<(healthy: boolean, reason?: string) => void>();
  let healthy = false;
  let lastError: string | undefined;
  let closed = false;
  const set = (next: boolean, reason?: string) => {
    if (next === healthy) return;
    healthy = next;
    for (const l of listeners) l(next, reason);
  };
  client.on("ready", () => {
    lastError = undefined;
    set(true);
  });
  // Without a listener an "error" event would throw; the owner of the connection logs outages.
  client.on("error", (err: Error) => {
    lastError = err.message || String(err);
  });
  client.on("close", () => set(false, lastError ?? "connection closed"));
  client.on("end", () => set(false, lastError ?? "connection ended"));

  const connection: RedisConnection = {
    client,
    keyPrefix: config.keyPrefix,
    get healthy() {
      return healthy && client.status === "ready";
    },
    get lastError() {
      return lastError;
    },
    onHealth(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    ready(timeoutMs) {
      if (healthy) return Promise.resolve(true);
      return new Promise<boolean>((resolve) => {
        const done = (ok: boolean) => {
          clearTimeout(timer);
          off();
          resolve(ok);
        };
        const timer = setTimeout(() => done(healthy), timeoutMs);
        const off = connection.onHealth((h) => h && done(true));
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      listeners.clear();
      // disconnect, not quit: quit would wait for an answer from a server that may be gone.
      client.disconnect(false);
    },
  };
  return connection;
}
