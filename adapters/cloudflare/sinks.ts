import { ConfigError } from "../../src/config/load.ts";
import type { SinkConfig } from "../../src/config/schema.ts";
import { ConsoleSink, type UsageEvent, type UsageSink } from "../../src/metering/events.ts";

/** A Cloudflare Queue producer binding, as far as the sink uses it. */
export interface QueueProducer {
  send(body: unknown): Promise<void>;
}

/** Usage events to a Cloudflare Queue, for a consumer that bills or aggregates them. */
class QueueSink implements UsageSink {
  constructor(
    private readonly queue: QueueProducer,
    private readonly binding: string,
  ) {}

  emit(event: UsageEvent): void {
    this.queue.send(event).catch((err: unknown) => console.error(`sluice: usage queue ${this.binding}: ${String(err)}`));
  }
}

/** The usage sinks of `metering.sinks` that Workers have: stdout and console both go to the console; queues by binding. */
export function workerSinks(configs: readonly SinkConfig[], env: Record<string, unknown>): UsageSink[] {
  return configs.map((c, i) => {
    switch (c.type) {
      case "stdout":
      case "console":
        return new ConsoleSink();
      case "queue": {
        const queue = env[c.binding] as QueueProducer | undefined;
        if (typeof queue?.send !== "function") throw new ConfigError([`metering.sinks[${i}].binding: no Queue binding named ${c.binding}`]);
        return new QueueSink(queue, c.binding);
      }
      case "file":
        throw new ConfigError([`metering.sinks[${i}]: a file sink does not exist on Workers (use console or queue)`]);
    }
  });
}
