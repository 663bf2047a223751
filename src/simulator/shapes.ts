/**
 * Payload builders for the provider shapes the simulator speaks. Each answer is built from
 * one `Completion` so that the text, the streamed deltas and the usage always agree: one
 * word is one token.
 */

type Json = Record<string, unknown>;

export interface Completion {
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
  words: string[];
  promptTokens: number;
  /** The word count was cut by the request's max tokens. */
  truncated: boolean;
}

const VOCABULARY = [
  "Sluice", "simulated", "this", "answer", "one", "word", "at", "a", "time", "so",
  "tokens", "are", "easy", "to", "count", "exactly",
];

export function makeWords(count: number): string[] {
  return Array.from({ length: count }, (_, i) => VOCABULARY[i % VOCABULARY.length]!);
}

/** The delta for word `i`: words after the first carry their leading space, as real tokens do. */
function delta(words: string[], i: number): string {
  return i === 0 ? words[0]! : ` ${words[i]!}`;
}

function text(c: Completion): string {
  return c.words.join(" ");
}

export function estimateTokens(chars: number): number {
  return Math.max(1, Math.ceil(chars / 4));
}

/** Text inside a message `content`: a string, or parts carrying `text` (nested content too). */
export function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map(textOf).join("");
  if (content && typeof content === "object") {
    const part = content as Json;
    if (typeof part.text === "string") return part.text;
    if ("content" in part) return textOf(part.content);
  }
  return "";
}

export function sse(data: unknown): string {
  return `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`;
}

export function namedSse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

// ---- OpenAI / Azure chat completions ----

function chatUsage(c: Completion): Json {
  const completion = c.words.length;
  return { prompt_tokens: c.promptTokens, completion_tokens: completion, total_tokens: c.promptTokens + completion };
}

function finishReason(c: Completion): string {
  return c.truncated ? "length" : "stop";
}

export function chatCompletion(c: Completion): Json {
  return {
    id: c.id,
    object: "chat.completion",
    created: c.created,
    model: c.model,
    choices: [
      { index: 0, message: { role: "assistant", content: text(c), refusal: null }, logprobs: null, finish_reason: finishReason(c) },
    ],
    usage: chatUsage(c),
    system_fingerprint: "fp_sluice_sim",
  };
}

/** Azure sends its prompt filter verdict as a first, choice-less chunk. */
const AZURE_PROMPT_FILTER = {
  choices: [],
  created: 0,
  id: "",
  model: "",
  object: "",
  prompt_filter_results: [{ prompt_index: 0, content_filter_results: {} }],
};

export interface StreamFlavour {
  azure: boolean;
  includeUsage: boolean;
}

export function chatStream(c: Completion, flavour: StreamFlavour): string[] {
  const base = { id: c.id, object: "chat.completion.chunk", created: c.created, model: c.model, system_fingerprint: "fp_sluice_sim" };
  // With include_usage, OpenAI marks every regular chunk with `usage: null`.
  const usageField = flavour.includeUsage ? { usage: null } : {};
  const chunk = (d: Json, finish: string | null): string =>
    sse({ ...base, choices: [{ index: 0, delta: d, logprobs: null, finish_reason: finish }], ...usageField });
  const events: string[] = [];
  if (flavour.azure) events.push(sse(AZURE_PROMPT_FILTER));
  events.push(chunk({ role: "assistant", content: "", refusal: null }, null));
  c.words.forEach((_, i) => events.push(chunk({ content: delta(c.words, i) }, null)));
  events.push(chunk({}, finishReason(c)));
  if (flavour.includeUsage) events.push(sse({ ...base, choices: [], usage: chatUsage(c) }));
  events.push(sse("[DONE]"));
  return events;
}

// ---- OpenAI / Azure legacy completions ----

export function textCompletion(c: Completion): Json {
  return {
    id: c.id,
    object: "text_completion",
    created: c.created,
    model: c.model,
    choices: [{ text: text(c), index: 0, logprobs: null, finish_reason: finishReason(c) }],
    usage: chatUsage(c),
  };
}

export function textCompletionStream(c: Completion, flavour: StreamFlavour): string[] {
  const base = { id: c.id, object: "text_completion", created: c.created, model: c.model };
  const chunk = (t: string, finish: string | null): string =>
    sse({ ...base, choices: [{ text: t, index: 0, logprobs: null, finish_reason: finish }] });
  const events: string[] = [];
  if (flavour.azure) events.push(sse(AZURE_PROMPT_FILTER));
  c.words.forEach((_, i) => events.push(chunk(delta(c.words, i), null)));
  events.push(chunk("", finishReason(c)));
  if (flavour.includeUsage) events.push(sse({ ...base, choices: [], usage: chatUsage(c) }));
  events.push(sse("[DONE]"));
  return events;
}

// ---- Embeddings ----

export type EmbeddingInput = string | number[];

/** Deterministic pseudo-vector, so equal inputs embed equally. */
function vector(input: EmbeddingInput, dimensions: number): number[] {
  let seed = 2166136261;
  const key = typeof input === "string" ? input : input.join(",");
  for (let i = 0; i < key.length; i++) seed = Math.imul(seed ^ key.charCodeAt(i), 16777619) >>> 0;
  const out: number[] = [];
  for (let i = 0; i < dimensions; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    out.push(Number(((seed / 0xffffffff) * 2 - 1).toFixed(6)));
  }
  return out;
}

function base64Floats(values: number[]): string {
  const bytes = new Uint8Array(new Float32Array(values).buffer);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** Token arrays count one token per entry; text is estimated at four characters a token. */
export function embeddingTokens(inputs: EmbeddingInput[]): number {
  return inputs.reduce((sum, input) => sum + (typeof input === "string" ? estimateTokens(input.length) : Math.max(1, input.length)), 0);
}

export function embeddings(model: string, inputs: EmbeddingInput[], dimensions: number, base64: boolean): Json {
  const tokens = embeddingTokens(inputs);
  return {
    object: "list",
    data: inputs.map((input, index) => {
      const v = vector(input, dimensions);
      return { object: "embedding", index, embedding: base64 ? base64Floats(v) : v };
    }),
    model,
    usage: { prompt_tokens: tokens, total_tokens: tokens },
  };
}

// ---- OpenAI Responses API ----

function responsesUsage(c: Completion): Json {
  const output = c.words.length;
  return {
    input_tokens: c.promptTokens,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: output,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: c.promptTokens + output,
  };
}

function responseObject(c: Completion, state: "in_progress" | "done"): Json {
  const done = state === "done";
  const status = done ? (c.truncated ? "incomplete" : "completed") : "in_progress";
  return {
    id: c.id,
    object: "response",
    created_at: c.created,
    status,
    incomplete_details: done && c.truncated ? { reason: "max_output_tokens" } : null,
    model: c.model,
    output: done ? [outputMessage(c, "completed")] : [],
    usage: done ? responsesUsage(c) : null,
  };
}

function messageId(c: Completion): string {
  return `msg_${c.id.slice("resp_".length)}`;
}

function outputMessage(c: Completion, status: "in_progress" | "completed"): Json {
  const content = status === "completed" ? [{ type: "output_text", text: text(c), annotations: [] }] : [];
  return { type: "message", id: messageId(c), status, role: "assistant", content };
}

export function response(c: Completion): Json {
  return responseObject(c, "done");
}

export function responseStream(c: Completion): string[] {
  let seq = 0;
  const ev = (type: string, fields: Json): string => namedSse(type, { type, sequence_number: seq++, ...fields });
  const item = { item_id: messageId(c), output_index: 0, content_index: 0 };
  const events = [
    ev("response.created", { response: responseObject(c, "in_progress") }),
    ev("response.in_progress", { response: responseObject(c, "in_progress") }),
    ev("response.output_item.added", { output_index: 0, item: outputMessage(c, "in_progress") }),
    ev("response.content_part.added", { ...item, part: { type: "output_text", text: "", annotations: [] } }),
  ];
  c.words.forEach((_, i) => events.push(ev("response.output_text.delta", { ...item, delta: delta(c.words, i) })));
  events.push(
    ev("response.output_text.done", { ...item, text: text(c) }),
    ev("response.content_part.done", { ...item, part: { type: "output_text", text: text(c), annotations: [] } }),
    ev("response.output_item.done", { output_index: 0, item: outputMessage(c, "completed") }),
    ev(c.truncated ? "response.incomplete" : "response.completed", { response: responseObject(c, "done") }),
  );
  return events;
}

// ---- Anthropic Messages ----

function stopReason(c: Completion): string {
  return c.truncated ? "max_tokens" : "end_turn";
}

export function anthropicMessage(c: Completion): Json {
  return {
    id: c.id,
    type: "message",
    role: "assistant",
    model: c.model,
    content: [{ type: "text", text: text(c) }],
    stop_reason: stopReason(c),
    stop_sequence: null,
    usage: { input_tokens: c.promptTokens, output_tokens: c.words.length },
  };
}

export function anthropicStream(c: Completion): string[] {
  const ev = (type: string, fields: Json): string => namedSse(type, { type, ...fields });
  const events = [
    ev("message_start", {
      message: {
        id: c.id, type: "message", role: "assistant", model: c.model, content: [],
        stop_reason: null, stop_sequence: null, usage: { input_tokens: c.promptTokens, output_tokens: 1 },
      },
    }),
    ev("content_block_start", { index: 0, content_block: { type: "text", text: "" } }),
  ];
  c.words.forEach((_, i) => events.push(ev("content_block_delta", { index: 0, delta: { type: "text_delta", text: delta(c.words, i) } })));
  events.push(
    ev("content_block_stop", { index: 0 }),
    ev("message_delta", { delta: { stop_reason: stopReason(c), stop_sequence: null }, usage: { output_tokens: c.words.length } }),
    ev("message_stop", {}),
  );
  return events;
}
