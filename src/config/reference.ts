export type JsonSchemaNode = {
  type?: string;
  const?: unknown;
  enum?: unknown[];
  default?: unknown;
  description?: string;
  properties?: Record<string, JsonSchemaNode>;
  required?: string[];
  items?: JsonSchemaNode;
  anyOf?: JsonSchemaNode[];
  oneOf?: JsonSchemaNode[];
  additionalProperties?: JsonSchemaNode | boolean;
};

function typeOf(s: JsonSchemaNode): string {
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((e) => JSON.stringify(e)).join(" \\| ");
  const alts = s.anyOf ?? s.oneOf;
  if (alts) return [...new Set(alts.map(typeOf))].join(" \\| ");
  if (s.type === "array") {
    const item = s.items ? typeOf(s.items) : "any";
    return item.includes("|") ? `(${item})[]` : `${item}[]`;
  }
  if (s.type === "object" && s.additionalProperties && typeof s.additionalProperties === "object") return `map of ${typeOf(s.additionalProperties)}`;
  return s.type ?? "any";
}

function rows(s: JsonSchemaNode, path: string, out: string[]): void {
  const required = new Set(s.required ?? []);
  for (const [name, prop] of Object.entries(s.properties ?? {})) {
    if (name === "$schema") continue;
    const p = path ? `${path}.${name}` : name;
    const nested = prop.type === "array" ? prop.items : prop;
    const variants = nested?.oneOf ?? (nested?.properties ? [nested] : []);
    const isObject = variants.some((v) => v.properties);
    const def = prop.default !== undefined && !(typeof prop.default === "object" && !Array.isArray(prop.default)) ? `\`${JSON.stringify(prop.default)}\`` : required.has(name) ? "required" : "";
    if (!isObject || prop.description) {
      out.push(`| \`${p}\` | ${isObject ? (prop.type === "array" ? "object[]" : "object") : typeOf(prop)} | ${def} | ${(prop.description ?? "").replaceAll("|", "\\|")} |`);
    }
    const prefix = prop.type === "array" ? `${p}[]` : p;
    for (const v of variants) if (v.properties && !(nested?.anyOf)) rows(v, variants.length > 1 ? `${prefix}{${typeOf(v.properties.type ?? {})}}` : prefix, out);
  }
}

/** A Markdown table of every config field, generated from the JSON JsonSchemaNode for the README. */
export function configReferenceMarkdown(schema: JsonSchemaNode): string {
  const out = ["| field | type | default | meaning |", "|---|---|---|---|"];
  rows(schema, "", out);
  return out.join("\n");
}
