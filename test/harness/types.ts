import type { SluiceConfigInput } from "../../src/config/schema.ts";

/** A gateway started for a test, on some runtime, listening on 127.0.0.1. */
export interface GatewayUnderTest {
  /** Base URL, no trailing slash, e.g. http://127.0.0.1:53211 */
  url: string;
  close(): Promise<void>;
}

/** Starts the gateway with this (unvalidated) config on one runtime. */
export type StartGateway = (config: SluiceConfigInput) => Promise<GatewayUnderTest>;
