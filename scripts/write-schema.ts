import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { configJsonSchema } from "../src/config/json-schema.ts";

// Regenerates docs/config.schema.json from the zod schema; a test fails if the two drift.
const out = fileURLToPath(new URL("../docs/config.schema.json", import.meta.url));
writeFileSync(out, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
console.log(`wrote ${out}`);
