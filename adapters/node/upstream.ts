import { Agent, fetch as undiciFetch } from "undici";
import type { FetchLike } from "../../src/proxy/attempt.ts";

/**
 * Upstream client for Node: undici's fetch over one keep-alive pool, Nagle off, so a
 * request to a backend reuses a warm connection and small writes leave at once.
 */
export function createUpstreamFetch(options: { connectionsPerOrigin?: number } = {}): { fetch: FetchLike; close(): Promise<void> } {
  const agent = new Agent({
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
    connections: options.connectionsPerOrigin ?? null,
    // Timeouts are the gateway's own per-attempt policy; undici's defaults would cut long streams.
    headersTimeout: 0,
    bodyTimeout: 0,
    connect: { noDelay: true, keepAlive: true },
  });
  const fetchFn: FetchLike = (input, init) =>
    undiciFetch(input, { ...(init as Parameters<typeof undiciFetch>[1]), dispatcher: agent }) as unknown as Promise<Response>;
  return { fetch: fetchFn, close: () => agent.close() };
}
