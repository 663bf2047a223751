import { ConfigError, parseConfig } from "../../src/config/load.ts";
import { demoConfig, demoCurl } from "./demo.ts";
import { configVersion, openNodeConfigSource, type ConfigFollower, type LoadedConfig, type NodeConfigSource } from "./reload.ts";
import { DEFAULT_JOBS_DIRECTORY } from "./jobs.ts";
import { startGatewayServer } from "./server.ts";
import { startSimulator, type RunningSimulator } from "./simulator-server.ts";

async function main(): Promise<void> {
  let source: NodeConfigSource | undefined;
  try {
    source = await openNodeConfigSource(process.argv.slice(2), process.env);
  } catch (err) {
    console.error(err instanceof ConfigError ? `sluice: ${err.message}` : `sluice: ${(err as Error).message}`);
    process.exit(2);
  }

  const simulators: RunningSimulator[] = [];
  let loaded: LoadedConfig;
  if (source) {
    loaded = source.initial;
  } else {
    const port = Number(process.env.PORT ?? 8000);
    simulators.push(await startSimulator({ name: "ptu", paceMs: 30 }), await startSimulator({ name: "payg", paceMs: 30 }));
    const demo = demoConfig(simulators[0]!.url, simulators[1]!.url, port);
    loaded = { config: parseConfig(demo), version: configVersion(JSON.stringify(demo)), origin: "demo" };
    console.log(`sluice: no config given; demo mode with simulator backends ptu (${simulators[0]!.url}) and payg (${simulators[1]!.url})`);
  }
  const config = loaded.config;

  const running = await startGatewayServer(config, { version: loaded.version, origin: loaded.origin, jobsDirectory: DEFAULT_JOBS_DIRECTORY });
  const follower: ConfigFollower | undefined = source?.follow(running.holder);
  console.log(
    `sluice: listening on ${running.url} with ${config.backends.length} backend(s); config version ${loaded.version} from ${loaded.origin}${follower ? " (reloaded on change)" : ""}`,
  );
  if (simulators.length) console.log(`try:\n${demoCurl(`http://localhost:${running.port}`)}`);

  // SIGHUP: look for a new config version now.
  process.on("SIGHUP", () => void follower?.check());

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    follower?.close();
    console.log(`sluice: ${signal}: no new connections; finishing in-flight requests (up to ${running.holder.config.server.shutdownGraceMs} ms)`);
    await running.close();
    await Promise.all(simulators.map((s) => s.close()));
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

void main();
