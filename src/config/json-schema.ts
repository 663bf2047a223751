import { z } from "zod";
import { configSchema } from "./schema.ts";

/** The JSON Schema of the config file, as users write it (defaults are optional). */
export function configJsonSchema(): Record<string, unknown> {
  return { ...z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" }), title: "Sluice gateway configuration" };
}
