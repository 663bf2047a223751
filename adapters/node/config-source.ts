import { readFileSync } from "node:fs";
import { parseConfigText } from "../../src/config/load.ts";
import type { SluiceConfig } from "../../src/config/schema.ts";

export const CONFIG_ENV = "SLUICE_CONFIG";

/** `--config PATH`, else SLUICE_CONFIG (a path, or inline JSON when it starts with "{"); undefined when neither is set. */
export function loadNodeConfig(argv: string[], env: NodeJS.ProcessEnv): SluiceConfig | undefined {
  const i = argv.indexOf("--config");
  const eq = argv.find((a) => a.startsWith("--config="));
  const path = i >= 0 ? argv[i + 1] : eq?.slice("--config=".length);
  if (i >= 0 && !path) throw new Error("--config needs a file path");
  const source = path ?? env[CONFIG_ENV];
  if (!source) return undefined;
  if (!path && source.trimStart().startsWith("{")) return parseConfigText(source, env, CONFIG_ENV);
  let text: string;
  try {
    text = readFileSync(source, "utf8");
  } catch (err) {
    throw new Error(`cannot read config file ${source}: ${(err as Error).message}`);
  }
  return parseConfigText(text, env, source);
}
