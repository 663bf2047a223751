import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import type { Readable } from "node:stream";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { GatewayUnderTest, StartGateway, StartGatewayWithEvents } from "./types.ts";
import { ConsoleEvents } from "./usage-events.ts";

const entry = fileURLToPath(new URL("../../adapters/cloudflare/worker.ts", import.meta.url));
let bundled: Promise<string> | undefined;

/** Bundles a Workers module as wrangler would (runtime modules such as cloudflare:workers left to workerd). */
export async function bundleForWorkers(options: { entry: string } | { source: string; resolveDir: string }): Promise<string> {
  const r = await build({
    ...("entry" in options ? { entryPoints: [options.entry] } : { stdin: { contents: options.source, resolveDir: options.resolveDir, loader: "ts" as const } }),
    bundle: true,
    format: "esm",
    platform: "neutral",
    mainFields: ["module", "main"],
    external: ["cloudflare:*"],
    write: false,
    logLevel: "error",
  });
  return r.outputFiles[0]!.text;
}

/** Bundles the Workers entry once per test process. */
export function bundleWorker(): Promise<string> {
  bundled ??= bundleForWorkers({ entry });
  return bundled;
}

export const COMPATIBILITY_DATE = "2026-04-01";
/** The compatibility flags wrangler.toml sets: request.signal aborts when the client goes away. */
export const COMPATIBILITY_FLAGS = ["enable_request_signal"];
/** The scheduler object as wrangler.toml binds it (SQLite-backed, as new_sqlite_classes declares). */
export const SCHEDULER_CLASS = { className: "SchedulerObject", useSQLite: true } as const;
/** The limiter object as wrangler.toml binds it (SQLite-backed, as new_sqlite_classes declares). */
export const LIMITER_CLASS = { className: "LimiterObject", useSQLite: true } as const;

/** The gateway under workerd via miniflare, on an ephemeral 127.0.0.1 port, with the Durable Object scheduler and limiter. */
export const startWorkersGateway: StartGateway = (input) =>
  // Usage events on the console would flood the test output; tests that read them name a sink.
  startMiniflareGateway({ metering: { sinks: [] }, ...input });

/** The gateway under workerd with a console usage sink, its events picked out of the Worker's stdout. */
export const startWorkersGatewayWithEvents: StartGatewayWithEvents = async (input) => {
  const events = new ConsoleEvents();
  const gw = await startMiniflareGateway({ ...input, metering: { sinks: [{ type: "console" }] } }, (stdout) => {
    stdout.setEncoding("utf8");
    stdout.on("data", (d: string) => events.feed(d));
  });
  return { ...gw, events: () => events.events };
};

async function startMiniflareGateway(config: SluiceConfigInput, stdout?: (s: Readable) => void): Promise<GatewayUnderTest> {
  const contents = await bundleWorker();
  const mf = new Miniflare({
    modules: [{ type: "ESModule", path: "worker.js", contents }],
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: COMPATIBILITY_FLAGS,
    bindings: { SLUICE_CONFIG: JSON.stringify(config) },
    durableObjects: { SCHEDULER: SCHEDULER_CLASS, LIMITER: LIMITER_CLASS },
    host: "127.0.0.1",
    port: 0,
    ...(stdout ? { handleRuntimeStdio: (out: Readable, err: Readable) => (stdout(out), err.resume()) } : {}),
  });
  const url = await mf.ready;
  return { url: url.origin, close: () => mf.dispose() };
}

/**
 * One of several Worker scripts sharing Durable Objects: `objectsIn` names the script that
 * defines them (undefined: this one). Each script is its own isolate with its own gateway.
 */
export function gatewayScript(contents: string, name: string, objectsIn: string | undefined, extra: { bindings?: Record<string, string>; kvNamespaces?: string[]; limiter?: boolean } = {}) {
  const bound = (cls: typeof SCHEDULER_CLASS | typeof LIMITER_CLASS) => (objectsIn ? { ...cls, scriptName: objectsIn } : cls);
  return {
    name,
    modules: [{ type: "ESModule" as const, path: `${name}.js`, contents }],
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: COMPATIBILITY_FLAGS,
    ...(extra.kvNamespaces ? { kvNamespaces: extra.kvNamespaces } : {}),
    bindings: extra.bindings ?? {},
    durableObjects: { SCHEDULER: bound(SCHEDULER_CLASS), ...(extra.limiter ? { LIMITER: bound(LIMITER_CLASS) } : {}) },
  };
}
