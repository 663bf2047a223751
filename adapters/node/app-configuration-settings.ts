/** Where Azure App Configuration is, from the environment: kept apart so the SDK loads only when it is used. */
export const APPCONFIG_ENV = {
  connectionString: "SLUICE_APPCONFIG_CONNECTION_STRING",
  key: "SLUICE_APPCONFIG_KEY",
  sentinel: "SLUICE_APPCONFIG_SENTINEL",
  label: "SLUICE_APPCONFIG_LABEL",
  pollMs: "SLUICE_APPCONFIG_POLL_MS",
} as const;

export interface AppConfigSettings {
  connectionString: string;
  /** The store's endpoint, from the connection string (for messages; the secret is never shown). */
  endpoint: string;
  key: string;
  sentinel: string;
  label?: string;
  pollMs: number;
}

/** The settings from the environment; undefined when no connection string is set. Throws on malformed values. */
export function appConfigSettingsFromEnv(env: Record<string, string | undefined>): AppConfigSettings | undefined {
  const connectionString = env[APPCONFIG_ENV.connectionString]?.trim();
  if (!connectionString) return undefined;
  const parts = new Map<string, string>();
  for (const part of connectionString.split(";")) {
    const eq = part.indexOf("=");
    // The secret is base64 and may end in "=": split at the first one only.
    if (eq > 0) parts.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  const endpoint = parts.get("endpoint");
  const missing = ["Endpoint", "Id", "Secret"].filter((name) => !parts.get(name.toLowerCase()));
  if (missing.length || !endpoint) {
    throw new Error(`${APPCONFIG_ENV.connectionString}: expected Endpoint=https://<store>.azconfig.io;Id=<id>;Secret=<secret> (missing ${missing.join(", ")})`);
  }
  if (!URL.canParse(endpoint)) throw new Error(`${APPCONFIG_ENV.connectionString}: Endpoint is not a URL`);
  const pollText = env[APPCONFIG_ENV.pollMs]?.trim();
  const pollMs = pollText ? Number(pollText) : 30_000;
  if (!Number.isInteger(pollMs) || pollMs < 1) throw new Error(`${APPCONFIG_ENV.pollMs}: expected a positive whole number of milliseconds, got "${pollText}"`);
  const label = env[APPCONFIG_ENV.label];
  return {
    connectionString,
    endpoint,
    key: env[APPCONFIG_ENV.key]?.trim() || "sluice:config",
    sentinel: env[APPCONFIG_ENV.sentinel]?.trim() || "sluice:sentinel",
    ...(label ? { label } : {}),
    pollMs,
  };
}

