/**
 * A port that is already taken: the `sluice` command prints one line naming host:port and exits
 * 1, instead of Node's EADDRINUSE stack trace. With a config (server.port) and in the demo (PORT).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { processCwd } from "../harness/node.ts";

const root = fileURLToPath(new URL("../../", import.meta.url));

function runMain(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  const base: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME };
  const child = spawn(join(root, "node_modules/.bin/tsx"), [join(root, "adapters/node/main.ts"), ...args], { cwd: processCwd(), env: { ...base, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  return new Promise((resolve) => child.once("exit", (code) => (clearTimeout(killer), resolve({ code, out, err }))));
}

async function occupy(host?: string): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((r) => (host ? server.listen(0, host, r) : server.listen(0, r)));
  return { server, port: (server.address() as { port: number }).port };
}

describe("the sluice command on a port that is taken", () => {
  const servers: Server[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  it("with a config: one line naming 127.0.0.1:<port>, exit code 1, no stack trace", async () => {
    const { server, port } = await occupy("127.0.0.1");
    servers.push(server);
    const file = join(mkdtempSync(join(tmpdir(), "sluice-busy-")), "config.json");
    writeFileSync(file, JSON.stringify({ server: { host: "127.0.0.1", port }, backends: [{ name: "b", url: "http://127.0.0.1:9", models: ["*"] }] }));
    const r = await runMain(["--config", file], {});
    expect(r.code, r.err).toBe(1);
    const lines = r.err.trim().split("\n");
    expect(lines, r.err).toHaveLength(1);
    expect(lines[0]).toBe(`sluice: cannot listen on 127.0.0.1:${port}: the address is already in use (another process listens there); choose another server.port in the config (or PORT for the demo)`);
    expect(r.err).not.toMatch(/\bat .*\(|EADDRINUSE/);
  }, 30_000);

  it("the demo with PORT taken: the same one line, naming 0.0.0.0:<port>, exit code 1", async () => {
    const { server, port } = await occupy();
    servers.push(server);
    const r = await runMain([], { PORT: String(port) });
    expect(r.code, r.err).toBe(1);
    const lines = r.err.trim().split("\n");
    expect(lines, r.err).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^sluice: cannot listen on 0\\.0\\.0\\.0:${port}: the address is already in use`));
  }, 30_000);
});
