import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { serve } from "@hono/node-server";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import { createUpstreamFetch } from "./upstream.ts";

export interface RunningGateway {
  url: string;
  port: number;
  gateway: Gateway;
  server: Server;
  /** Stops accepting, lets in-flight requests finish within `graceMs`, then closes the rest. */
  close(graceMs?: number): Promise<void>;
}

/** The gateway on Node: @hono/node-server over node:http, Nagle off on every socket. */
export async function startGatewayServer(config: SluiceConfig, overrides: { host?: string; port?: number } = {}): Promise<RunningGateway> {
  const upstream = createUpstreamFetch();
  const gateway = createGateway({ config, fetch: upstream.fetch });
  const host = overrides.host ?? config.server.host;
  const server = serve({
    fetch: gateway.fetch,
    hostname: host,
    port: overrides.port ?? config.server.port,
    createServer,
    serverOptions: { noDelay: true, keepAlive: true, keepAliveTimeout: 65_000 },
  }) as Server;
  server.on("connection", (socket: Socket) => socket.setNoDelay(true));
  await new Promise<void>((resolve, reject) => {
    if (server.listening) return resolve();
    server.once("listening", resolve);
    server.once("error", reject);
  });
  const port = (server.address() as AddressInfo).port;
  const shownHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;

  const close = async (graceMs = config.server.shutdownGraceMs) => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    // Keep-alive connections that finish their last response are closed as they go idle.
    const sweep = setInterval(() => server.closeIdleConnections(), 50);
    server.closeIdleConnections();
    const grace = new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref());
    await Promise.race([closed, grace]);
    clearInterval(sweep);
    server.closeAllConnections();
    await closed;
    await upstream.close();
  };
  return { url: `http://${shownHost}:${port}`, port, gateway, server, close };
}
