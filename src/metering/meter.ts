import { createParser, type EventSourceParser } from "eventsource-parser";
import { mergeUsage, providerUsage, usageIn, usageInTail, type Usage, type UsageParts } from "./usage.ts";

type Json = Record<string, unknown>;

/**
 * The largest document the meter holds and parses whole: a JSON body, or one SSE event. Past
 * it, only the document's end is kept (TAIL_MAX), and usage is read from there.
 */
const PARSE_MAX = 8 * 1024 * 1024;
/** How much of an oversized document's end is kept: usage comes last, and is small. */
const TAIL_MAX = 64 * 1024;
/**
 * Strip mode holds an event back only while it could be the usage-only chunk (a few hundred
 * bytes). One that grows past this without ending is passed on at once, and its rest as it comes.
 */
const HOLD_MAX = 16 * 1024;
/** An event buffer larger than this is let go when its event ends rather than kept for the next. */
const KEEP_MAX = 64 * 1024;
/** How much of an oversized event's start is kept, for its sequence number. */
const HEAD_MAX = 512;
const LF = 0x0a;
const CR = 0x0d;

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
      if (!c || typeof c !== "object") continue;
      const delta = (c.delta ?? c.message) as Json | undefined;
      if (typeof delta?.content === "string") chars += delta.content.length;
      if (typeof c.text === "string") chars += c.text.length;
    }
  }
  const delta = o.delta as Json | undefined;
  if (typeof delta?.text === "string") chars += delta.text.length;
  if (typeof o.delta === "string") chars += o.delta.length;
  if (Array.isArray(o.content)) for (const part of o.content as Json[]) if (typeof part?.text === "string") chars += part.text.length;
  return chars;
}

/** The usage-only chunk OpenAI sends last when asked for `include_usage`: no choices, a usage object. */
function isUsageOnlyChunk(doc: unknown): boolean {
  const o = doc as Json | null;
  return !!o && typeof o === "object" && Array.isArray(o.choices) && o.choices.length === 0 && !!o.usage && typeof o.usage === "object";
}

const isSpaceByte = (c: number | undefined) => c === 0x20 || c === 0x09 || c === LF || c === CR;

/**
 * Whether b[from, to) has a `"usage": {` — which the usage-only chunk has and the other chunks
 * of such a stream (`"usage":null`) do not; only such an event is parsed on its own.
 */
function mayBeUsageOnly(b: Uint8Array, from: number, to: number): boolean {
  const v = b.subarray(from, to);
  for (let i = v.indexOf(0x75 /* u */, 1); i !== -1; i = v.indexOf(0x75, i + 1)) {
    if (v[i - 1] !== 0x22 || v[i + 1] !== 0x73 || v[i + 2] !== 0x61 || v[i + 3] !== 0x67 || v[i + 4] !== 0x65 || v[i + 5] !== 0x22) continue;
    let k = i + 6;
    while (isSpaceByte(v[k])) k++;
    if (v[k] !== 0x3a /* : */) continue;
    k++;
    while (isSpaceByte(v[k])) k++;
    if (v[k] === 0x7b /* { */) return true;
  }
  return false;
}

/** Bytes appended in pieces into one growing buffer: amortized O(1) a byte, however small the pieces. */
class ByteBuffer {
  private buf = new Uint8Array(0);
  length = 0;

  constructor(private readonly max: number) {}

  push(b: Uint8Array, from = 0, to = b.byteLength): void {
    const n = to - from;
    if (n <= 0) return;
    if (this.length + n > this.buf.byteLength) {
      const size = Math.min(Math.max(this.length + n, this.buf.byteLength * 2, 1024), Math.max(this.max, this.length + n));
      const next = new Uint8Array(size);
      next.set(this.buf.subarray(0, this.length));
      this.buf = next;
    }
    this.buf.set(b.subarray(from, to), this.length);
    this.length += n;
  }

  view(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }

  clear(): void {
    this.length = 0;
    if (this.buf.byteLength > KEEP_MAX) this.buf = new Uint8Array(0);
  }

  get capacity(): number {
    return this.buf.byteLength;
  }
}

/** The last TAIL_MAX bytes (at least) of what was pushed, in a fixed buffer. */
class Tail {
  private readonly buf = new Uint8Array(2 * TAIL_MAX);
  private end = 0;

  push(b: Uint8Array): void {
    const n = b.byteLength;
    if (n >= TAIL_MAX) {
      this.buf.set(b.subarray(n - TAIL_MAX));
      this.end = TAIL_MAX;
      return;
    }
    if (this.end + n > this.buf.byteLength) {
      const keep = TAIL_MAX - n; // old bytes kept, so that TAIL_MAX are held after this push
      this.buf.copyWithin(0, this.end - keep, this.end);
      this.end = keep;
    }
    this.buf.set(b, this.end);
    this.end += n;
  }

  view(): Uint8Array {
    return this.buf.subarray(0, this.end);
  }

  get capacity(): number {
    return this.buf.byteLength;
  }
}

/** What one chunk passes on: runs of the chunk itself and events released from holding, in order. */
class Output {
  private readonly pieces: Uint8Array[] = [];
  private src: Uint8Array = new Uint8Array(0);
  private from = 0;
  private to = 0;

  begin(src: Uint8Array): void {
    this.pieces.length = 0;
    this.src = src;
    this.from = this.to = 0;
  }

  /** Passes on src[from, to). */
  pass(from: number, to: number): void {
    if (to <= from) return;
    if (this.to === from && this.to > this.from) {
      this.to = to;
      return;
    }
    this.close();
    this.from = from;
    this.to = to;
  }

  /** Passes on bytes held from earlier (copied: the buffer they are in is reused). */
  held(bytes: Uint8Array): void {
    if (!bytes.byteLength) return;
    this.close();
    this.pieces.push(bytes.slice());
  }

  result(): Uint8Array {
    this.close();
    const pieces = this.pieces;
    const src = this.src;
    this.src = new Uint8Array(0);
    if (pieces.length === 0) return new Uint8Array(0);
    const first = pieces[0]!;
    if (pieces.length === 1) return first.byteLength === src.byteLength && first.byteOffset === src.byteOffset && first.buffer === src.buffer ? src : first;
    let size = 0;
    for (const p of pieces) size += p.byteLength;
    const out = new Uint8Array(size);
    let at = 0;
    for (const p of pieces) {
      out.set(p, at);
      at += p.byteLength;
    }
    pieces.length = 0;
    return out;
  }

  private close(): void {
    if (this.to > this.from) this.pieces.push(this.src.subarray(this.from, this.to));
    this.from = this.to = 0;
  }
}

/**
 * The data of an SSE event from the end of its text: the first (cut) line as data, then the
 * `data:` lines — enough to read the usage that ends it.
 */
function tailData(text: string): string {
  const lines = text.split(/\r\n|\r|\n/);
  const data: string[] = [lines[0]!];
  for (let i = 1; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.startsWith("data:")) data.push(l.slice(l.startsWith("data: ") ? 6 : 5));
  }
  return data.join("\n");
}

const SEQUENCE = /"sequence_number"\s*:\s*(\d+)/;

/**
 * Reads a copy of a response as it passes: SSE events through eventsource-parser, a JSON body
 * once complete. The bytes reach the client untouched — except, when the gateway itself asked
 * for usage in a stream, the one usage-only event the client did not ask for.
 *
 * Work is linear in the bytes and what is held is bounded. SSE: each chunk is scanned once for
 * line ends (byte-wise: CR and LF never occur inside a UTF-8 character), and each event is
 * decoded and fed to the parser once, whole, so each is JSON-parsed once — up to PARSE_MAX,
 * past which only its end is kept and its usage read from there. In strip mode only an event
 * small enough to be the usage-only chunk is ever held back; anything larger passes on as it
 * arrives. A JSON body is kept whole up to PARSE_MAX, past which only its end is kept.
 */
export class ResponseMeter {
  private readonly parts: UsageParts = {};
  private answerChars = 0;
  private readonly decoder = new TextDecoder();
  private readonly parser: EventSourceParser | undefined;
  private readonly strip: boolean;
  /** The last Responses API event's sequence_number. */
  private lastSequence: number | undefined;

  // JSON: the body up to PARSE_MAX (chunks copied, or the whole body the runtime holds), then only its end.
  private json: ByteBuffer | undefined;
  private jsonWhole: Uint8Array | undefined;
  private jsonTail: Tail | undefined;
  private jsonBytes = 0;
  private jsonRead = false;

  // SSE lines: the current line has nothing yet; the last byte was a CR (an LF next completes it).
  private lineEmpty = true;
  private afterCR = false;
  /** The last event ended with a CR at a chunk's end: whether it was passed on (its CRLF's LF follows it). */
  private crEnded: boolean | undefined;
  /** The current event's bytes, while it is at most PARSE_MAX. */
  private readonly event = new ByteBuffer(PARSE_MAX);
  private eventBytes = 0;
  /** The current event's end, once it outgrew PARSE_MAX; and its start, for a sequence number. */
  private eventTail: Tail | undefined;
  private eventHead = "";
  /** Strip mode: the current event is held back (it may be the usage-only chunk). */
  private holding: boolean;
  /** The event being fed to the parser was the usage-only chunk. */
  private usageOnly = false;
  private readonly out = new Output();

  constructor(private readonly options: MeterOptions) {
    this.strip = options.sse && options.stripUsageChunk;
    this.holding = this.strip;
    if (options.sse) this.parser = createParser({ onEvent: (e) => this.onEvent(e.data) });
    else this.json = new ByteBuffer(PARSE_MAX);
  }

  /** Sees one chunk; returns the bytes to pass on to the client. */
  chunk(bytes: Uint8Array): Uint8Array {
    if (!this.parser) {
      this.jsonChunk(bytes);
      return bytes;
    }
    if (!this.strip) {
      this.scan(bytes);
      return bytes;
    }
    this.out.begin(bytes);
    this.scan(bytes);
    return this.out.result();
  }

  /** A body the runtime already holds whole. */
  whole(bytes: Uint8Array): void {
    if (this.parser) {
      this.chunk(bytes);
      return;
    }
    this.json = undefined;
    this.jsonTail = undefined;
    this.jsonBytes = bytes.byteLength;
    if (bytes.byteLength <= PARSE_MAX) this.jsonWhole = bytes;
    else (this.jsonTail = new Tail()).push(bytes);
  }

  /** Whatever strip mode still holds when the stream ends (an unterminated last event). */
  flush(): Uint8Array | undefined {
    if (!this.parser) return undefined;
    // An unterminated last event is no event (the client's parser drops it too): not metered.
    const rest = this.strip && this.holding && this.event.length ? this.event.view().slice() : undefined;
    this.resetEvent();
    this.crEnded = undefined;
    return rest;
  }

  /** The sequence number an error event appended to this Responses stream takes. */
  nextSequence(): number | undefined {
    return this.lastSequence === undefined ? undefined : this.lastSequence + 1;
  }

  /** The usage of the answer: the provider's, else an estimate (never zero for unknown). */
  usage(): Usage {
    if (!this.parser) this.readJson();
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

  /** Bytes the meter holds right now (buffers' capacity), for tests and diagnostics. */
  heldBytes(): number {
    return (this.json?.capacity ?? 0) + (this.jsonTail?.capacity ?? 0) + this.event.capacity + (this.eventTail?.capacity ?? 0);
  }

  private jsonChunk(bytes: Uint8Array): void {
    this.jsonBytes += bytes.byteLength;
    if (this.jsonTail) this.jsonTail.push(bytes);
    else if (this.json && this.json.length + bytes.byteLength <= PARSE_MAX) this.json.push(bytes);
    else {
      // Too large to parse whole: from here on only its end is kept.
      this.jsonTail = new Tail();
      if (this.json) this.jsonTail.push(this.json.view());
      this.jsonTail.push(bytes);
      this.json = undefined;
    }
  }

  private readJson(): void {
    if (this.jsonRead) return;
    this.jsonRead = true;
    if (this.jsonTail) {
      const u = usageInTail(this.decoder.decode(this.jsonTail.view()));
      if (u) mergeUsage(this.parts, u);
      // Not parsed: the answer is at most as long as the body.
      this.answerChars += this.jsonBytes;
    } else {
      const bytes = this.jsonWhole ?? this.json?.view();
      if (bytes?.byteLength) this.observe(this.decoder.decode(bytes));
    }
    this.json = undefined;
    this.jsonWhole = undefined;
    this.jsonTail = undefined;
  }

  /**
   * Walks a chunk's line ends (SSE: CRLF, LF or CR; an empty line ends an event), giving each
   * event its bytes and ending it at its empty line. Each byte is looked at once: the next LF
   * and the next CR are each searched for only after the last one found was passed.
   *
   * An event that begins and ends within the chunk is not copied: consecutive ones are decoded
   * and fed to the parser together (and in strip mode passed on as one run), except one that
   * may be the usage-only chunk, which is fed alone and dropped if it is. Only the event that
   * continues from the last chunk, and the one this chunk leaves unfinished, go through the
   * event buffer.
   */
  private scan(b: Uint8Array): void {
    const n = b.byteLength;
    let p = 0;
    let seg = 0;
    if (this.crEnded !== undefined && n > 0) {
      const kept = this.crEnded;
      this.crEnded = undefined;
      if (b[0] === LF) {
        // The LF of the CRLF that ended the last event: it goes (or is dropped) with that event.
        this.afterCR = false;
        if (this.strip && kept) this.out.pass(0, 1);
        p = seg = 1;
      }
    }
    let batchFrom = 0;
    let batchTo = 0;
    let lf = -2;
    let cr = -2;
    while (p < n) {
      if (lf !== -1 && lf < p) lf = b.indexOf(LF, p);
      if (cr !== -1 && cr < p) cr = b.indexOf(CR, p);
      const t = lf === -1 ? cr : cr === -1 ? lf : lf < cr ? lf : cr;
      if (t === -1) {
        this.lineEmpty = false;
        this.afterCR = false;
        break;
      }
      if (t > p) {
        this.lineEmpty = false;
        this.afterCR = false;
      }
      const c = b[t];
      p = t + 1;
      if (c === LF && this.afterCR) {
        this.afterCR = false; // CRLF: one line end
        continue;
      }
      this.afterCR = c === CR;
      if (!this.lineEmpty) {
        this.lineEmpty = true;
        continue;
      }
      // An empty line: the event ends here (with the LF of a CRLF, if in this chunk).
      const crAtEnd = c === CR && p === n;
      if (c === CR && p < n && b[p] === LF) {
        this.afterCR = false;
        p++;
      }
      let kept = true;
      if (this.eventBytes === 0) {
        // The whole event is in this chunk: b[seg, p).
        const size = p - seg;
        if (this.strip && size <= HOLD_MAX && mayBeUsageOnly(b, seg, p)) {
          if (batchTo > batchFrom) this.feed(b.subarray(batchFrom, batchTo));
          batchFrom = batchTo = 0;
          this.usageOnly = false;
          this.feed(b.subarray(seg, p));
          kept = !this.usageOnly;
          if (kept) this.out.pass(seg, p);
        } else if (size <= PARSE_MAX) {
          if (batchTo !== seg) {
            if (batchTo > batchFrom) this.feed(b.subarray(batchFrom, batchTo));
            batchFrom = seg;
          }
          batchTo = p;
          if (this.strip) this.out.pass(seg, p);
        } else {
          if (batchTo > batchFrom) this.feed(b.subarray(batchFrom, batchTo));
          batchFrom = batchTo = 0;
          this.meterOversized(b.subarray(p - TAIL_MAX, p), this.decoder.decode(b.subarray(seg, seg + HEAD_MAX)), size);
          if (this.strip) this.out.pass(seg, p);
        }
      } else {
        // The event began in an earlier chunk (nothing is batched yet: it is this chunk's first).
        this.take(b, seg, p);
        kept = this.endEvent();
      }
      seg = p;
      if (crAtEnd) this.crEnded = kept;
    }
    if (batchTo > batchFrom) this.feed(b.subarray(batchFrom, batchTo));
    this.take(b, seg, n);
  }

  /** b[from, to) belongs to the current event. */
  private take(b: Uint8Array, from: number, to: number): void {
    const n = to - from;
    if (n <= 0) return;
    this.eventBytes += n;
    if (this.holding && this.eventBytes > HOLD_MAX) {
      // Too large to be the usage-only chunk: what was held goes on now, the rest as it comes.
      this.holding = false;
      this.out.held(this.event.view());
    }
    if (this.strip && !this.holding) this.out.pass(from, to);
    if (this.eventTail) this.eventTail.push(b.subarray(from, to));
    else if (this.eventBytes <= PARSE_MAX) this.event.push(b, from, to);
    else {
      const tail = (this.eventTail = new Tail());
      const head = this.event.view().subarray(0, HEAD_MAX);
      this.eventHead = this.decoder.decode(head) + (head.byteLength < HEAD_MAX ? this.decoder.decode(b.subarray(from, from + HEAD_MAX - head.byteLength)) : "");
      tail.push(this.event.view());
      tail.push(b.subarray(from, to));
      this.event.clear();
    }
  }

  /** The current event (begun in an earlier chunk) has ended: meters it; returns whether it is passed on (not the dropped usage-only chunk). */
  private endEvent(): boolean {
    let kept = true;
    if (this.eventTail) this.meterOversized(this.eventTail.view(), this.eventHead, this.eventBytes);
    else if (this.event.length) {
      this.usageOnly = false;
      this.feed(this.event.view());
      if (this.holding) {
        kept = !this.usageOnly;
        if (kept) this.out.held(this.event.view());
      }
    }
    this.resetEvent();
    return kept;
  }

  /** Complete events, to the parser (which meters each through onEvent). */
  private feed(bytes: Uint8Array): void {
    let text = this.decoder.decode(bytes);
    // The parser is given LF line ends only: its CR handling rescans the text for each line.
    if (text.includes("\r")) text = text.replace(/\r\n?/g, "\n");
    this.parser!.feed(text);
  }

  /** An event too large to parse: its usage from its end, its length as the answer's (an upper bound). */
  private meterOversized(tail: Uint8Array, head: string, size: number): void {
    const u = usageInTail(tailData(this.decoder.decode(tail)));
    if (u) mergeUsage(this.parts, u);
    const seq = SEQUENCE.exec(head);
    if (seq) this.lastSequence = Number(seq[1]);
    this.answerChars += size;
  }

  private resetEvent(): void {
    this.event.clear();
    this.eventBytes = 0;
    this.eventTail = undefined;
    this.eventHead = "";
    this.holding = this.strip;
  }

  private onEvent(data: string): void {
    if (data === "[DONE]" || !data.includes("{")) return;
    if (isUsageOnlyChunk(this.observe(data))) this.usageOnly = true;
  }

  /** Takes the usage and the answer's length from one JSON document (an event's data or a whole body); returns it parsed. */
  private observe(text: string): unknown {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      return undefined;
    }
    const u = usageIn(doc);
    if (u) mergeUsage(this.parts, u);
    const seq = (doc as Json | null)?.sequence_number;
    if (typeof seq === "number") this.lastSequence = seq;
    this.answerChars += answerText(doc);
    return doc;
  }
}
