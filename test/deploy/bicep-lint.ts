/**
 * A structural check of Bicep files, for a machine without the Bicep CLI (not on npm or Debian):
 * strings (with `${…}` interpolation, escapes and '''multi-line''' strings) and comments are lexed,
 * brackets must balance, and the declarations are read — params, vars, resources, modules,
 * outputs, loop variables — so that unused params and vars, references to undeclared symbols,
 * unknown functions and malformed resource types are reported. Not a compiler: types and resource
 * schemas are not checked.
 */

export interface BicepFile {
  /** The code with comments and string contents blanked to spaces (interpolations kept): the same offsets as the source. */
  code: string;
  params: Map<string, { type: string; hasDefault: boolean }>;
  vars: Set<string>;
  resources: Map<string, string>;
  modules: Map<string, { path: string; params: string[] }>;
  outputs: Set<string>;
  loopVars: Set<string>;
  /** Every string literal's text (interpolations as written). */
  strings: string[];
  problems: string[];
}

/** Functions and namespaces Bicep knows, as far as these templates use them. */
const FUNCTIONS = new Set([
  "resourceGroup", "subscription", "subscriptionResourceId", "resourceId", "tenant", "deployment", "environment", "guid", "uniqueString",
  "take", "skip", "toLower", "toUpper", "replace", "string", "json", "concat", "union", "min", "max", "items", "empty", "contains",
  "length", "first", "last", "split", "join", "format", "substring", "startsWith", "endsWith", "int", "bool", "coalesce", "base64", "listKeys",
]);
const KEYWORDS = new Set(["if", "for", "in", "existing", "true", "false", "null", "param", "var", "resource", "module", "output", "targetScope", "import", "type", "func", "metadata"]);
const NAMESPACES = new Set(["az", "sys"]);
const DECORATORS = new Set(["description", "minLength", "maxLength", "minValue", "maxValue", "allowed", "secure", "metadata", "batchSize", "sealed", "export"]);

export function lintBicep(source: string): BicepFile {
  const problems: string[] = [];
  const strings: string[] = [];
  let code = "";
  const stack: { ch: string; line: number }[] = [];
  const pairs: Record<string, string> = { ")": "(", "]": "[", "}": "{" };
  let line = 1;
  let i = 0;
  const n = source.length;
  // Each entry: a string being read whose `${` opened code, waiting for its `}` (at this stack depth; the code from `start`).
  const interpolating: { depth: number; start: number }[] = [];
  // The text of each string being read (a string inside an interpolation is one of its own).
  const texts: string[] = [];

  const readString = (): void => {
    // At a `'` (or inside one, after an interpolation's `}`): read to the closing quote or the next `${`.
    for (;;) {
      if (i >= n) {
        problems.push(`line ${line}: unterminated string`);
        return;
      }
      const c = source[i]!;
      if (c === "\n") {
        problems.push(`line ${line}: a newline inside a single-quoted string (use '''…''')`);
        line++;
      }
      if (c === "\\") {
        texts[texts.length - 1] += source.slice(i, i + 2);
        code += "  ";
        i += 2;
        continue;
      }
      if (c === "'") {
        strings.push(texts.pop()!);
        code += "'";
        i++;
        return;
      }
      if (c === "$" && source[i + 1] === "{") {
        texts[texts.length - 1] += "${";
        code += "${";
        i += 2;
        interpolating.push({ depth: stack.length, start: i });
        stack.push({ ch: "{", line });
        return;
      }
      texts[texts.length - 1] += c;
      code += c === "\n" ? "\n" : " ";
      i++;
    }
  };

  while (i < n) {
    const c = source[i]!;
    if (c === "\n") line++;
    if (c === "/" && source[i + 1] === "/") {
      while (i < n && source[i] !== "\n") {
        code += " ";
        i++;
      }
      continue;
    }
    if (c === "/" && source[i + 1] === "*") {
      const end = source.indexOf("*/", i + 2);
      if (end < 0) {
        problems.push(`line ${line}: unterminated comment`);
        break;
      }
      line += source.slice(i, end).split("\n").length - 1;
      code += blank(source.slice(i, end + 2));
      i = end + 2;
      continue;
    }
    if (source.startsWith("'''", i)) {
      const end = source.indexOf("'''", i + 3);
      if (end < 0) {
        problems.push(`line ${line}: unterminated ''' string`);
        break;
      }
      strings.push(source.slice(i + 3, end));
      line += source.slice(i, end).split("\n").length - 1;
      code += `'''${blank(source.slice(i + 3, end))}'''`;
      i = end + 3;
      continue;
    }
    if (c === "'") {
      code += "'";
      i++;
      texts.push("");
      readString();
      continue;
    }
    if (c === "(" || c === "[" || c === "{") stack.push({ ch: c, line });
    if (c === ")" || c === "]" || c === "}") {
      const open = stack.pop();
      if (!open || open.ch !== pairs[c]) {
        problems.push(`line ${line}: '${c}' closes ${open ? `'${open.ch}' of line ${open.line}` : "nothing"}`);
      }
      if (c === "}" && interpolating.length && interpolating.at(-1)!.depth === stack.length) {
        const { start } = interpolating.pop()!;
        code += "}";
        texts[texts.length - 1] += `${source.slice(start, i)}}`;
        i++;
        readString();
        continue;
      }
    }
    code += c;
    i++;
  }
  for (const open of stack) problems.push(`line ${open.line}: '${open.ch}' is never closed`);

  const params = new Map<string, { type: string; hasDefault: boolean }>();
  for (const m of code.matchAll(/^param\s+([A-Za-z_]\w*)\s+([A-Za-z_]\w*)(\s*=)?/gm)) params.set(m[1]!, { type: m[2]!, hasDefault: Boolean(m[3]) });
  const vars = new Set([...code.matchAll(/^var\s+([A-Za-z_]\w*)\s*=/gm)].map((m) => m[1]!));
  const outputs = new Set([...code.matchAll(/^output\s+([A-Za-z_]\w*)\s+\w+\s*=/gm)].map((m) => m[1]!));
  const loopVars = new Set([...code.matchAll(/\bfor\s+([A-Za-z_]\w*)\s+in\b/g), ...code.matchAll(/\bfor\s+\(\s*([A-Za-z_]\w*)\s*,\s*([A-Za-z_]\w*)\s*\)\s+in\b/g)].flatMap((m) => m.slice(1).filter(Boolean) as string[]));

  // Resource and module declarations: their type or path is the string literal right after the name.
  const resources = new Map<string, string>();
  const modules = new Map<string, { path: string; params: string[] }>();
  for (const m of code.matchAll(/^(resource|module)\s+([A-Za-z_]\w*)\s+'/gm)) {
    // The type or path: the literal at the same offset of the source.
    const from = m.index! + m[0].length;
    const text = source.slice(from, source.indexOf("'", from));
    if (m[1] === "resource") {
      resources.set(m[2]!, text);
      if (!/^[A-Za-z]+\.[A-Za-z]+\/[A-Za-z]+(\/[A-Za-z]+)*@\d{4}-\d{2}-\d{2}(-preview)?$/.test(text)) problems.push(`resource ${m[2]}: '${text}' is not Namespace/type@yyyy-mm-dd`);
    } else {
      const start = code.indexOf("params:", m.index!);
      const block = start >= 0 ? balanced(code, code.indexOf("{", start)) : "";
      modules.set(m[2]!, { path: text, params: [...block.matchAll(/^\s{4}([A-Za-z_]\w*)\s*:/gm)].map((p) => p[1]!) });
    }
  }

  const declared = new Set([...params.keys(), ...vars, ...resources.keys(), ...modules.keys(), ...loopVars]);
  for (const name of declared) {
    if (outputs.has(name)) problems.push(`${name} is declared twice (an output named like a param, var, resource or module)`);
  }
  // Identifiers used: the code minus declarations' own names.
  const uses = new Map<string, number>();
  // Object keys (`name:`) are not uses; the declaration itself counts once.
  for (const m of code.matchAll(/(?<![.\w@$])([A-Za-z_]\w*)(?!\w)(?!\s*:(?!:))/g)) uses.set(m[1]!, (uses.get(m[1]!) ?? 0) + 1);
  for (const p of params.keys()) if ((uses.get(p) ?? 0) < 2) problems.push(`param ${p} is never used`);
  for (const v of vars) if ((uses.get(v) ?? 0) < 2) problems.push(`var ${v} is never used`);
  for (const l of loopVars) if ((uses.get(l) ?? 0) < 2) problems.push(`loop variable ${l} is never used`);

  // A symbol whose member is read (x.y, x!.y, x.?y) must be declared.
  for (const m of code.matchAll(/(?<![.\w@$])([A-Za-z_]\w*)!?\.\??[A-Za-z_]/g)) {
    const name = m[1]!;
    if (!declared.has(name) && !NAMESPACES.has(name)) problems.push(`${name}.… reads a symbol that is not declared`);
  }
  // Interpolations: every name they read is declared (a literal ${NAME} meant for the gateway must be written \${NAME}).
  for (const text of strings) {
    for (const m of text.matchAll(/(?<!\\)\$\{([^}]*)\}/g)) {
      for (const id of m[1]!.replace(/'[^']*'/g, "").matchAll(/(?<![.\w])([A-Za-z_]\w*)(?!\w)(?!\s*\()/g)) {
        if (!declared.has(id[1]!) && !NAMESPACES.has(id[1]!) && !KEYWORDS.has(id[1]!)) problems.push(`'\${${m[1]}}' reads ${id[1]}, which is not declared (write \\\${…} for a literal)`);
      }
    }
  }
  // Calls: a known function (or a namespace's), or a decorator.
  for (const m of code.matchAll(/(?<![\w$])(@|\.)?([A-Za-z_]\w*)\s*\(/g)) {
    const [, prefix, name] = m;
    if (prefix === "@") {
      if (!DECORATORS.has(name!)) problems.push(`@${name}: unknown decorator`);
      continue;
    }
    if (KEYWORDS.has(name!)) continue;
    if (!FUNCTIONS.has(name!)) problems.push(`${name}(): unknown function`);
  }
  // Object keys inside a block must not repeat at the same level (a frequent copy-paste mistake).
  for (const block of blocks(code)) {
    const keys = [...block.matchAll(/^\s*([A-Za-z_]\w*|'[^']*')\s*:/gm)].map((m) => m[1]!);
    const seen = new Set<string>();
    for (const key of keys) {
      if (seen.has(key)) problems.push(`key ${key} repeats in one object`);
      seen.add(key);
    }
  }
  return { code, params, vars, resources, modules, outputs, loopVars, strings, problems };
}

/** The text with every character but newlines turned into a space. */
function blank(text: string): string {
  return text.replace(/[^\n]/g, " ");
}

/** The text of the bracketed block that opens at `start` ({, [ or (), brackets included. */
export function balanced(code: string, start: number): string {
  if (start < 0) return "";
  let depth = 0;
  for (let i = start; i < code.length; i++) {
    const c = code[i]!;
    if (c === "{" || c === "[" || c === "(") depth++;
    if (c === "}" || c === "]" || c === ")") {
      depth--;
      if (depth === 0) return code.slice(start, i + 1);
    }
  }
  return code.slice(start);
}

/** Every {…} block's own top level (nested blocks blanked). */
function blocks(code: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < code.length; i++) {
    if (code[i] !== "{") continue;
    const whole = balanced(code, i);
    let own = "";
    let depth = 0;
    for (let j = 1; j < whole.length - 1; j++) {
      const c = whole[j]!;
      if (c === "{" || c === "[" || c === "(") depth++;
      if (depth === 0) own += c;
      else own += c === "\n" ? "\n" : " ";
      if (c === "}" || c === "]" || c === ")") depth--;
    }
    out.push(own);
  }
  return out;
}
