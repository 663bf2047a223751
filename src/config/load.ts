import { configSchema, type SluiceConfig } from "./schema.ts";

/** A configuration that cannot be used; the message names each bad field. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces `${NAME}` (or `${NAME:-fallback}`) in every string of the parsed document.
 * Done after JSON.parse so a secret containing quotes cannot break the document.
 */
export function interpolateEnv(value: unknown, env: Record<string, string | undefined>, path = "", missing: string[] = []): unknown {
  if (typeof value === "string") {
    return value.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
      const v = env[name];
      if (v !== undefined) return v;
      if (fallback !== undefined) return fallback;
      missing.push(`${path || "(root)"}: environment variable ${name} is not set`);
      return "";
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => interpolateEnv(v, env, `${path}[${i}]`, missing));
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = interpolateEnv(v, env, path ? `${path}.${k}` : k, missing);
    return out;
  }
  return value;
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || "(root)";
}

/** Validates a parsed config document (after env interpolation); throws ConfigError naming each field. */
export function parseConfig(doc: unknown, env: Record<string, string | undefined> = {}): SluiceConfig {
  const missing: string[] = [];
  const interpolated = interpolateEnv(doc, env, "", missing);
  if (missing.length) throw new ConfigError(missing);
  const result = configSchema.safeParse(interpolated);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((i) => `${formatPath(i.path)}: ${i.message}`));
  }
  return result.data;
}

/** Parses JSON text, reporting syntax errors as ConfigError too. */
export function parseConfigText(text: string, env: Record<string, string | undefined> = {}, source = "config"): SluiceConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ConfigError([`${source}: not valid JSON (${(err as Error).message})`]);
  }
  return parseConfig(doc, env);
}
