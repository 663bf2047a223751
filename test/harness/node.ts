import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { startGatewayServer } from "../../adapters/node/server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { StartGateway, StartGatewayWithEvents } from "./types.ts";
import { until } from "./until.ts";
import { usageFile } from "./usage-events.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));

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

export interface GatewayProcess {
  child: ChildProcess;
  /** Resolves when the process has exited. */
  exited: Promise<unknown>;
  /** What it wrote to stdout and stderr so far. */
  output(): string;
  /** SIGKILL unless it exited already, then waits for the exit (for cleanup). */
  kill(): Promise<void>;
}

/** The `sluice` command in a process of its own, on a config file; resolves once it listens. */
export async function gatewayProcess(configFile: string, cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<GatewayProcess> {
  // Node itself with tsx's loader (not the tsx wrapper, whose child would outlive a SIGKILL).
  const loader = pathToFileURL(join(root, "node_modules/tsx/dist/loader.mjs")).href;
  const child = spawn(process.execPath, ["--import", loader, join(root, "adapters/node/main.ts"), "--config", configFile], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  };
  try {
    await until("the gateway listening", () => out.includes("listening on") || child.exitCode !== null, 20_000, 50);
  } catch (err) {
    await kill();
    throw new Error(`${(err as Error).message}; it wrote: ${out}`);
  }
  if (child.exitCode !== null) throw new Error(`the gateway exited (${child.exitCode}) before listening: ${out}`);
  return { child, exited, output: () => out, kill };
}
