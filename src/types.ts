/**
 * Types shared by every step of the request pipeline and by the adapters. A leaf module:
 * it imports nothing, so any module may depend on it without cycles.
 */

/** A request body as the gateway holds it: the client's bytes (or a documented rewrite). */
export type BodyBytes = Uint8Array<ArrayBuffer>;

/** What the core needs of "the client went away": an AbortSignal, or an adapter's lighter one. */
export interface ClientSignal {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: "abort", listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

/** What the core reads of a header set: a Web Headers, or an adapter's lighter view. */
export interface HeaderSource {
  get(name: string): string | null;
  forEach(callback: (value: string, name: string) => void): void;
}

/** Header pairs, a HeadersInit every runtime accepts, cheaper to build than a Headers. */
export type HeaderPairs = [string, string][];

/** The API family a client speaks, from its path: it decides the shape of the gateway's errors. */
export type ApiKind = "chat" | "completions" | "embeddings" | "responses" | "messages" | "models" | "other";

/** The backend kinds the gateway can talk to (one module each under src/backends/). */
export type BackendKindName = "openai" | "azure-openai" | "apim" | "anthropic";
