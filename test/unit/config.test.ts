import { processCwd } from "../harness/node.ts";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { configJsonSchema } from "../../src/config/json-schema.ts";
import { configReferenceMarkdown, type JsonSchemaNode } from "../../src/config/reference.ts";
import { ConfigError, parseConfig, parseConfigText } from "../../src/config/load.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));

describe("config", () => {
  it("fills defaults and interpolates ${ENV} secrets", () => {
    const cfg = parseConfig(
      { backends: [{ name: "a", url: "https://${HOST}", auth: { type: "api-key", key: "${KEY}" } }] },
      { HOST: "aoai.example", KEY: "s3cret" },
    );
    expect(cfg.backends[0]!.url).toBe("https://aoai.example");
    expect(cfg.backends[0]!.auth).toEqual({ type: "api-key", key: "s3cret" });
    expect(cfg.resilience.defaultCooldownMs).toBe(10_000);
    expect(cfg.routing.strategy).toBe("latency");
  });

  it("names the field and the problem", () => {
    const bad = () => parseConfig({ backends: [{ name: "a", url: "not a url", weight: -1 }] });
    expect(bad).toThrow(ConfigError);
    expect(bad).toThrow(/backends\[0\]\.url: Invalid URL/);
    expect(bad).toThrow(/backends\[0\]\.weight/);
    expect(() => parseConfig({ backends: [{ name: "a", url: "http://x", priorities: ["urgent"] }] })).toThrow(/backends\[0\]\.priorities\[0\]: unknown priority "urgent"/);
    expect(() => parseConfig({ backends: [{ name: "a", url: "http://x", auth: { type: "api-key", key: "${NOPE}" } }] })).toThrow(/backends\[0\]\.auth\.key: environment variable NOPE is not set/);
    expect(() => parseConfigText("{ nope", {}, "x.json")).toThrow(/x\.json: not valid JSON/);
  });

  it("publishes the JSON Schema generated from the validator", () => {
    const published = JSON.parse(readFileSync(join(root, "docs/config.schema.json"), "utf8"));
    expect(published).toEqual(configJsonSchema());
  });

  it("the process exits non-zero naming the bad field", () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-cfg-"));
    const file = join(dir, "bad.json");
    writeFileSync(file, JSON.stringify({ backends: [{ name: "ptu", url: "http://127.0.0.1:1", kind: "bedrock" }] }));
    const run = spawnSync(join(root, "node_modules/.bin/tsx"), [join(root, "adapters/node/main.ts"), "--config", file], { cwd: processCwd(), encoding: "utf8", timeout: 20_000 });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/backends\[0\]\.kind/);
    const inline = spawnSync(join(root, "node_modules/.bin/tsx"), [join(root, "adapters/node/main.ts")], {
      cwd: processCwd(),
      encoding: "utf8",
      timeout: 20_000,
      env: { ...process.env, SLUICE_CONFIG: JSON.stringify({ backends: [] }) },
    });
    expect(inline.status).toBe(2);
    expect(inline.stderr).toMatch(/backends: Too small/);
  });
});

describe("README config reference", () => {
  it("is the table generated from the schema", () => {
    const readme = readFileSync(join(root, "README.md"), "utf8");
    const table = configReferenceMarkdown(configJsonSchema() as JsonSchemaNode);
    expect(readme).toContain(`<!-- config-reference:start -->\n${table}\n<!-- config-reference:end -->`);
  });
});
