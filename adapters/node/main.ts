import { ConfigError, parseConfig } from "../../src/config/load.ts";
import { demoConfig, demoCurl } from "./demo.ts";
import { configVersion, openNodeConfigSource, type ConfigFollower, type LoadedConfig, type NodeConfigSource } from "./reload.ts";
import { isClusterWorker, superviseWorkers } from "./cluster.ts";
import { DEFAULT_JOBS_DIRECTORY } from "./jobs.ts";
import { startGatewayServer } from "./server.ts";
import { startSimulator, type RunningSimulator } from "./simulator-server.ts";

/** Set (to anything but "", "0" or "false") in the container image: without a config the process exits 2 instead of starting the demo. */
const REQUIRE_CONFIG_ENV = "SLUICE_REQUIRE_CONFIG";
const requireConfig = (env: NodeJS.ProcessEnv) => !["", "0", "false"].includes((env[REQUIRE_CONFIG_ENV] ?? "").trim().toLowerCase());

/** A port that cannot be bound (taken, or privileged) is one line naming host:port and exit 1, not a stack trace; anything else is rethrown. */
function exitOnListenError(err: unknown): never {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  const why = e?.code === "EADDRINUSE" ? "the address is already in use (another process listens there)" : e?.code === "EACCES" ? "permission denied" : e?.code === "EADDRNOTAVAIL" ? "no such local address" : undefined;
  if (!why || e.port === undefined) throw err;
  const at = e.address?.includes(":") ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
  console.error(`sluice: cannot listen on ${at}: ${why}; choose another server.port in the config (or PORT for the demo)`);
  process.exit(1);
}

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
  } else if (requireConfig(process.env)) {
    // The container image sets SLUICE_REQUIRE_CONFIG=1: a deployment without a config fails loudly instead of serving the demo.
    console.error(`sluice: no config given and ${REQUIRE_CONFIG_ENV} is set: pass --config PATH, or set SLUICE_CONFIG (a file path or the JSON itself) or SLUICE_APPCONFIG_CONNECTION_STRING`);
    process.exit(2);
  } else {
    const port = Number(process.env.PORT ?? 8000);
    simulators.push(await startSimulator({ name: "ptu", paceMs: 30 }), await startSimulator({ name: "payg", paceMs: 30 }));
    const demo = demoConfig(simulators[0]!.url, simulators[1]!.url, port);
    loaded = { config: parseConfig(demo), version: configVersion(JSON.stringify(demo)), origin: "demo" };
    console.log(`sluice: no config given; demo mode with simulator backends ptu (${simulators[0]!.url}) and payg (${simulators[1]!.url})`);
  }
  const config = loaded.config;
  // server.workers > 1: this process only supervises; each worker runs all of the below.
  if (config.server.workers > 1 && !isClusterWorker()) return superviseWorkers(config.server.workers);

  // One process owns a job directory: several workers keep jobs only in a shared store (jobs.store.azure).
  const jobsDirectory = config.server.workers > 1 ? undefined : DEFAULT_JOBS_DIRECTORY;
  const running = await startGatewayServer(config, { version: loaded.version, origin: loaded.origin, jobsDirectory }).catch((err: unknown) => exitOnListenError(err));
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
