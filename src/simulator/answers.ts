import type { IRequest } from "itty-router";
import { type Exchange, type Json, jsonResponse } from "./exchange.ts";
import { errorBody } from "./faults.ts";
import * as shapes from "./shapes.ts";
import { pacedBody, splitEven } from "./stream.ts";
import { formatResetDuration } from "./tpm.ts";

const DEFAULT_CHUNKS = 8;
const DEFAULT_DIMENSIONS = 16;
const encoder = new TextEncoder();

function randomId(prefix: string): string {
  return prefix + crypto.randomUUID().replaceAll("-", "");
}

function positiveNumber(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? Math.floor(value) : undefined;
}

/** Builds the completion every shape renders: `chunks` words, cut by the request's token cap. */
function complete(ex: Exchange, json: Json, model: string, promptTokens: number, idPrefix: string): shapes.Completion {
  const wanted = ex.fault?.chunks ?? DEFAULT_CHUNKS;
  const cap = positiveNumber(json.max_completion_tokens) ?? positiveNumber(json.max_tokens) ?? positiveNumber(json.max_output_tokens);
  const count = cap === undefined ? wanted : Math.min(wanted, cap);
  return {
    id: randomId(idPrefix),
    created: Math.floor(ex.state.now() / 1000),
    model,
    words: shapes.makeWords(count),
    promptTokens,
    truncated: count < wanted,
  };
}

function isStream(json: Json): boolean {
  return json.stream === true;
}

function includeUsage(json: Json): boolean {
  const options = json.stream_options;
  return typeof options === "object" && options !== null && (options as Json).include_usage === true;
}

/**
 * Sends a generated answer: charges the token window first, then streams the payload one
 * event per chunk (a JSON body is one chunk, cut into pieces only to honour a reset fault).
 */
function deliver(ex: Exchange, tokens: number, payload: Json | string[]): Response {
  const headers = new Headers(ex.headers);
  const window = ex.state.tokens;
  if (window) {
    const decision = window.take(tokens);
    headers.set("x-ratelimit-limit-tokens", String(window.limit));
    headers.set("x-ratelimit-remaining-tokens", String(decision.remaining));
    if (!decision.ok) {
      const seconds = Math.ceil(decision.retryAfterMs / 1000);
      headers.set("content-type", "application/json");
      headers.set("retry-after-ms", String(decision.retryAfterMs));
      headers.set("retry-after", String(seconds));
      headers.set("x-ratelimit-reset-tokens", formatResetDuration(decision.retryAfterMs));
      const message = `Requests have exceeded the token rate limit of ${window.limit} tokens per minute. Please retry after ${seconds} seconds.`;
      return new Response(errorBody(429, message, "rate_limit_exceeded"), { status: 429, headers });
    }
  }
  const fault = ex.fault ?? {};
  const resetAfter = typeof fault.reset === "number" ? fault.reset : undefined;
  let chunks: Uint8Array[];
  if (Array.isArray(payload)) {
    headers.set("content-type", "text/event-stream");
    headers.set("cache-control", "no-cache");
    chunks = payload.map((event) => encoder.encode(event));
  } else {
    headers.set("content-type", "application/json");
    const bytes = encoder.encode(JSON.stringify(payload));
    chunks = resetAfter !== undefined ? splitEven(bytes, resetAfter + 1) : [bytes];
    // A stalled JSON answer still announces its length, as a real one would.
    if (fault.stallAfter !== undefined) headers.set("content-length", String(bytes.byteLength));
  }
  for (const [k, v] of Object.entries(fault.headers ?? {})) headers.set(k, v);
  const body = pacedBody(chunks, { paceMs: fault.paceMs ?? ex.state.paceMs, resetAfter, stallAfter: fault.stallAfter, tracker: ex.state.trackBody() });
  return new Response(body, { status: 200, headers });
}

function badRequest(ex: Exchange, message: string): Response {
  return jsonResponse(ex, 400, errorBody(400, message, "invalid_request_error"));
}

/** Azure names the model in the URL; OpenAI and Anthropic in the body. */
function modelOf(request: IRequest, json: Json): string {
  const deployment = request.params.deployment;
  if (deployment) return decodeURIComponent(deployment);
  return typeof json.model === "string" ? json.model : "sim-model";
}

function isAzure(request: IRequest): boolean {
  return request.params.deployment !== undefined;
}

export function chat(request: IRequest, ex: Exchange): Response {
  const json = ex.json;
  if (!json) return badRequest(ex, "request body must be a JSON object");
  const messages = Array.isArray(json.messages) ? json.messages : [];
  const chars = messages.reduce((n: number, m: unknown) => n + shapes.textOf((m as Json | null)?.content).length, 0);
  const c = complete(ex, json, modelOf(request, json), shapes.estimateTokens(chars), "chatcmpl-");
  const tokens = c.promptTokens + c.words.length;
  if (!isStream(json)) return deliver(ex, tokens, shapes.chatCompletion(c));
  return deliver(ex, tokens, shapes.chatStream(c, { azure: isAzure(request), includeUsage: includeUsage(json) }));
}

export function completions(request: IRequest, ex: Exchange): Response {
  const json = ex.json;
  if (!json) return badRequest(ex, "request body must be a JSON object");
  const prompt = Array.isArray(json.prompt) ? json.prompt.map(shapes.textOf).join("") : shapes.textOf(json.prompt);
  const c = complete(ex, json, modelOf(request, json), shapes.estimateTokens(prompt.length), "cmpl-");
  const tokens = c.promptTokens + c.words.length;
  if (!isStream(json)) return deliver(ex, tokens, shapes.textCompletion(c));
  return deliver(ex, tokens, shapes.textCompletionStream(c, { azure: isAzure(request), includeUsage: includeUsage(json) }));
}

function embeddingInputs(input: unknown): shapes.EmbeddingInput[] | null {
  if (typeof input === "string") return [input];
  if (!Array.isArray(input) || input.length === 0) return null;
  if (input.every((x) => typeof x === "number")) return [input as number[]];
  if (input.every((x) => typeof x === "string" || (Array.isArray(x) && x.every((t) => typeof t === "number")))) {
    return input as shapes.EmbeddingInput[];
  }
  return null;
}

export function embeddings(request: IRequest, ex: Exchange): Response {
  const json = ex.json;
  if (!json) return badRequest(ex, "request body must be a JSON object");
  const inputs = embeddingInputs(json.input);
  if (!inputs) return badRequest(ex, "'input' must be a string, an array of strings, or token arrays");
  const dimensions = positiveNumber(json.dimensions) || DEFAULT_DIMENSIONS;
  const payload = shapes.embeddings(modelOf(request, json), inputs, dimensions, json.encoding_format === "base64");
  return deliver(ex, shapes.embeddingTokens(inputs), payload);
}

export function responses(request: IRequest, ex: Exchange): Response {
  const json = ex.json;
  if (!json) return badRequest(ex, "request body must be a JSON object");
  const input = Array.isArray(json.input) ? json.input.map(shapes.textOf).join("") : shapes.textOf(json.input);
  const chars = input.length + shapes.textOf(json.instructions).length;
  const c = complete(ex, json, modelOf(request, json), shapes.estimateTokens(chars), "resp_");
  const tokens = c.promptTokens + c.words.length;
  return deliver(ex, tokens, isStream(json) ? shapes.responseStream(c) : shapes.response(c));
}

export function messages(request: IRequest, ex: Exchange): Response {
  const json = ex.json;
  if (!json) return badRequest(ex, "request body must be a JSON object");
  const list = Array.isArray(json.messages) ? json.messages : [];
  const chars = list.reduce((n: number, m: unknown) => n + shapes.textOf((m as Json | null)?.content).length, shapes.textOf(json.system).length);
  const c = complete(ex, json, modelOf(request, json), shapes.estimateTokens(chars), "msg_");
  const tokens = c.promptTokens + c.words.length;
  return deliver(ex, tokens, isStream(json) ? shapes.anthropicStream(c) : shapes.anthropicMessage(c));
}

export function other(request: IRequest, ex: Exchange): Response {
  return jsonResponse(ex, 200, { ok: true, path: ex.url.pathname, method: request.method });
}
