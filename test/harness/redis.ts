/**
 * A real `redis-server` (Debian package; .ci/run installs it) for tests: on 127.0.0.1, a free
 * port, no persistence (`--save '' --appendonly no`), started and stopped by the test that uses
 * it. `restart()` brings it back on the same port, empty, as a Redis that was restarted.
 */
import { useService } from "./service.ts";
import { spawn, type ChildProcess } from "node:child_process";
import { connect } from "node:net";
import { freePort } from "./node.ts";

export interface RunningRedis {
  url: string;
  port: number;
  /** Stops the server (SIGTERM, then SIGKILL after 2 s); idempotent. */
  stop(): Promise<void>;
  /** Stops it if running, then starts it again on the same port and waits until it answers PING. */
  restart(): Promise<void>;
  /** Freezes the running server (SIGSTOP): connections stay open, nothing is answered. */
  pause(): void;
  /** Lets a paused server go on (SIGCONT). */
  resume(): void;
}

/** One PING over a raw socket: true when the server answers +PONG within `timeoutMs`. */
export function ping(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    let data = "";
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      data += chunk.toString("latin1");
      if (data.includes("\r\n")) done(data.startsWith("+PONG"));
    });
    socket.on("error", () => done(false));
  });
}

/** Every server started and not yet stopped, killed if the test process exits first. */
const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

function spawnServer(port: number): ChildProcess {
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", "--databases", "1"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  child.on("error", (err) => {
    stderr += String(err);
  });
  (child as ChildProcess & { stderrText: () => string }).stderrText = () => stderr;
  live.add(child);
  child.once("exit", () => live.delete(child));
  return child;
}

async function waitForPing(port: number, child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = (child as ChildProcess & { stderrText?: () => string }).stderrText?.() ?? "";
      throw new Error(`redis-server exited (${child.exitCode ?? child.signalCode}) before answering: ${text.trim() || "is redis-server installed? (apt-get install -y redis-server)"}`);
    }
    if (await ping(port, 200)) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  child.kill("SIGKILL");
  throw new Error(`redis-server on port ${port} did not answer PING within ${timeoutMs} ms`);
}

async function stopServer(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGCONT");
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 2_000);
  await exited;
  clearTimeout(timer);
}

/** Starts a redis-server on a free loopback port and waits until it answers PING. */
export async function startRedis(): Promise<RunningRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined = spawnServer(port);
  await waitForPing(port, child);
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      const c = child;
      child = undefined;
      await stopServer(c);
    },
    async restart() {
      const c = child;
      child = undefined;
      await stopServer(c);
      child = spawnServer(port);
      await waitForPing(port, child);
    },
    pause() {
      child?.kill("SIGSTOP");
    },
    resume() {
      child?.kill("SIGCONT");
    },
  };
}

/** One redis-server for the test file: started before its tests, stopped after them. */
export function useRedis(): () => RunningRedis {
  return useService("redis-server", () => startRedis());
}
