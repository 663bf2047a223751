/**
 * End-to-end helpers on Node over real sockets: simulator backends and a gateway whose usage
 * events go to an NDJSON file the test reads, all closed after each test.
 */
import { afterEach } from "vitest";
import { startGatewayServer, type RunningGateway } from "../../adapters/node/server.ts";
import { startSimulator, type RunningSimulator } from "../../adapters/node/simulator-server.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { UsageEvent } from "../../src/metering/events.ts";
import { usageFile } from "./usage-events.ts";

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
  const file = usageFile();
  const running = await startGatewayServer(parseConfig({ ...input, metering: { sinks: [{ type: "file", path: file.path }] } }), { host: "127.0.0.1", port: 0 });
  onClose(async () => file.remove());
  onClose(() => running.close(0));
  return { url: running.url, running, metering: { sinks: [{ type: "file", path: file.path }] }, events: file.events };
}

export const chatBody = (model = "gpt-4o", extra: Record<string, unknown> = {}) => JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 8, ...extra });

export const post = (url: string, body: string, headers: Record<string, string> = {}, signal?: AbortSignal) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body, signal });
