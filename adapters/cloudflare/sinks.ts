import { ConfigError } from "../../src/config/load.ts";
import type { SinkConfig } from "../../src/config/schema.ts";
import { ConsoleSink, type UsageEvent, type UsageSink } from "../../src/metering/events.ts";
import { BackgroundCalls } from "./rpc-calls.ts";

/** A Cloudflare Queue producer binding, as far as the sink uses it. */
export interface QueueProducer {
  send(body: unknown): Promise<void>;
}

/**
 * Usage events to a Cloudflare Queue, for a consumer that bills or aggregates them. Each send
 * is kept alive with the sending request's `waitUntil` (BackgroundCalls): an event is emitted
 * as its exchange settles, often as the response ends, and a send still in flight when the
 * invocation ends would be dropped. A send is not retried (it is not idempotent); a failed one
 * is logged.
 */
export class QueueSink implements UsageSink {
  private readonly sends: BackgroundCalls;

  constructor(
    private readonly queue: QueueProducer,
    binding: string,
  ) {
    this.sends = new BackgroundCalls(`usage queue ${binding}:`, false);
  }

  emit(event: UsageEvent): void {
    this.sends.send("send", () => this.queue.send(event));
  }

  /** Resolves when every event emitted so far has been sent (or has failed and been logged). */
  flush(): Promise<void> {
    return this.sends.flush();
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
