/**
 * The deployment templates under deploy/: structurally sound Bicep (no Bicep CLI here: see
 * bicep-lint.ts), parameter files that match them, example configs the gateway accepts, and
 * every environment variable / app setting they set is one the gateway (or its host) reads —
 * and every ${NAME} their example config needs is set.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { configSchema } from "../../src/config/schema.ts";
import { balanced, lintBicep } from "./bicep-lint.ts";

const root = fileURLToPath(new URL("../../", import.meta.url));
const read = (path: string) => readFileSync(join(root, path), "utf8");

function filesUnder(dir: string, ext: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...filesUnder(p, ext));
    else if (e.name.endsWith(ext)) out.push(p);
  }
  return out.sort();
}

/** Every TypeScript file under a directory, recursively. */
function sources(dir: string): string[] {
  return filesUnder(dir, ".ts");
}

/**
 * Names the gateway reads from its environment (Node, Azure Functions): `env.X`, `env["X"]`,
 * `process.env.X`, and the setting names it keeps as constants ("SLUICE_…", "AzureWebJobs…").
 */
function namesTheGatewayReads(): Set<string> {
  const names = new Set<string>();
  for (const file of [...sources("adapters/node"), ...sources("adapters/azure-functions"), ...sources("adapters/azure"), ...sources("src")]) {
    const text = readFileSync(join(root, file), "utf8");
    for (const m of text.matchAll(/\benv(?:\.|\[\s*["'])([A-Za-z_][A-Za-z0-9_]*)/g)) names.add(m[1]!);
    for (const m of text.matchAll(/["'`]((?:SLUICE_|AzureWebJobs|AZURE_)[A-Za-z0-9_]*)["'`]/g)) names.add(m[1]!);
  }
  return names;
}

/** Settings the Functions host reads, not the gateway: each with why it is set. */
const HOST_SETTINGS: Record<string, string> = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: "the Functions host sends its logs and metrics there",
};

/** `AzureFunctionsJobHost__a__b` overrides host.json's a.b: that setting must exist in host.json. */
function hostJsonOverride(name: string): string | undefined {
  const m = /^AzureFunctionsJobHost__(.+)$/.exec(name);
  if (!m) return undefined;
  let node: unknown = JSON.parse(read("host.json"));
  for (const part of m[1]!.split("__")) node = (node as Record<string, unknown> | undefined)?.[part];
  return node === undefined ? undefined : m[1]!.replaceAll("__", ".");
}

interface Template {
  bicep: string;
  params: string;
  /** Where env vars / app settings are listed in the template (a property whose value is the list). */
  settingsKey: "env" | "appSettings";
  /** The param whose keys become settings from Key Vault. */
  keyVaultParam: string;
}

const TEMPLATES: Template[] = [
  { bicep: "deploy/container-apps/main.bicep", params: "deploy/container-apps/main.parameters.example.json", settingsKey: "env", keyVaultParam: "keyVaultSecrets" },
  { bicep: "deploy/functions/main.bicep", params: "deploy/functions/main.parameters.example.json", settingsKey: "appSettings", keyVaultParam: "keyVaultSecrets" },
];

/** The parameter values of an ARM parameters file. */
function paramValues(path: string): Record<string, unknown> {
  const doc = JSON.parse(read(path)) as { parameters: Record<string, { value: unknown }> };
  return Object.fromEntries(Object.entries(doc.parameters).map(([k, v]) => [k, v.value]));
}

/**
 * The setting names a template sets literally: the `name: 'X'` entries of its settings list
 * (`env: concat([...], a, b)` / `appSettings: concat(...)`) and of the vars that list concatenates.
 * `code` (lintBicep) has the source's offsets, so names are read from the source where the code says.
 */
function literalSettings(code: string, source: string, key: string): string[] {
  const at = code.search(new RegExp(`\\b${key}:\\s*concat\\(`));
  expect(at, `${key}: concat(…) in the template`).toBeGreaterThan(0);
  const open = code.indexOf("(", at);
  const spans: [number, number][] = [[open, open + balanced(code, open).length]];
  for (const v of code.slice(...spans[0]!).matchAll(/\b([A-Za-z_]\w*)\b(?!\s*:)/g)) {
    const def = new RegExp(`^var\\s+${v[1]}\\s*=`, "m").exec(code);
    if (!def) continue;
    const end = code.slice(def.index + 1).search(/\n(?:var|resource|module|output|param|@)\b|\n\n/);
    spans.push([def.index, end < 0 ? code.length : def.index + 1 + end]);
  }
  const names = spans.flatMap(([from, to]) => [...source.slice(from, to).matchAll(/\bname:\s*'([A-Za-z_][A-Za-z0-9_]*)'/g)].map((m) => m[1]!));
  return [...new Set(names)];
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}/g;

describe("deploy/ templates", () => {
  const bicepFiles = filesUnder("deploy", ".bicep");

  it("the Bicep CLI is not available from npm or Debian here, so every .bicep file gets the structural check", () => {
    expect(bicepFiles).toEqual(expect.arrayContaining(["deploy/container-apps/main.bicep", "deploy/functions/main.bicep", "deploy/modules/role-assignment.bicep"]));
  });

  it("the structural check finds what it claims to: unbalanced brackets, an open string, unused params, undeclared symbols, unknown functions, bad types", () => {
    const ok = "param a string\nvar b = toLower(a)\nresource r 'Microsoft.Foo/bars@2024-01-01' = {\n  name: '${b}-x'\n}\noutput o string = r.id\n";
    expect(lintBicep(ok).problems).toEqual([]);
    expect(lintBicep(ok.replace("}\noutput", "\noutput")).problems.join()).toMatch(/never closed/);
    expect(lintBicep(ok.replace("'${b}-x'", "'${b}-x")).problems.join()).toMatch(/newline inside a single-quoted string|unterminated/);
    expect(lintBicep(`param unused int = 1\n${ok}`).problems).toContain("param unused is never used");
    expect(lintBicep(ok.replace("r.id", "rr.id")).problems.join()).toMatch(/rr\.… reads a symbol that is not declared/);
    expect(lintBicep(ok.replace("toLower(a)", "toLowr(a)")).problems).toContain("toLowr(): unknown function");
    expect(lintBicep(ok.replace("@2024-01-01", "")).problems.join()).toMatch(/is not Namespace\/type@yyyy-mm-dd/);
    expect(lintBicep(ok.replace("'${b}-x'", "'${NAME}-x'")).problems.join()).toMatch(/reads NAME, which is not declared/);
    expect(lintBicep(ok.replace("'${b}-x'", "'\\${NAME}-${b}'")).problems).toEqual([]);
    expect(lintBicep(ok.replace("'${b}-x'", "'${replace(b, '-', '')}'")).problems).toEqual([]);
  });

  for (const file of bicepFiles) {
    it(`${file}: brackets and strings balance, every param and var is used, every symbol read is declared, every function known`, () => {
      const lint = lintBicep(read(file));
      expect(lint.problems).toEqual([]);
      expect(lint.params.size).toBeGreaterThan(0);
      for (const [name, mod] of lint.modules) {
        const target = join(dirname(join(root, file)), mod.path);
        expect(existsSync(target), `module ${name}: ${mod.path}`).toBe(true);
        const inner = lintBicep(readFileSync(target, "utf8"));
        for (const p of mod.params) expect(inner.params.has(p), `module ${name} passes ${p}, which ${relative(root, target)} does not declare`).toBe(true);
        for (const [p, decl] of inner.params) if (!decl.hasDefault) expect(mod.params, `module ${name} must pass ${p}`).toContain(p);
      }
    });
  }

  const reads = namesTheGatewayReads();

  it("the gateway's own settings are found where they are read (the check below relies on it)", () => {
    for (const name of ["SLUICE_CONFIG", "SLUICE_APPCONFIG_CONNECTION_STRING", "SLUICE_JOBS_STORAGE", "AzureWebJobsStorage", "PORT", "SLUICE_REQUIRE_CONFIG"]) expect(reads, name).toContain(name);
  });

  for (const t of TEMPLATES) {
    describe(t.bicep, () => {
      const source = read(t.bicep);
      const lint = lintBicep(source);
      const values = paramValues(t.params);
      const config = values.config as Record<string, unknown>;
      const keyVaultNames = Object.keys((values[t.keyVaultParam] as Record<string, string> | undefined) ?? {});
      const literal = literalSettings(lint.code, source, t.settingsKey);
      const set = [...literal, ...keyVaultNames];
      const refs = new Set([...JSON.stringify(config).matchAll(ENV_REF)].map((m) => m[1]!));

      it(`${t.params}: names only params the template declares, and every param without a default`, () => {
        for (const k of Object.keys(values)) expect(lint.params.has(k), `${k} is not a param of ${t.bicep}`).toBe(true);
        for (const [k, p] of lint.params) if (!p.hasDefault && k !== "image") expect(values, `${t.params} must give ${k}`).toHaveProperty(k);
        for (const uri of Object.values((values[t.keyVaultParam] as Record<string, string>) ?? {})) expect(uri).toMatch(/^https:\/\/[a-z0-9-]+\.vault\.azure\.net\/secrets\/[A-Za-z0-9-]+$/);
      });

      it("the example config is one the gateway accepts, once the settings the template sets are there", () => {
        const env: Record<string, string> = {};
        for (const name of set) env[name] = "placeholder";
        env.AZURE_CLIENT_ID = "00000000-0000-0000-0000-000000000000";
        if (set.includes("REDIS_URL")) env.REDIS_URL = "rediss://:key@sluice-redis.redis.cache.windows.net:6380";
        if (set.includes("JOBS_STORAGE")) env.JOBS_STORAGE = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;EndpointSuffix=core.windows.net";
        expect(() => parseConfig(config, env)).not.toThrow();
      });

      it("every env var / app setting it sets is read by the gateway, by the Functions host, or by ${NAME} in the config", () => {
        expect(literal.length).toBeGreaterThan(0);
        const unexplained = set.filter((name) => !reads.has(name) && !refs.has(name) && !HOST_SETTINGS[name] && !hostJsonOverride(name));
        expect(unexplained, `set but read by nobody (reads: ${[...reads].sort().join(", ")})`).toEqual([]);
      });

      it("every ${NAME} the example config uses is set by the template", () => {
        const unset = [...refs].filter((name) => !set.includes(name));
        expect(unset).toEqual([]);
      });

      it("the config goes in where the gateway reads it (SLUICE_CONFIG)", () => {
        expect(set).toContain("SLUICE_CONFIG");
      });
    });
  }

  it("Container Apps: probes on the gateway's probe paths and port, grace above server.shutdownGraceMs, an HTTP scale rule, the OpenAI User role", () => {
    const text = read("deploy/container-apps/main.bicep");
    const ops = read("src/ops.ts");
    const defaults = configSchema.parse({ backends: [{ name: "b", url: "http://127.0.0.1:1" }] });
    for (const [type, path] of [["Startup", "/startup"], ["Readiness", "/readiness"], ["Liveness", "/liveness"]] as const) {
      expect(text).toMatch(new RegExp(`type: '${type}'\\s*\\n\\s*httpGet: \\{\\s*\\n\\s*path: '${path}'\\s*\\n\\s*port: ${defaults.server.port}`));
      expect(ops).toContain(`app.get("${path}"`);
    }
    // Container Apps allows failureThreshold 1–10, periodSeconds 1–240, initialDelaySeconds 0–60.
    for (const m of text.matchAll(/failureThreshold: (\d+)/g)) expect(Number(m[1])).toBeLessThanOrEqual(10);
    for (const m of text.matchAll(/initialDelaySeconds: (\d+)/g)) expect(Number(m[1])).toBeLessThanOrEqual(60);
    expect(read("Dockerfile")).toMatch(new RegExp(`^EXPOSE ${defaults.server.port}$`, "m"));
    expect(text).toMatch(new RegExp(`targetPort: ${defaults.server.port}\\b`));
    // The fallback for a config without server.shutdownGraceMs is the schema's default, and the grace is more than it.
    const fallback = /config\.\?server\.\?shutdownGraceMs \?\? (\d+)/.exec(text);
    expect(Number(fallback?.[1])).toBe(defaults.server.shutdownGraceMs);
    const grace = /var terminationGracePeriodSeconds = min\(600, \(shutdownGraceMs \/ 1000\) \+ (\d+)\)/.exec(text);
    expect(Number(grace?.[1])).toBeGreaterThanOrEqual(5);
    expect(text).toMatch(/terminationGracePeriodSeconds: terminationGracePeriodSeconds/);
    expect(text).toMatch(/http: \{\s*\n\s*metadata: \{\s*\n\s*concurrentRequests:/);
    expect(text).toMatch(/minReplicas: minReplicas/);
    expect(text).toMatch(/maxReplicas: maxReplicas/);
    // The config file the container reads is the mounted secret.
    const mount = /mountPath: '([^']+)'/.exec(text)?.[1];
    const file = /secretRef: 'sluice-config'\s*\n\s*path: '([^']+)'/.exec(text)?.[1];
    expect(text).toContain(`name: 'SLUICE_CONFIG'\n              value: '${mount}/${file}'`);
    expect(text).toContain("keyVaultUrl: s.value");
    expect(read("deploy/modules/role-assignment.bicep")).toContain("'Microsoft.Authorization/roleAssignments@2022-04-01'");
    expect(text).toContain("'5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User");
  });

  it("Functions: Flex Consumption on Node 20, jobs' timeout overrides host.json's, Key Vault references with the identity", () => {
    const text = read("deploy/functions/main.bicep");
    expect(text).toMatch(/name: 'FC1'\s*\n\s*tier: 'FlexConsumption'/);
    expect(text).toMatch(/runtime: \{\s*\n\s*name: 'node'\s*\n\s*version: '20'/);
    expect(hostJsonOverride("AzureFunctionsJobHost__functionTimeout")).toBe("functionTimeout");
    expect(text).toContain("value: '@Microsoft.KeyVault(SecretUri=${s.value})'");
    expect(text).toContain("keyVaultReferenceIdentity: identity.id");
    // Flex Consumption refuses these settings (the runtime is functionAppConfig.runtime).
    for (const refused of ["FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_NODE_DEFAULT_VERSION"]) expect(text).not.toContain(`'${refused}'`);
    expect(JSON.parse(read("package.json")).main).toBe("dist/azure-functions/main.js");
  });

  it(".funcignore keeps what the Functions app needs and leaves the sources out", () => {
    const lines = read(".funcignore").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    for (const kept of ["host.json", "package.json", "package-lock.json", "node_modules", "dist", "dist/azure-functions"]) expect(lines, kept).not.toContain(kept);
    for (const out of ["src", "adapters", "test", "docs", "deploy", "bench", "local.settings.json", ".dev.vars"]) expect(lines, out).toContain(out);
  });
});
