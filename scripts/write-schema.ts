import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { configJsonSchema } from "../src/config/json-schema.ts";
import { configReferenceMarkdown, type JsonSchemaNode } from "../src/config/reference.ts";

// Regenerates docs/config.schema.json and the README's config table from the zod schema;
// a test fails when either drifts from the code.
const root = new URL("../", import.meta.url);
const schema = configJsonSchema();
writeFileSync(fileURLToPath(new URL("docs/config.schema.json", root)), `${JSON.stringify(schema, null, 2)}\n`);

const readmePath = fileURLToPath(new URL("README.md", root));
const readme = readFileSync(readmePath, "utf8");
const marked = /(<!-- config-reference:start -->\n)[\s\S]*?(<!-- config-reference:end -->)/;
if (!marked.test(readme)) throw new Error("README.md lacks the config-reference markers");
writeFileSync(readmePath, readme.replace(marked, `$1${configReferenceMarkdown(schema as JsonSchemaNode)}\n$2`));
console.log("wrote docs/config.schema.json and the README config reference");
