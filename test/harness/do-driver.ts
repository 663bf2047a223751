import { Miniflare } from "miniflare";
import { bundleWorker, COMPATIBILITY_DATE } from "./workers.ts";

/** The WebSocket miniflare hands back from an upgrade (its own class, not Node's). */
interface DriverSocket {
  accept(): void;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
}

/** What the driver Worker answers to a numbered message. */
export interface DriverAnswer {
  result: unknown;
  rid?: number | null;
}

/**
 * One WebSocket to a test-only driver Worker that calls a Durable Object for the Node test
 * process: one socket, so calls arrive in the order they were sent.
 */
export class DriverConnection {
  private n = 0;
  private readonly answers = new Map<number, { resolve: (v: DriverAnswer) => void; reject: (e: Error) => void }>();

  constructor(private readonly ws: DriverSocket) {
    ws.addEventListener("message", (event) => {
      const m = JSON.parse(String(event.data)) as { n: number; result?: unknown; rid?: number | null; error?: string };
      const answer = this.answers.get(m.n);
      this.answers.delete(m.n);
      if (m.error !== undefined) answer?.reject(new Error(m.error));
      else answer?.resolve({ result: m.result, rid: m.rid });
    });
  }

  /** Sends a numbered message and waits for its answer. */
  ask(message: Record<string, unknown>): { n: number; answer: Promise<DriverAnswer> } {
    const n = ++this.n;
    const answer = new Promise<DriverAnswer>((resolve, reject) => this.answers.set(n, { resolve, reject }));
    this.ws.send(JSON.stringify({ n, ...message }));
    return { n, answer };
  }

  /** Sends a message nobody waits for. */
  tell(message: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(message));
  }
}

/**
 * Miniflare with the driver Worker and the gateway Worker, whose entry exports the Durable
 * Object class bound as `binding` in both; returns the driver's connection.
 */
export async function startDriver(options: {
  driver: string;
  binding: string;
  objectClass: { className: string };
  bindings?: Record<string, string>;
}): Promise<{ connection: DriverConnection; close(): Promise<void> }> {
  const gateway = await bundleWorker();
  const mf = new Miniflare({
    workers: [
      {
        name: "driver",
        modules: [{ type: "ESModule", path: "driver.js", contents: options.driver }],
        compatibilityDate: COMPATIBILITY_DATE,
        durableObjects: { [options.binding]: { ...options.objectClass, scriptName: "gateway" } },
      },
      {
        name: "gateway",
        modules: [{ type: "ESModule", path: "worker.js", contents: gateway }],
        compatibilityDate: COMPATIBILITY_DATE,
        bindings: options.bindings ?? {},
        durableObjects: { [options.binding]: options.objectClass },
      },
    ],
  });
  const res = await mf.dispatchFetch("http://driver.local/", { headers: { upgrade: "websocket" } });
  const ws = res.webSocket as unknown as DriverSocket | null;
  if (!ws) throw new Error(`the driver did not upgrade: ${res.status} ${await res.text()}`);
  ws.accept();
  return {
    connection: new DriverConnection(ws),
    close: async () => {
      ws.close(1000, "done");
      await mf.dispose();
    },
  };
}
