/** Usage events as a test reads them from a runtime: an NDJSON file (Node, Azure Functions) or a Worker's console. */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { UsageEvent } from "../../src/metering/events.ts";

/** A temp NDJSON file for a `file` usage sink, its events, and its removal. */
export function usageFile(): { path: string; events(): UsageEvent[]; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), "sluice-usage-"));
  const path = join(dir, "usage.ndjson");
  return {
    path,
    events() {
      try {
        return readFileSync(path, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as UsageEvent);
      } catch {
        return [];
      }
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Events a `console` sink writes, one JSON line each, picked out of a process's stdout. */
export class ConsoleEvents {
  readonly events: UsageEvent[] = [];
  private partial = "";

  feed(data: string): void {
    const lines = (this.partial + data).split("\n");
    this.partial = lines.pop()!;
    for (const line of lines) {
      const start = line.indexOf('{"time"');
      if (start < 0) continue;
      try {
        this.events.push(JSON.parse(line.slice(start)) as UsageEvent);
      } catch {
        // Not an event.
      }
    }
  }
}
