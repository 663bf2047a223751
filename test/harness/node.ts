import { createServer } from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startGatewayServer } from "../../adapters/node/server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { StartGateway, StartGatewayWithEvents } from "./types.ts";
import { usageFile } from "./usage-events.ts";

/** The gateway on Node over real sockets, on an ephemeral 127.0.0.1 port. */
export const startNodeGateway: StartGateway = async (input) => {
  // Usage events on stdout would flood the test output; tests that read them name a sink.
  const running = await startGatewayServer(parseConfig({ metering: { sinks: [] }, ...input }), { host: "127.0.0.1", port: 0 });
  return { url: running.url, close: () => running.close(0) };
};

/** The Node gateway with its usage events in a temp NDJSON file. */
export const startNodeGatewayWithEvents: StartGatewayWithEvents = async (input) => {
  const file = usageFile();
  const running = await startGatewayServer(parseConfig({ ...input, metering: { sinks: [{ type: "file", path: file.path }] } }), { host: "127.0.0.1", port: 0 });
  return {
    url: running.url,
    events: file.events,
    close: async () => {
      await running.close(0);
      file.remove();
    },
  };
};

/**
 * A fresh working directory for a spawned gateway process: the `sluice` command keeps async
 * jobs under `./.sluice/jobs`, one process per directory, so processes started side by side by
 * tests must not share the project's.
 */
export function processCwd(): string {
  return mkdtempSync(join(tmpdir(), "sluice-cwd-"));
}

/** A loopback port free right now, for a gateway process that must be told its port in its config file. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}
