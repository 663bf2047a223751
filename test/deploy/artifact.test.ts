/**
 * The production artifact, assembled as the Dockerfile's final stage assembles it: package.json
 * and package-lock.json, `npm ci --omit=dev`, and a fresh build of dist/ (the bundles of
 * `npm run build`, its own esbuild command lines) — nothing else of the repository. Then
 * `node dist/node/main.js` is started there (the image's CMD, with the image's environment) and
 * must serve, drain on SIGTERM and exit 0; without a config it must exit 2 with a message.
 * No Docker here: this is the image's contents and command, run as a process.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import { freePort } from "../harness/node.ts";

const root = fileURLToPath(new URL("../../", import.meta.url));
const INSTALL_TIMEOUT_MS = 120_000;

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, env: { ...process.env, npm_config_update_notifier: "false" } }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

/** The esbuild command lines of `npm run build` that make dist/node and dist/azure-functions, writing into `outRoot` instead. */
function buildCommands(outRoot: string): string[][] {
  const script = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts.build!;
  const steps = script.split("&&").map((s) => s.trim()).filter((s) => s.startsWith("esbuild "));
  expect(steps.length, `esbuild steps in the build script: ${script}`).toBeGreaterThanOrEqual(2);
  return steps.map((s) => s.split(/\s+/).slice(1).map((a) => a.replace(/^(--outdir=|--outfile=)dist\//, `$1${outRoot}/dist/`)));
}

/** The process environment of the image (Dockerfile ENV), plus what a test adds; nothing of the test runner's. */
function imageEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
  const finalStage = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: tmpdir() };
  for (const m of finalStage.matchAll(/^ENV\s+((?:.*\\\n)*.*)$/gm)) {
    for (const pair of m[1]!.replace(/\\\n/g, " ").matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)/g)) env[pair[1]!] = pair[2]!.replace(/^"|"$/g, "");
  }
  return { ...env, ...extra };
}

interface Started {
  child: ChildProcess;
  exited: Promise<number | null>;
  out: () => string;
}

function start(dir: string, env: NodeJS.ProcessEnv): Started {
  // The image's CMD, exactly: ["node", "dist/node/main.js"] in its WORKDIR.
  const child = spawn(process.execPath, ["dist/node/main.js"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, exited, out: () => out };
}

describe("the production artifact (what the Dockerfile assembles): node dist/node/main.js", () => {
  let dir: string;
  let sim: RunningSimulator;
  let installLog = "";
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sluice-artifact-"));
    copyFileSync(join(root, "package.json"), join(dir, "package.json"));
    copyFileSync(join(root, "package-lock.json"), join(dir, "package-lock.json"));
    const npm = process.platform === "win32" ? "npm.cmd" : "npm";
    const esbuild = join(root, "node_modules/.bin/esbuild");
    const [install, ...built] = await Promise.all([
      (async () => {
        // From the local cache first (CI's `npm ci` filled it); the registry only when it misses.
        const offline = await run(npm, ["ci", "--omit=dev", "--offline", "--no-audit", "--no-fund"], dir, INSTALL_TIMEOUT_MS);
        if (offline.code === 0) return offline;
        return run(npm, ["ci", "--omit=dev", "--no-audit", "--no-fund"], dir, INSTALL_TIMEOUT_MS);
      })(),
      ...buildCommands(dir).map((args) => run(esbuild, args, root, 60_000)),
    ]);
    installLog = install!.out;
    expect(install!.code, `npm ci --omit=dev failed:\n${install!.out}`).toBe(0);
    for (const b of built) expect(b.code, `esbuild failed:\n${b.out}`).toBe(0);
    sim = await startSimulator({ name: "backend" });
  }, INSTALL_TIMEOUT_MS * 2 + 30_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
    await sim?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("holds production dependencies only, and every package the bundles import resolves there", () => {
    expect(existsSync(join(dir, "node_modules/hono")), installLog).toBe(true);
    for (const dev of ["vitest", "wrangler", "miniflare", "tsx", "typescript", "esbuild"]) expect(existsSync(join(dir, "node_modules", dev)), `${dev} is a devDependency`).toBe(false);
    for (const bundle of ["dist/node/main.js", "dist/azure-functions/main.js"]) {
      const text = readFileSync(join(dir, bundle), "utf8");
      const specifiers = new Set([...text.matchAll(/(?:^|\n)\s*import\s+(?:[^'"]*?\s+from\s+)?["']([^"']+)["']/g), ...text.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1]!));
      const bare = [...specifiers].filter((s) => !s.startsWith(".") && !s.startsWith("node:"));
      expect(bare.length, `${bundle} imports packages`).toBeGreaterThan(0);
      for (const s of bare) {
        const pkg = s.startsWith("@") ? s.split("/").slice(0, 2).join("/") : s.split("/")[0]!;
        expect(existsSync(join(dir, "node_modules", pkg, "package.json")), `${bundle} imports ${s}: not installed by npm ci --omit=dev`).toBe(true);
      }
    }
  });

  it("serves a chat request with a config file, then drains on SIGTERM: the in-flight slow stream completes, exit code 0", async () => {
    const port = await freePort();
    const configPath = join(dir, "sluice.json");
    writeFileSync(configPath, JSON.stringify({ server: { host: "127.0.0.1", port, shutdownGraceMs: 10_000 }, backends: [{ name: "backend", url: sim.url, models: ["gpt-4o"] }] }));
    const p = start(dir, imageEnv({ SLUICE_CONFIG: configPath }));
    children.push(p.child);
    for (let i = 0; i < 200 && !p.out().includes("listening"); i++) await new Promise((r) => setTimeout(r, 50));
    expect(p.out()).toContain(`listening on http://127.0.0.1:${port}`);

    const url = `http://127.0.0.1:${port}`;
    expect(await (await fetch(`${url}/startup`)).text()).toBe("ok");
    expect((await fetch(`${url}/readiness`)).status).toBe(200);
    const chat = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }),
    });
    expect(chat.status).toBe(200);
    expect(chat.headers.get("x-sluice-backend")).toBe("backend");
    expect(((await chat.json()) as { object: string }).object).toBe("chat.completion");

    // A slow stream (20 chunks, 60 ms apart: about 1.2 s) in flight when SIGTERM comes.
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-sim-fault": JSON.stringify({ paceMs: 60, chunks: 20 }) },
      body: JSON.stringify({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: "hi" }] }),
    });
    expect(res.status).toBe(200);
    const body = res.text();
    p.child.kill("SIGTERM");
    const text = await body;
    expect(text.trimEnd().endsWith("data: [DONE]"), text.slice(-300)).toBe(true);
    expect(text.match(/^data: \{/gm)?.length).toBeGreaterThanOrEqual(20);
    expect(await p.exited, p.out()).toBe(0);
    expect(p.out()).toContain("SIGTERM: no new connections");
    await expect(fetch(`${url}/liveness`)).rejects.toThrow();
  }, 30_000);

  it("with the image's SLUICE_REQUIRE_CONFIG and no config: exit code 2 and a message naming the ways to give one, no demo", async () => {
    const env = imageEnv({});
    expect(env.SLUICE_REQUIRE_CONFIG, "the Dockerfile's final stage sets SLUICE_REQUIRE_CONFIG").toBeTruthy();
    const p = start(dir, env);
    children.push(p.child);
    const code = await Promise.race([p.exited, new Promise<string>((r) => setTimeout(() => r("still running after 10 s"), 10_000))]);
    expect(code, p.out()).toBe(2);
    expect(p.out()).toMatch(/sluice: no config given/);
    expect(p.out()).toContain("SLUICE_CONFIG");
    expect(p.out()).not.toContain("demo mode");
    expect(p.out()).not.toMatch(/\n\s+at /);
  }, 15_000);
});
