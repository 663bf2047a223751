/**
 * End-to-end helpers on Node over real sockets: simulator backends and a gateway whose usage
 * events go to an NDJSON file the test reads, all closed after each test.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach } from "vitest";
import { startGatewayServer, type RunningGateway } from "../../adapters/node/server.ts";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { UsageEvent } from "../../src/metering/events.ts";

let closers: Array<() => Promise<unknown>> = [];

/** Registers the after-each cleanup; call once at the top of a test file. */
export function closeAfterEach(): void {
  afterEach(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    closers = [];
  });
}

/** Runs `close` after the current test. */
export function onClose(close: () => Promise<unknown>): void {
  closers.push(close);
}

export async function sim(name: string): Promise<RunningSimulator> {
  const s = await startSimulator({ name });
  onClose(() => s.close());
  return s;
}

export interface EventedGateway {
  url: string;
  running: RunningGateway;
  /** The config's metering section, for a reload that keeps it. */
  metering: { sinks: { type: "file"; path: string }[] };
  /** The usage events written so far. */
  events(): UsageEvent[];
}

/** The Node gateway on 127.0.0.1, its usage events in a temp NDJSON file. */
export async function eventedGateway(input: SluiceConfigInput): Promise<EventedGateway> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-e2e-"));
  const file = join(dir, "usage.ndjson");
  const running = await startGatewayServer(parseConfig({ ...input, metering: { sinks: [{ type: "file", path: file }] } }), { host: "127.0.0.1", port: 0 });
  onClose(async () => rmSync(dir, { recursive: true, force: true }));
  onClose(() => running.close(0));
  const events = (): UsageEvent[] => {
    try {
      return readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as UsageEvent);
    } catch {
      return [];
    }
  };
  return { url: running.url, running, metering: { sinks: [{ type: "file", path: file }] }, events };
}

export const chatBody = (model = "gpt-4o", extra: Record<string, unknown> = {}) => JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 8, ...extra });

export const post = (url: string, body: string, headers: Record<string, string> = {}) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
