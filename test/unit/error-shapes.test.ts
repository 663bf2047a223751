/**
 * The gateway's error bytes as users see them: each real client package parses them through
 * a `fetch` that stands in for the network only. Streams come from recorded provider
 * responses cut mid-way, then the gateway's stream error event (CONTRACT §4).
 */
import { readFileSync } from "node:fs";
import Anthropic from "@anthropic-ai/sdk";
import { createOpenAI } from "@ai-sdk/openai";
import { streamText } from "ai";
import OpenAI from "openai";
import { describe, expect, it } from "vitest";
import { errorResponse, streamErrorEvent, type AttemptRecord } from "../../src/http/errors.ts";
import { exhaustedResponse } from "../../src/proxy/exhaustion.ts";
import { HAVE_SHARED_FIXTURES, needsFixtures } from "../harness/shared-fixtures.ts";

const dir = new URL("../../../shared/fixtures/recorded/", import.meta.url);
const recorded = (name: string) => readFileSync(new URL(name, dir), "utf8");
const enc = new TextEncoder();
const INTERRUPTED = "the stream from backend b1 was interrupted; the response is incomplete";

/** A recorded SSE body's events, whole (a relay that breaks passes only whole events on). */
function events(text: string): string[] {
  return text.split(/\n\n+/).filter((e) => e.trim()).map((e) => `${e}\n\n`);
}

/** The first half of a recorded stream's events, then the gateway's error event. */
function broken(text: string, tail: Uint8Array): Uint8Array<ArrayBuffer> {
  const all = events(text);
  const head = enc.encode(all.slice(0, Math.ceil(all.length / 2)).join(""));
  const out = new Uint8Array(head.byteLength + tail.byteLength);
  out.set(head);
  out.set(tail, head.byteLength);
  return out;
}

/** The network: one answer, whatever was asked; records what was asked. */
function network(answer: () => Response) {
  const asked: string[] = [];
  const fetch = async (input: string | URL | Request): Promise<Response> => {
    asked.push(input instanceof Request ? input.url : String(input));
    return answer();
  };
  return { fetch: fetch as typeof globalThis.fetch, asked };
}

const sse = (bytes: Uint8Array<ArrayBuffer>) => () => new Response(bytes, { status: 200, headers: { "content-type": "text/event-stream" } });

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection");
}

const attempts: AttemptRecord[] = [
  { backend: "b1", status: 429, ms: 12 },
  { backend: "b2", status: 429, ms: 9 },
];

describe("Anthropic clients (/v1/messages)", () => {
  const client = (fetch: typeof globalThis.fetch) => new Anthropic({ apiKey: "x", fetch, maxRetries: 0 });
  const ask = (c: Anthropic) => c.messages.create({ model: "claude-sonnet-4", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });

  it("a 429 is the SDK's RateLimitError with the gateway's type, message, code and attempts", async () => {
    const res = () => errorResponse({ api: "messages", status: 429, code: "queue_full", message: "the gateway's queue is full; retry later", attempts, headers: { "x-request-id": "req-1", "retry-after": "2" } });
    const err = await rejection(ask(client(network(res).fetch)));
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    const e = err as InstanceType<typeof Anthropic.RateLimitError>;
    expect(e.status).toBe(429);
    expect(e.type).toBe("rate_limit_error");
    expect(e.apiMessage).toBe("the gateway's queue is full; retry later");
    // The Anthropic SDK's message is the status and the body's JSON, as for Anthropic's own errors.
    expect(e.message).toMatch(/^429 \{"type":"error"/);
    expect(e.message).toContain("the gateway's queue is full; retry later");
    expect(e.errorCode).toBe("queue_full");
    expect(e.error).toEqual({
      type: "error",
      error: { type: "rate_limit_error", message: "the gateway's queue is full; retry later", details: { error_code: "queue_full", attempts } },
      request_id: "req-1",
    });
  });

  it("a 503 is the SDK's ServiceUnavailableError (an InternalServerError) of type overloaded_error", async () => {
    const res = () => exhaustedResponse([], { reason: "circuit-open", retryAfterMs: 1500 }, { "x-request-id": "req-2" }, "messages");
    const err = await rejection(ask(client(network(res).fetch)));
    expect(err).toBeInstanceOf(Anthropic.ServiceUnavailableError);
    expect(err).toBeInstanceOf(Anthropic.InternalServerError);
    const e = err as InstanceType<typeof Anthropic.APIError>;
    expect(e.type).toBe("overloaded_error");
    expect(e.apiMessage).toBe("every eligible backend's circuit breaker is open");
    expect(e.errorCode).toBe("circuit_open");
    expect(e.headers?.get("retry-after-ms")).toBe("1500");
  });

  it("exhaustion keeps the common status: 529s stay OverloadedError, timeouts are timeout_error", async () => {
    const overloaded = () => exhaustedResponse([{ backend: "a", status: 529, ms: 3 }], { reason: "tried-all" }, {}, "messages");
    const e1 = (await rejection(ask(client(network(overloaded).fetch)))) as InstanceType<typeof Anthropic.APIError>;
    expect(e1).toBeInstanceOf(Anthropic.OverloadedError);
    expect(e1.type).toBe("overloaded_error");
    expect(e1.apiMessage).toBe("no backend could answer (a: 529)");
    const timedOut = () => exhaustedResponse([{ backend: "a", status: 504, error: "timeout", ms: 30_000 }], { reason: "tried-all" }, {}, "messages");
    const e2 = (await rejection(ask(client(network(timedOut).fetch)))) as InstanceType<typeof Anthropic.APIError>;
    expect(e2).toBeInstanceOf(Anthropic.GatewayTimeoutError);
    expect(e2.type).toBe("timeout_error");
    expect(e2.errorCode).toBe("backends_timed_out");
  });

  it("maps the other statuses to Anthropic's error types", async () => {
    const cases: [number, string][] = [
      [400, "invalid_request_error"],
      [401, "authentication_error"],
      [403, "permission_error"],
      [404, "not_found_error"],
      [412, "invalid_request_error"],
      [413, "request_too_large"],
      [500, "api_error"],
      [502, "api_error"],
    ];
    for (const [status, type] of cases) {
      const res = () => errorResponse({ api: "messages", status, code: "c", message: `m${status}` });
      const e = (await rejection(ask(client(network(res).fetch)))) as InstanceType<typeof Anthropic.APIError>;
      expect([e.status, e.type, e.apiMessage], String(status)).toEqual([status, type, `m${status}`]);
    }
  });

  const stream = () => broken(recorded("anthropoc-claude-sonnet-4.txt"), streamErrorEvent("messages", "b1"));

  it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("a recorded stream cut mid-way: create({stream:true}) yields the events, then throws the gateway's error"), async () => {
    const got: string[] = [];
    const err = await rejection(
      (async () => {
        const s = await client(network(sse(stream())).fetch).messages.create({ model: "claude-sonnet-4", max_tokens: 64, stream: true, messages: [{ role: "user", content: "haiku" }] });
        for await (const ev of s) if (ev.type === "content_block_delta" && ev.delta.type === "text_delta") got.push(ev.delta.text);
      })(),
    );
    expect(got.join("")).toMatch(/^Here's a haiku/);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    const e = err as InstanceType<typeof Anthropic.APIError>;
    expect(e.type).toBe("api_error");
    expect(e.apiMessage).toBe(INTERRUPTED);
    expect(e.message).toContain(INTERRUPTED);
    expect(e.errorCode).toBe("stream_interrupted");
  });

  it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("a recorded stream cut mid-way: messages.stream() rejects finalMessage with the gateway's error"), async () => {
    const s = client(network(sse(stream())).fetch).messages.stream({ model: "claude-sonnet-4", max_tokens: 64, messages: [{ role: "user", content: "haiku" }] });
    let text = "";
    s.on("text", (t) => (text += t));
    const err = (await rejection(s.finalMessage())) as InstanceType<typeof Anthropic.APIError>;
    expect(text).toMatch(/^Here's a haiku/);
    expect(err.apiMessage).toBe(INTERRUPTED);
  });
});

/** The recorded gpt-5-nano Response, replayed as the Responses stream OpenAI sends, cut after the first output item. */
function responsesStream(): { text: string; next: number } {
  const done = JSON.parse(recorded("gpt5-nano-response.txt")) as { output: unknown[] } & Record<string, unknown>;
  const started = { ...done, status: "in_progress", output: [], usage: null, incomplete_details: null };
  const evs: Record<string, unknown>[] = [
    { type: "response.created", response: started },
    { type: "response.in_progress", response: started },
    { type: "response.output_item.added", output_index: 0, item: done.output[0] },
  ];
  const text = evs.map((e, i) => `event: ${String(e.type)}\ndata: ${JSON.stringify({ ...e, sequence_number: i })}\n\n`).join("");
  return { text, next: evs.length };
}

function withTail(text: string, tail: Uint8Array): Uint8Array<ArrayBuffer> {
  const head = enc.encode(text);
  const out = new Uint8Array(head.byteLength + tail.byteLength);
  out.set(head);
  out.set(tail, head.byteLength);
  return out;
}

describe.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("Responses API clients"), () => {
  const { text, next } = HAVE_SHARED_FIXTURES ? responsesStream() : { text: "", next: 0 };
  const body = () => withTail(text, streamErrorEvent("responses", "b1", next));

  it("the event is the Responses API's own error event, numbered one past the last", () => {
    const bytes = new TextDecoder().decode(streamErrorEvent("responses", "b1", next));
    expect(bytes).toBe(`event: error\ndata: ${JSON.stringify({ type: "error", code: "stream_interrupted", message: INTERRUPTED, param: null, sequence_number: 3 })}\n\n`);
    expect(bytes).not.toContain("[DONE]");
  });

  it("the AI SDK (streamText, responses model) surfaces the gateway's message, not a type validation failure", async () => {
    const { fetch, asked } = network(sse(body()));
    const errors: unknown[] = [];
    const result = streamText({ model: createOpenAI({ fetch, apiKey: "x" }).responses("gpt-5-nano"), prompt: "hi", maxRetries: 0, onError: ({ error }) => void errors.push(error) });
    const parts: { type: string; error?: unknown }[] = [];
    for await (const part of result.fullStream) parts.push(part);
    expect(asked).toEqual(["https://api.openai.com/v1/responses"]);
    expect(parts.map((p) => p.type)).toContain("reasoning-start");
    const errorParts = parts.filter((p) => p.type === "error");
    expect(errorParts).toHaveLength(1);
    const error = errorParts[0]!.error as Error;
    expect(error.message).toBe(INTERRUPTED);
    expect(error.message).not.toContain("Type validation failed");
    expect(errors).toEqual([error]);
  });

  it("(why) the chat-shaped event on a Responses stream is a type validation failure in the AI SDK", async () => {
    const { fetch } = network(sse(withTail(text, streamErrorEvent("chat", "b1"))));
    const result = streamText({ model: createOpenAI({ fetch, apiKey: "x" }).responses("gpt-5-nano"), prompt: "hi", maxRetries: 0, onError: () => {} });
    let message = "";
    for await (const part of result.fullStream) if (part.type === "error") message = (part.error as Error).message;
    expect(message).toMatch(/^Type validation failed/);
  });

  it("the openai SDK's responses.create({stream:true}) throws an APIError with the gateway's message and code", async () => {
    const c = new OpenAI({ apiKey: "x", fetch: network(sse(body())).fetch, maxRetries: 0 });
    const seen: string[] = [];
    const err = await rejection(
      (async () => {
        const s = await c.responses.create({ model: "gpt-5-nano", input: "hi", stream: true });
        for await (const ev of s) seen.push(ev.type);
      })(),
    );
    expect(seen).toEqual(["response.created", "response.in_progress", "response.output_item.added"]);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    const e = err as InstanceType<typeof OpenAI.APIError>;
    expect(e.message).toBe(INTERRUPTED);
    expect(e.code).toBe("stream_interrupted");
  });

  it("the openai SDK's responses.stream() rejects finalResponse with the gateway's message", async () => {
    const c = new OpenAI({ apiKey: "x", fetch: network(sse(body())).fetch, maxRetries: 0 });
    const s = c.responses.stream({ model: "gpt-5-nano", input: "hi" });
    const err = (await rejection(s.finalResponse())) as Error;
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.message).toBe(INTERRUPTED);
  });
});

describe("OpenAI chat clients", () => {
  const body = () => broken(recorded("aoai2.txt"), streamErrorEvent("chat", "b1"));

  it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("the openai SDK's chat stream yields the recorded chunks, then throws the gateway's message"), async () => {
    const c = new OpenAI({ apiKey: "x", fetch: network(sse(body())).fetch, maxRetries: 0 });
    let text = "";
    const err = await rejection(
      (async () => {
        const s = await c.chat.completions.create({ model: "gpt-4.1", messages: [{ role: "user", content: "joke" }], stream: true });
        for await (const chunk of s) text += chunk.choices[0]?.delta.content ?? "";
      })(),
    );
    expect(text).toMatch(/^Why did the/);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    const e = err as InstanceType<typeof OpenAI.APIError>;
    expect(e.message).toBe(INTERRUPTED);
    expect(e.code).toBe("stream_interrupted");
    expect(e.type).toBe("sluice_error");
  });

  it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("the AI SDK's chat model surfaces the gateway's message too"), async () => {
    const { fetch } = network(sse(body()));
    const result = streamText({ model: createOpenAI({ fetch, apiKey: "x" }).chat("gpt-4.1"), prompt: "joke", maxRetries: 0, onError: () => {} });
    let message = "";
    for await (const part of result.fullStream) if (part.type === "error") message = (part.error as Error).message;
    expect(message).toBe(INTERRUPTED);
  });

  it("an OpenAI-shaped 429 is the openai SDK's RateLimitError with the gateway's code", async () => {
    for (const api of ["chat", "responses", "embeddings", undefined] as const) {
      const res = () => errorResponse({ api, status: 429, code: "queue_full", message: "the gateway's queue is full; retry later", headers: { "retry-after": "1" } });
      const c = new OpenAI({ apiKey: "x", fetch: network(res).fetch, maxRetries: 0 });
      const err = await rejection(c.chat.completions.create({ model: "m", messages: [] }));
      expect(err, String(api)).toBeInstanceOf(OpenAI.RateLimitError);
      const e = err as InstanceType<typeof OpenAI.APIError>;
      expect([e.message, e.code, e.type]).toEqual(["429 the gateway's queue is full; retry later", "queue_full", "sluice_error"]);
    }
  });

  it("exhaustion on an OpenAI path names each attempt in the OpenAI shape", async () => {
    const res = exhaustedResponse(attempts, { reason: "tried-all", retryAfterMs: 2500 }, { "x-request-id": "r" }, "chat");
    expect(res.status).toBe(429);
    expect(res.headers.get("retry-after")).toBe("3");
    expect(await res.json()).toEqual({ error: { message: "no backend could answer (b1: 429; b2: 429)", type: "sluice_error", code: "backends_exhausted", attempts } });
  });
});
