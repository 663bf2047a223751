import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { UsageEvent } from "../../src/metering/events.ts";

/** A gateway started for a test, on some runtime, listening on 127.0.0.1. */
export interface GatewayUnderTest {
  /** Base URL, no trailing slash, e.g. http://127.0.0.1:53211 */
  url: string;
  close(): Promise<void>;
}

/** Starts the gateway with this (unvalidated) config on one runtime. */
export type StartGateway = (config: SluiceConfigInput) => Promise<GatewayUnderTest>;

/** A gateway whose usage events the test can read (a file sink on Node and Functions, the console on Workers). */
export interface GatewayWithEvents extends GatewayUnderTest {
  events(): UsageEvent[];
}

/** Starts the gateway with its usage events captured (the config's own `metering.sinks` are replaced). */
export type StartGatewayWithEvents = (config: SluiceConfigInput) => Promise<GatewayWithEvents>;
