import type { SluiceConfigInput } from "../../src/config/schema.ts";

/**
 * The no-config demo: a small "PTU" backend first, spilling over to "PAYG" for high and
 * normal traffic only, both with room for two requests at once, so that a burst of
 * low-priority streams visibly waits in the gateway's queue. Every caller may make async requests.
 */
export function demoConfig(ptuUrl: string, paygUrl: string, port: number): SluiceConfigInput {
  const models = ["gpt-4o", "gpt-4o-mini", { name: "text-embedding-3-small", deployment: "embeddings" }];
  return {
    server: { port },
    // Every demo caller may ask for async jobs (CONTRACT §7), kept under .sluice/jobs.
    profiles: { demo: { async: true } },
    auth: { defaultProfile: "demo" },
    backends: [
      { name: "ptu", url: ptuUrl, kind: "azure-openai", group: 1, maxConcurrency: 2, models, auth: { type: "api-key", key: "ptu-demo-key" } },
      {
        name: "payg",
        url: paygUrl,
        kind: "azure-openai",
        group: 2,
        maxConcurrency: 2,
        priorities: ["high", "normal"],
        models,
        auth: { type: "api-key", key: "payg-demo-key" },
      },
    ],
  };
}

export function demoCurl(url: string): string {
  return [
    `curl -s ${url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 \\`,
    `  -H 'content-type: application/json' -H 'api-key: any-key' \\`,
    `  -d '{"messages":[{"role":"user","content":"Hello, Sluice"}]}' -i`,
  ].join("\n");
}
