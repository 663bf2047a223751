import type { SluiceConfig } from "../../src/config/schema.ts";

/**
 * What a valid config may name that a Worker cannot do, each as a problem naming its field
 * (thrown as a ConfigError when the Worker loads the config: the first version is refused with
 * 503 invalid_config and the log line; a reload to it is refused and the version in use serves on).
 */
export function workersConfigProblems(config: SluiceConfig): string[] {
  const problems: string[] = [];
  if (config.jobs.store) {
    problems.push(
      `jobs.store: a "${config.jobs.store.type}" job store is not available on Workers; jobs are kept in the Worker's bindings JOBS (Queue), JOB_RESULTS (R2) and JOB_STATE (Durable Object), declared in wrangler.toml: remove jobs.store`,
    );
  }
  config.backends.forEach((b, i) => {
    if (b.auth?.type === "managed-identity") {
      problems.push(
        `backends[${i}].auth: backend "${b.name}" uses "managed-identity", which is not available on Workers (a Worker has no Azure managed identity): use "api-key" or "bearer" with the secret in a Worker secret, e.g. { "type": "api-key", "key": "\${AZURE_OPENAI_KEY}" }`,
      );
    }
  });
  return problems;
}
