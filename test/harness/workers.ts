import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import type { StartGateway } from "./types.ts";

const entry = fileURLToPath(new URL("../../adapters/cloudflare/worker.ts", import.meta.url));
let bundled: Promise<string> | undefined;

/** Bundles the Workers entry once per test process, as wrangler would. */
function bundleWorker(): Promise<string> {
  bundled ??= build({
    entryPoints: [entry],
    bundle: true,
    format: "esm",
    platform: "neutral",
    mainFields: ["module", "main"],
    write: false,
    logLevel: "error",
  }).then((r) => r.outputFiles[0]!.text);
  return bundled;
}

/** The gateway under workerd via miniflare, on an ephemeral 127.0.0.1 port. */
export const startWorkersGateway: StartGateway = async (input) => {
  const contents = await bundleWorker();
  const mf = new Miniflare({
    modules: [{ type: "ESModule", path: "worker.js", contents }],
    compatibilityDate: "2026-04-01",
    bindings: { SLUICE_CONFIG: JSON.stringify(input) },
    host: "127.0.0.1",
    port: 0,
  });
  const url = await mf.ready;
  return { url: url.origin, close: () => mf.dispose() };
};
