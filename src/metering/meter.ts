import { createParser, type EventSourceParser } from "eventsource-parser";
import { mergeUsage, providerUsage, usageIn, type Usage, type UsageParts } from "./usage.ts";

type Json = Record<string, unknown>;

/** Largest non-streamed body copied for metering when the runtime hands it over as a stream. */
const JSON_COPY_MAX = 8 * 1024 * 1024;
const encoder = new TextEncoder();

export interface MeterOptions {
  sse: boolean;
  /** The gateway added `stream_options.include_usage`: drop the usage-only chunk before the client sees it. */
  stripUsageChunk: boolean;
  /** Prompt tokens estimated from the request, for when the provider reports none. */
  promptEstimate: number;
}

/** Text of the answer in a parsed event or document, for estimating completion tokens. */
function answerText(doc: unknown): number {
  const o = doc as Json | undefined;
  if (!o || typeof o !== "object") return 0;
  let chars = 0;
  const choices = o.choices;
  if (Array.isArray(choices)) {
    for (const c of choices as Json[]) {
      const delta = (c.delta ?? c.message) as Json | undefined;
      if (typeof delta?.content === "string") chars += delta.content.length;
      if (typeof c.text === "string") chars += c.text.length;
    }
  }
  const delta = o.delta as Json | undefined;
  if (typeof delta?.text === "string") chars += delta.text.length;
  if (typeof o.delta === "string") chars += o.delta.length;
  if (Array.isArray(o.content)) for (const part of o.content as Json[]) if (typeof part.text === "string") chars += part.text.length;
  return chars;
}

/** The usage-only chunk OpenAI sends last when asked for `include_usage`. */
function isUsageOnlyChunk(data: string): boolean {
  if (!data.includes('"usage"')) return false;
  try {
    const doc = JSON.parse(data) as Json;
    return Array.isArray(doc.choices) && doc.choices.length === 0 && !!doc.usage && typeof doc.usage === "object";
  } catch {
    return false;
  }
}

const EVENT_END = /\r\n\r\n|\n\n|\r\r/g;

/**
 * Reads a copy of a response as it passes: SSE events through eventsource-parser, a JSON body
 * once complete. The bytes reach the client untouched — except, when the gateway itself asked
 * for usage in a stream, the one usage-only event the client did not ask for.
 */
export class ResponseMeter {
  private readonly parts: UsageParts = {};
  private answerChars = 0;
  private readonly decoder = new TextDecoder();
  private readonly parser: EventSourceParser | undefined;
  private json: Uint8Array[] | undefined;
  private jsonBytes = 0;
  /** Strip mode: text of the event being received, not yet passed on. */
  private pending = "";
  /** The last Responses API event's sequence_number. */
  private lastSequence: number | undefined;

  constructor(private readonly options: MeterOptions) {
    if (options.sse) {
      this.parser = createParser({ onEvent: (e) => this.onEvent(e.data) });
    } else this.json = [];
  }

  /** Sees one chunk; returns the bytes to pass on to the client. */
  chunk(bytes: Uint8Array): Uint8Array {
    if (!this.parser) {
      if (this.json && this.jsonBytes + bytes.byteLength <= JSON_COPY_MAX) {
        this.json.push(bytes.slice());
        this.jsonBytes += bytes.byteLength;
      } else this.json = undefined;
      return bytes;
    }
    const text = this.decoder.decode(bytes, { stream: true });
    this.parser.feed(text);
    return this.options.stripUsageChunk ? this.strip(text) : bytes;
  }

  /** A body the runtime already holds whole. */
  whole(bytes: Uint8Array): void {
    if (this.parser) {
      this.chunk(bytes);
      return;
    }
    this.json = [bytes];
    this.jsonBytes = bytes.byteLength;
  }

  /** Whatever strip mode still holds when the stream ends (an unterminated last event). */
  flush(): Uint8Array | undefined {
    if (!this.parser) return undefined;
    const rest = this.pending + this.decoder.decode();
    this.pending = "";
    return this.options.stripUsageChunk && rest ? encoder.encode(rest) : undefined;
  }

  /** The sequence number an error event appended to this Responses stream takes. */
  nextSequence(): number | undefined {
    return this.lastSequence === undefined ? undefined : this.lastSequence + 1;
  }

  /** The usage of the answer: the provider's, else an estimate (never zero for unknown). */
  usage(): Usage {
    if (this.json) this.readJson();
    const reported = providerUsage(this.parts);
    if (reported) return reported;
    const completion = Math.ceil(this.answerChars / 4);
    return {
      promptTokens: this.options.promptEstimate,
      completionTokens: completion,
      totalTokens: this.options.promptEstimate + completion,
      source: "estimated",
    };
  }

  private onEvent(data: string): void {
    if (data === "[DONE]" || !data.includes("{")) return;
    this.observe(data);
  }

  /** Takes the usage and the answer's length from one JSON document (an event's data or a whole body). */
  private observe(text: string): void {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      return;
    }
    const u = usageIn(doc);
    if (u) mergeUsage(this.parts, u);
    const seq = (doc as Json | null)?.sequence_number;
    if (typeof seq === "number") this.lastSequence = seq;
    this.answerChars += answerText(doc);
  }

  private readJson(): void {
    const chunks = this.json!;
    this.json = undefined;
    let text: string;
    if (chunks.length === 1) text = this.decoder.decode(chunks[0]);
    else {
      const all = new Uint8Array(this.jsonBytes);
      let at = 0;
      for (const c of chunks) {
        all.set(c, at);
        at += c.byteLength;
      }
      text = this.decoder.decode(all);
    }
    this.observe(text);
  }

  /** Passes on complete events except the usage-only one; keeps a partial event until it ends. */
  private strip(text: string): Uint8Array {
    this.pending += text;
    let out = "";
    let start = 0;
    EVENT_END.lastIndex = 0;
    for (let m = EVENT_END.exec(this.pending); m; m = EVENT_END.exec(this.pending)) {
      const end = m.index + m[0].length;
      const event = this.pending.slice(start, end);
      const data = event
        .split(/\r\n|\n|\r/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5))
        .join("\n");
      if (!isUsageOnlyChunk(data)) out += event;
      start = end;
    }
    this.pending = this.pending.slice(start);
    return encoder.encode(out);
  }
}
