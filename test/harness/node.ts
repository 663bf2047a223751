import { startGatewayServer } from "../../adapters/node/server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { StartGateway } from "./types.ts";

/** The gateway on Node over real sockets, on an ephemeral 127.0.0.1 port. */
export const startNodeGateway: StartGateway = async (input) => {
  // Usage events on stdout would flood the test output; tests that read them name a sink.
  const running = await startGatewayServer(parseConfig({ metering: { sinks: [] }, ...input }), { host: "127.0.0.1", port: 0 });
  return { url: running.url, close: () => running.close(0) };
};
