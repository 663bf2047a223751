import { createWriteStream, type WriteStream } from "node:fs";
import type { SinkConfig } from "../../src/config/schema.ts";
import { ConsoleSink, type UsageEvent, type UsageSink } from "../../src/metering/events.ts";

/**
 * NDJSON lines gathered and written once per turn of the event loop, so a burst of requests
 * costs one write, not one per request.
 */
class BatchedLineSink implements UsageSink {
  private lines: string[] = [];
  private scheduled = false;

  constructor(private readonly write: (text: string) => void) {}

  emit(event: UsageEvent): void {
    this.lines.push(JSON.stringify(event));
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  flush(): void {
    this.scheduled = false;
    if (!this.lines.length) return;
    const text = `${this.lines.join("\n")}\n`;
    this.lines = [];
    this.write(text);
  }
}

export interface NodeSinks {
  sinks: UsageSink[];
  /** Writes what is still buffered and closes files (at shutdown). */
  close(): Promise<void>;
}

/** The usage sinks of `metering.sinks` that Node has: stdout, a file, the console. */
export function nodeSinks(configs: readonly SinkConfig[]): NodeSinks {
  const files: WriteStream[] = [];
  const batched: BatchedLineSink[] = [];
  const sinks = configs.map((c): UsageSink => {
    switch (c.type) {
      case "stdout": {
        const s = new BatchedLineSink((text) => process.stdout.write(text));
        batched.push(s);
        return s;
      }
      case "file": {
        const file = createWriteStream(c.path, { flags: "a" });
        file.on("error", (err) => console.error(`sluice: usage file ${c.path}: ${err.message}`));
        files.push(file);
        const s = new BatchedLineSink((text) => file.write(text));
        batched.push(s);
        return s;
      }
      case "console":
        return new ConsoleSink();
      case "queue":
        throw new Error(`metering.sinks: a "queue" sink (binding ${c.binding}) exists on Cloudflare Workers only`);
    }
  });
  return {
    sinks,
    close: async () => {
      for (const s of batched) s.flush();
      await Promise.all(files.map((f) => new Promise<void>((resolve) => f.end(resolve))));
    },
  };
}
