import { ConfigError, parseConfig } from "./load.ts";
import type { SluiceConfig } from "./schema.ts";

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const PROFILES_DOCUMENT_FIELDS = new Set(["$schema", "profiles", "apiKeys"]);

/**
 * A config document composed with a profiles document and validated as one config: the
 * document's `profiles` replace the config's of the same name, its `apiKeys` follow the
 * config's `auth.apiKeys`. A problem in what the profiles document brought is reported with
 * the document's name and its own field (`apiKeys[1].hash`), after the merged field's path.
 * Throws ConfigError.
 */
export function composeConfig(
  config: { text: string; origin: string },
  profiles: { text: string; origin: string },
  env: Record<string, string | undefined> = {},
): SluiceConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(config.text);
  } catch (err) {
    throw new ConfigError([`${config.origin}: not valid JSON (${(err as Error).message})`]);
  }
  let extra: unknown;
  try {
    extra = JSON.parse(profiles.text);
  } catch (err) {
    throw new ConfigError([`${profiles.origin}: not valid JSON (${(err as Error).message})`]);
  }
  if (!isPlainObject(extra)) throw new ConfigError([`${profiles.origin}: expected an object with "profiles" and/or "apiKeys"`]);
  const problems: string[] = [];
  for (const k of Object.keys(extra)) {
    if (!PROFILES_DOCUMENT_FIELDS.has(k)) problems.push(`${profiles.origin}: ${k}: unknown field (a profiles document holds "profiles" and "apiKeys")`);
  }
  if (extra.profiles !== undefined && !isPlainObject(extra.profiles)) problems.push(`${profiles.origin}: profiles: expected an object of profiles by name`);
  if (extra.apiKeys !== undefined && !Array.isArray(extra.apiKeys)) problems.push(`${profiles.origin}: apiKeys: expected an array`);
  if (problems.length) throw new ConfigError(problems);
  if (!isPlainObject(doc)) return parseConfig(doc, env);

  const merged: Record<string, unknown> = { ...doc };
  const names = isPlainObject(extra.profiles) ? Object.keys(extra.profiles) : [];
  // A config field of the wrong type is left as it is, for validation to report.
  if (names.length && (doc.profiles === undefined || isPlainObject(doc.profiles))) {
    merged.profiles = { ...(doc.profiles ?? {}), ...(extra.profiles as Record<string, unknown>) };
  }
  let keyBase = -1;
  const keys = Array.isArray(extra.apiKeys) ? (extra.apiKeys as unknown[]) : [];
  const auth = doc.auth;
  if (keys.length && (auth === undefined || isPlainObject(auth)) && (auth?.apiKeys === undefined || Array.isArray(auth.apiKeys))) {
    const own = (auth?.apiKeys as unknown[] | undefined) ?? [];
    keyBase = own.length;
    merged.auth = { ...(auth ?? {}), apiKeys: [...own, ...keys] };
  }
  try {
    return parseConfig(merged, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ConfigError(err.problems.map((p) => attributeProblem(p, profiles.origin, names, keyBase)));
  }
}

/** `auth.apiKeys[3].hash: …` → `auth.apiKeys[3].hash (apiKeys[1].hash in <origin>): …` for what the profiles document brought. */
function attributeProblem(problem: string, origin: string, names: string[], keyBase: number): string {
  const key = /^auth\.apiKeys\[(\d+)\]([^:]*):/.exec(problem);
  if (key && keyBase >= 0 && Number(key[1]) >= keyBase) {
    const at = key[0].length - 1;
    return `${problem.slice(0, at)} (apiKeys[${Number(key[1]) - keyBase}]${key[2]} in ${origin})${problem.slice(at)}`;
  }
  for (const name of names) {
    const prefix = `profiles.${name}`;
    if (problem.startsWith(prefix) && /^[.[:]/.test(problem.slice(prefix.length))) {
      const at = problem.indexOf(":", prefix.length);
      return `${problem.slice(0, at)} (in ${origin})${problem.slice(at)}`;
    }
  }
  return problem;
}
