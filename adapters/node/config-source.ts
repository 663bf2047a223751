import { readFileSync } from "node:fs";

export const CONFIG_ENV = "SLUICE_CONFIG";

/** The config document as given, before parsing: where it came from, and the file to watch when it is one. */
export interface ConfigText {
  text: string;
  /** The file path, or SLUICE_CONFIG for inline JSON; names the source in error messages. */
  origin: string;
  /** Set when the config is a file (which can then be watched for changes). */
  path?: string;
}

/** `--config PATH` from the command line; undefined when not given. */
export function configPathArg(argv: string[]): string | undefined {
  const i = argv.indexOf("--config");
  const eq = argv.find((a) => a.startsWith("--config="));
  const path = i >= 0 ? argv[i + 1] : eq?.slice("--config=".length);
  if ((i >= 0 || eq !== undefined) && !path) throw new Error("--config needs a file path");
  return path;
}

/** `--config PATH`, else SLUICE_CONFIG (a path, or inline JSON when it starts with "{"); undefined when neither is set. */
export function readNodeConfigText(argv: string[], env: NodeJS.ProcessEnv): ConfigText | undefined {
  const path = configPathArg(argv);
  const source = path ?? env[CONFIG_ENV];
  if (!source) return undefined;
  if (!path && source.trimStart().startsWith("{")) return { text: source, origin: CONFIG_ENV };
  let text: string;
  try {
    text = readFileSync(source, "utf8");
  } catch (err) {
    throw new Error(`cannot read config file ${source}: ${(err as Error).message}`);
  }
  return { text, origin: source, path: source };
}

