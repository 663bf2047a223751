import { ConfigError, parseConfig } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";
import { loadNodeConfig } from "./config-source.ts";
import { demoConfig, demoCurl } from "./demo.ts";
import { startGatewayServer } from "./server.ts";
import { startSimulator, type RunningSimulator } from "./simulator-server.ts";

async function main(): Promise<void> {
  let config: SluiceConfig | undefined;
  try {
    config = loadNodeConfig(process.argv.slice(2), process.env);
  } catch (err) {
    console.error(err instanceof ConfigError ? `sluice: ${err.message}` : `sluice: ${(err as Error).message}`);
    process.exit(2);
  }

  const simulators: RunningSimulator[] = [];
  if (!config) {
    const port = Number(process.env.PORT ?? 8000);
    simulators.push(await startSimulator({ name: "ptu", paceMs: 30 }), await startSimulator({ name: "payg", paceMs: 30 }));
    config = parseConfig(demoConfig(simulators[0]!.url, simulators[1]!.url, port));
    console.log(`sluice: no config given; demo mode with simulator backends ptu (${simulators[0]!.url}) and payg (${simulators[1]!.url})`);
  }

  const running = await startGatewayServer(config);
  console.log(`sluice: listening on ${running.url} with ${config.backends.length} backend(s)`);
  if (simulators.length) console.log(`try:\n${demoCurl(`http://localhost:${running.port}`)}`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`sluice: ${signal}: no new connections; finishing in-flight requests (up to ${config!.server.shutdownGraceMs} ms)`);
    await running.close();
    await Promise.all(simulators.map((s) => s.close()));
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

void main();
