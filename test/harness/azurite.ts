/**
 * Azurite (the Azure Storage emulator, npm `azurite`) started on loopback for a test and stopped
 * after it. It listens on ports the OS picks (`--blobPort 0` …) and the harness reads the real
 * ones from the "successfully listening at" lines, so two test files never race for a port the
 * way a probe-then-bind free-port helper can.
 *
 * Storage is in memory (`--inMemoryPersistence`, capped by `--extentMemoryLimit`), and the
 * process runs in a temp directory of its own in case some version still writes a file to its
 * working directory. It runs in its own process group, so `stop()` ends it and anything it spawned.
 */
import { useService } from "./service.ts";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Azurite's default account (node_modules/azurite/README.md, "Default Storage Account"). */
export const AZURITE_ACCOUNT = "devstoreaccount1";
export const AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

export interface RunningAzurite {
  /** Shared-key connection string with the blob and queue endpoints. */
  connectionString: string;
  /** Blob service endpoint, `http://127.0.0.1:{port}/devstoreaccount1`. */
  blobUrl: string;
  /** Queue service endpoint, `http://127.0.0.1:{port}/devstoreaccount1`. */
  queueUrl: string;
  /** Ends the process group and waits for it to exit; safe to call twice. */
  stop(): Promise<void>;
}

const require = createRequire(import.meta.url);
const AZURITE_MAIN = require.resolve("azurite/dist/src/azurite.js");
const LISTENING = /Azurite (Blob|Queue) service is successfully listening at (http:\/\/[^\s]+)/g;

/** Starts Azurite (blob and queue services) and resolves once both accept connections. */
export async function startAzurite(options: { startTimeoutMs?: number } = {}): Promise<RunningAzurite> {
  const startTimeoutMs = options.startTimeoutMs ?? 20_000;
  const cwd = mkdtempSync(join(tmpdir(), "sluice-azurite-"));
  const child = spawn(
    process.execPath,
    [
      AZURITE_MAIN,
      "--blobHost", "127.0.0.1", "--blobPort", "0",
      "--queueHost", "127.0.0.1", "--queuePort", "0",
      "--tableHost", "127.0.0.1", "--tablePort", "0",
      "--inMemoryPersistence", "--extentMemoryLimit", "1024",
      "--skipApiVersionCheck", "--silent", "--loose", "--disableTelemetry",
    ],
    { cwd, detached: true, stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  // A crashed vitest worker would otherwise leave a detached Azurite behind.
  const killOnExit = () => killGroup(child, "SIGKILL");
  process.once("exit", killOnExit);

  let stopped = false;
  const stop = async () => {
    if (stopped) return exited;
    stopped = true;
    process.removeListener("exit", killOnExit);
    if (child.exitCode === null && child.signalCode === null) {
      killGroup(child, "SIGTERM");
      const timer = setTimeout(() => killGroup(child, "SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(cwd, { recursive: true, force: true });
  };

  try {
    const urls = await listeningUrls(child, exited, startTimeoutMs);
    await Promise.all([accepts(urls.Blob), accepts(urls.Queue)]);
    const blobUrl = `${urls.Blob}/${AZURITE_ACCOUNT}`;
    const queueUrl = `${urls.Queue}/${AZURITE_ACCOUNT}`;
    const connectionString =
      `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};` +
      `BlobEndpoint=${blobUrl};QueueEndpoint=${queueUrl};`;
    return { connectionString, blobUrl, queueUrl, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Starts Azurite before the file's tests and stops it after them; call at the top level of a
 * test file (or a describe) and read the running instance inside hooks and tests.
 */
export function useAzurite(): () => RunningAzurite {
  return useService("Azurite", () => startAzurite());
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Already gone.
  }
}

function listeningUrls(child: ChildProcess, exited: Promise<void>, timeoutMs: number): Promise<{ Blob: string; Queue: string }> {
  return new Promise((resolve, reject) => {
    let output = "";
    const found: Partial<Record<"Blob" | "Queue", string>> = {};
    let settled = false;
    const done = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.stdout?.removeListener("data", onData);
      child.stderr?.removeListener("data", onData);
      // Keep draining so a chatty Azurite never blocks on a full pipe.
      child.stdout?.resume();
      child.stderr?.resume();
      if (err) reject(err);
      else resolve({ Blob: found.Blob!, Queue: found.Queue! });
    };
    const onData = (chunk: Buffer) => {
      // Bounded: only the start-up lines matter.
      if (output.length < 64 * 1024) output += chunk.toString("utf8");
      for (const m of output.matchAll(LISTENING)) found[m[1] as "Blob" | "Queue"] = m[2]!.replace(/\/$/, "");
      if (found.Blob && found.Queue) done();
    };
    const timer = setTimeout(() => done(new Error(`Azurite did not start within ${timeoutMs} ms:\n${output}`)), timeoutMs);
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    void exited.then(() => done(new Error(`Azurite exited during start-up:\n${output}`)));
  });
}

/** Resolves once a TCP connection to the URL's host and port succeeds (a few tries). */
async function accepts(url: string): Promise<void> {
  const { hostname, port } = new URL(url);
  for (let attempt = 0; ; attempt++) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: hostname, port: Number(port) }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (attempt >= 50) throw new Error(`Azurite at ${url} does not accept connections`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
