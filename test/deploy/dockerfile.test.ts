/**
 * The Dockerfile, read (no Docker engine here): the final stage runs node itself as PID 1 in exec
 * form (so SIGTERM reaches the gateway, which drains), as a non-root user, from production
 * dependencies and dist/ only, and sets the variable that turns the no-config demo into an error.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../../", import.meta.url));

interface Instruction {
  op: string;
  args: string;
}

/** Instructions with their arguments (continuations joined, comments dropped), by stage. */
export function parseDockerfile(text: string): Instruction[][] {
  const joined = text.replace(/\\\r?\n/g, " ");
  const stages: Instruction[][] = [];
  for (const raw of joined.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const ins = { op: m[1]!.toUpperCase(), args: m[2]!.trim() };
    if (ins.op === "FROM") stages.push([]);
    stages.at(-1)?.push(ins);
  }
  return stages;
}

/** The argv a CMD/ENTRYPOINT runs, or why it is not an exec-form node process. */
export function finalCommand(stage: Instruction[]): { argv: string[] } | { problem: string } {
  const last = (op: string) => stage.filter((i) => i.op === op).at(-1);
  const parts: string[] = [];
  for (const ins of [last("ENTRYPOINT"), last("CMD")]) {
    if (!ins) continue;
    let argv: unknown;
    try {
      argv = JSON.parse(ins.args);
    } catch {
      return { problem: `${ins.op} ${ins.args}: shell form (a shell is PID 1 and SIGTERM does not reach node)` };
    }
    if (!Array.isArray(argv) || !argv.every((a) => typeof a === "string")) return { problem: `${ins.op}: not a JSON array of strings` };
    parts.push(...(argv as string[]));
  }
  if (!parts.length) return { problem: "no CMD or ENTRYPOINT" };
  const exe = parts[0]!.split("/").at(-1)!;
  if (exe !== "node") return { problem: `runs ${parts[0]} (${parts.join(" ")}), not node` };
  if (parts.some((p) => /^(npm|npx|sh|bash|-c)$/.test(p))) return { problem: `runs through ${parts.join(" ")}` };
  return { argv: parts };
}

/** The user the final stage runs as, or why it is root. */
export function finalUser(stage: Instruction[]): { user: string } | { problem: string } {
  const user = stage.filter((i) => i.op === "USER").at(-1)?.args;
  if (!user) return { problem: "no USER: the process runs as root" };
  const name = user.split(":")[0]!;
  if (name === "root" || name === "0") return { problem: `USER ${user} is root` };
  const userAt = stage.findLastIndex((i) => i.op === "USER");
  const cmdAt = stage.findLastIndex((i) => i.op === "CMD" || i.op === "ENTRYPOINT");
  if (cmdAt >= 0 && userAt > cmdAt) return { problem: "USER comes after CMD" };
  return { user };
}

describe("Dockerfile", () => {
  const text = readFileSync(join(root, "Dockerfile"), "utf8");
  const stages = parseDockerfile(text);
  const final = stages.at(-1)!;
  const build = stages[0]!;

  it("the checks refuse what they should: shell form, npm start, a shell wrapper, root or no USER", () => {
    const cmd = (line: string) => finalCommand(parseDockerfile(`FROM node:20-slim\n${line}\n`)[0]!);
    expect(cmd('CMD ["node", "dist/node/main.js"]')).toEqual({ argv: ["node", "dist/node/main.js"] });
    expect(cmd("CMD node dist/node/main.js")).toHaveProperty("problem");
    expect(cmd('CMD ["npm", "start"]')).toHaveProperty("problem");
    expect(cmd('CMD ["sh", "-c", "node dist/node/main.js"]')).toHaveProperty("problem");
    expect(cmd('ENTRYPOINT ["/usr/bin/tini", "--"]\nCMD ["node", "x.js"]')).toHaveProperty("problem");
    const user = (lines: string) => finalUser(parseDockerfile(`FROM node:20-slim\n${lines}\n`)[0]!);
    expect(user("USER root")).toHaveProperty("problem");
    expect(user("USER 0:0")).toHaveProperty("problem");
    expect(user("RUN true")).toHaveProperty("problem");
    expect(user('USER node\nCMD ["node", "x.js"]')).toEqual({ user: "node" });
  });

  it("has a build stage and a final stage", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(build[0]!.args).toMatch(/^node:20[\w.-]*\s+AS\s+build$/i);
    expect(build.some((i) => i.op === "RUN" && /\bnpm ci\b/.test(i.args) && !/--omit=dev/.test(i.args))).toBe(true);
    expect(build.some((i) => i.op === "RUN" && /\bnpm run build\b/.test(i.args))).toBe(true);
  });

  it("final stage: CMD is node itself in exec form, running dist/node/main.js (PID 1 is node: SIGTERM drains)", () => {
    expect(finalCommand(final)).toEqual({ argv: ["node", "dist/node/main.js"] });
  });

  it("final stage: a non-root USER, set before the command", () => {
    const u = finalUser(final);
    expect(u, JSON.stringify(u)).toHaveProperty("user");
  });

  it("final stage: a slim Node 20 image with production dependencies and dist/ only", () => {
    expect(final[0]!.args).toMatch(/^node:20-[\w.-]*slim\b/);
    expect(final.some((i) => i.op === "RUN" && /\bnpm ci\b.*--omit=dev/.test(i.args))).toBe(true);
    const copies = final.filter((i) => i.op === "COPY").map((i) => i.args);
    expect(copies).toEqual(["package.json package-lock.json ./", "--from=build /src/dist ./dist"]);
    expect(final.some((i) => i.op === "RUN" && /npm run build/.test(i.args))).toBe(false);
  });

  it("final stage: sets SLUICE_REQUIRE_CONFIG, the variable adapters/node/main.ts checks where no config was found", () => {
    const env = final.filter((i) => i.op === "ENV").map((i) => i.args).join(" ");
    expect(env).toMatch(/\bSLUICE_REQUIRE_CONFIG=1\b/);
    expect(readFileSync(join(root, "adapters/node/main.ts"), "utf8")).toContain('"SLUICE_REQUIRE_CONFIG"');
  });

  it(".dockerignore keeps the build context to sources: no node_modules, dist, .git or local secrets", () => {
    const lines = readFileSync(join(root, ".dockerignore"), "utf8").split("\n").map((l) => l.trim());
    for (const p of ["node_modules", "dist", ".git", ".dev.vars", ".sluice", ".wrangler"]) expect(lines, p).toContain(p);
    for (const needed of ["src", "adapters", "package.json", "package-lock.json"]) expect(lines, needed).not.toContain(needed);
  });
});
