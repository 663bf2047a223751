/**
 * The few parts of the Workers runtime module the Cloudflare adapter uses. The full
 * @cloudflare/workers-types cannot be loaded beside the DOM and Node typings the rest of the
 * project is checked with, so only these are declared. Bundlers must leave `cloudflare:*`
 * imports external (wrangler does; esbuild needs `--external:cloudflare:*`).
 */
declare module "cloudflare:workers" {
  export interface DurableObjectStorage {
    setAlarm(scheduledTime: number | Date, options?: { allowConcurrency?: boolean; allowUnconfirmed?: boolean }): Promise<void>;
  }
  export interface DurableObjectId {
    /** The name the object was addressed by (idFromName), where the runtime provides it. */
    readonly name?: string;
  }
  export interface DurableObjectState {
    readonly id: DurableObjectId;
    readonly storage: DurableObjectStorage;
  }
  /** Base class of a Durable Object whose public methods are callable over JS RPC. */
  export abstract class DurableObject<Env = unknown> {
    protected ctx: DurableObjectState;
    protected env: Env;
    constructor(ctx: DurableObjectState, env: Env);
  }
  /** Keeps the current invocation alive until the promise settles. */
  export function waitUntil(promise: Promise<unknown>): void;
}
