/**
 * Issue 11: the metering tap under attack — huge SSE events (strip mode and not), backend usage
 * numbers that are not counts, JSON answers past the parse limit. No wall-clock thresholds:
 * work is bounded by counting what the meter hands to the expensive operations (JSON.parse,
 * TextDecoder, the SSE parser) and what it holds.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ResponseMeter } from "../../src/metering/meter.ts";
import { providerUsage, usageIn, usageInTail, type UsageParts } from "../../src/metering/usage.ts";
import { relay, type RelayEnd } from "../../src/proxy/relay.ts";

/** What reaches eventsource-parser: every feed, counted. */
const fed = vi.hoisted(() => ({ chars: 0, calls: 0, withCR: 0 }));
vi.mock("eventsource-parser", async (importOriginal) => {
  const real = await importOriginal<typeof import("eventsource-parser")>();
  return {
    ...real,
    createParser: (config: Parameters<typeof real.createParser>[0]) => {
      const parser = real.createParser(config);
      return {
        ...parser,
        feed: (text: string) => {
          fed.chars += text.length;
          fed.calls++;
          if (text.includes("\r")) fed.withCR++;
          parser.feed(text);
        },
      };
    },
  };
});

const KiB = 1024;
const MiB = 1024 * KiB;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** JSON.parse and TextDecoder.decode, counted (characters parsed, bytes decoded) while `run` runs. */
function work<T>(run: () => T): { result: T; parsed: number; decoded: number } {
  let parsed = 0;
  let decoded = 0;
  const parse = JSON.parse;
  const decode = TextDecoder.prototype.decode;
  const p = vi.spyOn(JSON, "parse").mockImplementation((text: string, reviver?: Parameters<typeof JSON.parse>[1]) => {
    parsed += String(text).length;
    return parse(text, reviver);
  });
  const d = vi.spyOn(TextDecoder.prototype, "decode").mockImplementation(function (this: TextDecoder, input?: AllowSharedBufferSource, options?: TextDecodeOptions) {
    decoded += input?.byteLength ?? 0;
    return decode.call(this, input, options);
  });
  try {
    return { result: run(), parsed, decoded };
  } finally {
    p.mockRestore();
    d.mockRestore();
  }
}

/** Cut into `size`-byte chunks, and also at every offset in `at`. */
function cut(bytes: Uint8Array, size: number, at: number[] = []): Uint8Array[] {
  const cuts = new Set<number>(at.filter((x) => x > 0 && x < bytes.length));
  for (let x = size; x < bytes.length; x += size) cuts.add(x);
  const sorted = [...cuts].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const x of sorted) {
    out.push(bytes.subarray(from, x));
    from = x;
  }
  out.push(bytes.subarray(from));
  return out;
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

function concat(chunks: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(chunks));
}

/** Answer text with multi-byte characters, so that fixed-size chunks cut through them. */
function bigText(bytes: number): string {
  const unit = "The answer, réponse, 答え 🌍 — ";
  return unit.repeat(Math.ceil(bytes / enc.encode(unit).length));
}

const USAGE = { prompt_tokens: 12, completion_tokens: 5_000_000, total_tokens: 5_000_012 };

/** A chat stream whose second event is one huge delta, then the usage-only chunk the gateway asked for, then [DONE]. */
function hugeEventStream(size: number, eol = "\n") {
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
    `data: ${JSON.stringify({ id: "chatcmpl-1", object: "chat.completion.chunk", created: 1, model: "gpt-4o", choices, ...extra })}${eol}${eol}`;
  const first = chunk([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }], { usage: null });
  const big = chunk([{ index: 0, delta: { content: bigText(size) }, finish_reason: null }], { usage: null });
  const last = chunk([{ index: 0, delta: {}, finish_reason: "stop" }], { usage: null });
  const usage = chunk([], { usage: USAGE });
  const done = `data: [DONE]${eol}${eol}`;
  const bytes = enc.encode(first + big + last + usage + done);
  const usageBytes = enc.encode(usage).length;
  const usageAt = enc.encode(first + big + last).length;
  const without = new Uint8Array(bytes.length - usageBytes);
  without.set(bytes.subarray(0, usageAt));
  without.set(bytes.subarray(usageAt + usageBytes), usageAt);
  const bigEnd = enc.encode(first + big).length;
  // Cuts through the CRLF/LF pairs that end the big event and the usage chunk.
  const awkward = [bigEnd - 1, bigEnd - 3, usageAt + usageBytes - 1, usageAt + usageBytes - 3, usageAt + 7];
  return { bytes, without, usageBytes, awkward };
}

const provider = { promptTokens: 12, completionTokens: 5_000_000, totalTokens: 5_000_012, source: "provider" };

beforeEach(() => {
  fed.chars = fed.calls = fed.withCR = 0;
});
afterEach(() => vi.restoreAllMocks());

describe("a huge SSE event (issue 11)", () => {
  for (const eol of ["\n", "\r\n"]) {
    const name = eol === "\n" ? "LF" : "CRLF";
    it(`strip mode, 20 MB event (${name}): bytes out are bytes in minus exactly the usage chunk; passed on at once; bounded memory and work`, () => {
      const s = hugeEventStream(20 * MiB, eol);
      const chunks = cut(s.bytes, 64 * KiB + 1, s.awkward);
      const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
      const out: Uint8Array[] = [];
      let inSoFar = 0;
      let outSoFar = 0;
      let maxLag = 0;
      let maxHeld = 0;
      const w = work(() => {
        for (const c of chunks) {
          const o = m.chunk(c);
          out.push(o);
          inSoFar += c.byteLength;
          outSoFar += o.byteLength;
          maxLag = Math.max(maxLag, inSoFar - outSoFar);
          maxHeld = Math.max(maxHeld, m.heldBytes());
        }
        const rest = m.flush();
        if (rest) out.push(rest);
        return m.usage();
      });
      expect(sameBytes(concat(out), s.without)).toBe(true);
      expect(w.result).toEqual(provider);
      // Never more held back from the client than a usage-only chunk could be (16 KiB), plus the chunk itself once dropped.
      expect(maxLag).toBeLessThanOrEqual(16 * KiB + s.usageBytes);
      // Memory: the event is copied for parsing only up to the parse limit (8 MiB), then only its end.
      expect(maxHeld).toBeLessThanOrEqual(8 * MiB + 256 * KiB);
      expect(m.heldBytes()).toBeLessThanOrEqual(64 * KiB);
      // Work: the huge event is never parsed, decoded or fed to the SSE parser — only its last 64 KiB (and 512 bytes of its start) decoded.
      expect(w.parsed).toBeLessThan(64 * KiB);
      expect(w.decoded).toBeLessThan(200 * KiB);
      expect(fed.chars).toBeLessThan(4 * KiB);
      expect(fed.withCR).toBe(0);
    });
  }

  it("strip mode through relay(): the client gets every byte but the usage chunk, the exchange the provider's usage", async () => {
    const s = hugeEventStream(20 * MiB);
    const chunks = cut(s.bytes, 64 * KiB, s.awkward);
    const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
    let maxHeld = 0;
    let i = 0;
    const upstream = new ReadableStream<Uint8Array>({
      pull(controller) {
        maxHeld = Math.max(maxHeld, m.heldBytes());
        if (i < chunks.length) controller.enqueue(chunks[i++]!);
        else controller.close();
      },
    });
    const ends: RelayEnd[] = [];
    const body = relay(upstream, { sse: true, api: "chat", backend: "b1", tap: m, idleMs: 60_000, onEnd: (how) => ends.push(how) });
    const got = new Uint8Array(await new Response(body).arrayBuffer());
    expect(ends).toEqual(["complete"]);
    expect(sameBytes(got, s.without)).toBe(true);
    expect(m.usage()).toEqual(provider);
    expect(maxHeld).toBeLessThanOrEqual(8 * MiB + 256 * KiB);
    expect(fed.chars).toBeLessThan(4 * KiB);
  });

  it("not stripping, 20 MB event: every chunk passed on as itself, usage read, bounded work", () => {
    const s = hugeEventStream(20 * MiB, "\r\n");
    const chunks = cut(s.bytes, 64 * KiB - 1, s.awkward);
    const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 1 });
    let changed = 0;
    let maxHeld = 0;
    const w = work(() => {
      for (const c of chunks) {
        if (m.chunk(c) !== c) changed++;
        maxHeld = Math.max(maxHeld, m.heldBytes());
      }
      expect(m.flush()).toBeUndefined();
      return m.usage();
    });
    expect(changed).toBe(0);
    expect(w.result).toEqual(provider);
    expect(maxHeld).toBeLessThanOrEqual(8 * MiB + 256 * KiB);
    expect(w.parsed).toBeLessThan(64 * KiB);
    expect(w.decoded).toBeLessThan(200 * KiB);
    expect(fed.withCR).toBe(0);
  });

  it("an event under the parse limit is fed to the parser and JSON-parsed exactly once, whatever the chunking", () => {
    const s = hugeEventStream(6 * MiB);
    for (const size of [64 * KiB, 1 * MiB + 3]) {
      fed.chars = 0;
      const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
      const out: Uint8Array[] = [];
      const w = work(() => {
        for (const c of cut(s.bytes, size, s.awkward)) out.push(m.chunk(c));
        const rest = m.flush();
        if (rest) out.push(rest);
        return m.usage();
      });
      expect(sameBytes(concat(out), s.without)).toBe(true);
      expect(w.result).toEqual(provider);
      expect(fed.chars).toBeLessThanOrEqual(dec.decode(s.bytes).length);
      expect(w.parsed).toBeLessThanOrEqual(dec.decode(s.bytes).length);
      expect(w.decoded).toBeLessThanOrEqual(s.bytes.length);
    }
  });

  it("an event of millions of short lines, CR-separated, in one whole body: each character fed to the parser once, with LF line ends", () => {
    const lines = 'data: {"choices":[{"delta":{"content":"ab"}}]}\r'.repeat(200_000);
    const text = ": keep-alive\r\r" + lines + "\r" + `data: ${JSON.stringify({ choices: [], usage: USAGE })}\r\r`;
    const bytes = enc.encode(text);
    const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 1 });
    m.whole(bytes);
    // The huge multi-line event is past the parse limit: not fed; everything else once.
    expect(fed.chars).toBeLessThanOrEqual(text.length);
    expect(fed.withCR).toBe(0);
    expect(m.usage()).toEqual(provider);
  });

  it("many CRLF events after a lone CR, in one whole body (the parser's CR path would rescan per line): fed once, LF only", () => {
    const text = ": hi\r" + 'data: {"choices":[{"delta":{"content":"abcd"}}]}\n\n'.repeat(100_000);
    const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 1 });
    m.whole(enc.encode(text));
    expect(fed.chars).toBeLessThanOrEqual(text.length);
    expect(fed.withCR).toBe(0);
    expect(m.usage()).toEqual({ promptTokens: 1, completionTokens: 100_000, totalTokens: 100_001, source: "estimated" });
  });

  it("an event past the parse limit that carries its own usage (a Responses response.completed): usage and sequence number from its ends", () => {
    const completed = {
      type: "response.completed",
      sequence_number: 41,
      response: { id: "resp_1", object: "response", output: [{ type: "message", content: [{ type: "output_text", text: bigText(12 * MiB) }] }], usage: { input_tokens: 7, output_tokens: 3_000_000, total_tokens: 3_000_007, output_tokens_details: { reasoning_tokens: 5 } }, user: null, metadata: { note: 'says "usage": {"input_tokens": 0}' } },
    };
    const text = `event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1"}}\n\nevent: response.completed\ndata: ${JSON.stringify(completed)}\n\n`;
    const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 1 });
    const w = work(() => {
      for (const c of cut(enc.encode(text), 100_000)) m.chunk(c);
      return m.usage();
    });
    expect(w.result).toEqual({ promptTokens: 7, completionTokens: 3_000_000, totalTokens: 3_000_007, reasoningTokens: 5, source: "provider" });
    expect(m.nextSequence()).toBe(42);
    expect(w.parsed).toBeLessThan(64 * KiB);
  });

  it("strip mode: the usage-only chunk split across chunks is still removed; one grown past 16 KiB is not held for it (passed, still metered)", () => {
    const usage = `data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", choices: [], usage: USAGE })}\n\n`;
    const text = `data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n${usage}data: [DONE]\n\n`;
    const bytes = enc.encode(text);
    for (let at = 1; at < bytes.length; at += 7) {
      const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
      const out = [m.chunk(bytes.subarray(0, at)), m.chunk(bytes.subarray(at))];
      const rest = m.flush();
      if (rest) out.push(rest);
      expect(dec.decode(concat(out))).toBe(text.replace(usage, ""));
      expect(m.usage()).toEqual(provider);
    }
    const padded = `data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", choices: [], pad: "p".repeat(20 * KiB), usage: USAGE })}\n\n`;
    const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
    const paddedBytes = enc.encode(padded);
    const out = cut(paddedBytes, 4 * KiB).map((c) => m.chunk(c));
    expect(sameBytes(concat(out), paddedBytes)).toBe(true);
    expect(m.usage()).toEqual(provider);
  });

  it("strip mode: an unterminated last event is passed on by flush(), untouched (not metered, as a client's parser drops it)", () => {
    const text = 'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}';
    const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 3 });
    const bytes = enc.encode(text);
    const first = m.chunk(bytes);
    const rest = m.flush()!;
    expect(dec.decode(concat([first, rest]))).toBe(text);
    expect(m.usage()).toEqual({ promptTokens: 3, completionTokens: 1, totalTokens: 4, source: "estimated" });
  });

  it("bytes that are not valid UTF-8 pass byte for byte in strip mode", () => {
    const bad = new Uint8Array([0x64, 0x61, 0x74, 0x61, 0x3a, 0x20, 0xff, 0xc3, 0x0a, 0x0a, 0xe2, 0x82, 0x0d, 0x0d, 0x0a]);
    const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
    const out = [...bad].map((b) => m.chunk(new Uint8Array([b])));
    const rest = m.flush();
    if (rest) out.push(rest);
    expect([...concat(out)]).toEqual([...bad]);
  });
});

describe("backend usage numbers that are not counts (issue 11)", () => {
  const BAD: [string, string][] = [
    ["negative", "-5"],
    ["fractional", "2.5"],
    ["infinite (1e400)", "1e400"],
    ["huge", "1e13"],
    ["a string", '"12"'],
    ["a boolean", "true"],
    ["an object", "{}"],
  ];
  for (const [what, value] of BAD) {
    it(`a ${what} completion count: estimated, never the provider's`, () => {
      const body = `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, friend"}}],"usage":{"prompt_tokens":10,"completion_tokens":${value},"total_tokens":15}}`;
      const m = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 12 });
      m.chunk(enc.encode(body));
      expect(m.usage()).toEqual({ promptTokens: 12, completionTokens: 5, totalTokens: 17, source: "estimated" });

      // The same number as a prompt count in a stream, or as the total: estimated.
      const stream = `data: {"choices":[{"delta":{"content":"Hello there, friend"}}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":${value},"completion_tokens":3,"total_tokens":13}}\n\ndata: [DONE]\n\n`;
      const s = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 12 });
      s.chunk(enc.encode(stream));
      expect(s.usage()).toEqual({ promptTokens: 12, completionTokens: 5, totalTokens: 17, source: "estimated" });
      expect(providerUsage(usageIn(JSON.parse(`{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":${value}}}`))!)).toBeUndefined();
    });
  }

  it("NaN and ±Infinity (as parsed objects can hold) are not counts", () => {
    for (const v of [NaN, Infinity, -Infinity, -1, 0.5, 1e12 + 1]) {
      expect(providerUsage(usageIn({ usage: { prompt_tokens: v, completion_tokens: 1 } })!)).toBeUndefined();
      expect(providerUsage(usageIn({ usageMetadata: { promptTokenCount: 1, candidatesTokenCount: v } })!)).toBeUndefined();
    }
    expect(providerUsage(usageIn({ usage: { prompt_tokens: 1e12, completion_tokens: 0 } })!)).toMatchObject({ promptTokens: 1e12, source: "provider" });
    expect(providerUsage(usageIn({ usage: { prompt_tokens: -0, completion_tokens: 0 } })!)).toEqual({ promptTokens: 0, completionTokens: 0, totalTokens: 0, source: "provider" });
  });

  it("a later event with a bad count spoils the report (Anthropic: good message_start, negative final output)", () => {
    const text =
      'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}\n\n' +
      'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there, friend"}}\n\n' +
      'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":-5}}\n\n';
    const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 12 });
    m.chunk(enc.encode(text));
    expect(m.usage()).toEqual({ promptTokens: 12, completionTokens: 5, totalTokens: 17, source: "estimated" });
  });

  it("a bad detail count (cached, reasoning) is left out as unknown; the main counts stand; null is absent", () => {
    const u = providerUsage(
      usageIn({ usage: { prompt_tokens: 10, completion_tokens: 4, total_tokens: 14, prompt_tokens_details: { cached_tokens: -3 }, completion_tokens_details: { reasoning_tokens: 1.5 }, cache_creation_input_tokens: null } })!,
    );
    expect(u).toEqual({ promptTokens: 10, completionTokens: 4, totalTokens: 14, source: "provider" });
    expect(providerUsage(usageIn({ usage: { prompt_tokens: 10, completion_tokens: null, total_tokens: 14 } })!)).toEqual({ promptTokens: 10, completionTokens: 4, totalTokens: 14, source: "provider" });
  });

  it("a total below the prompt with no completion count is no count: estimated, not a completion of 0", () => {
    expect(providerUsage(usageIn({ usage: { prompt_tokens: 10, total_tokens: 4 } })!)).toBeUndefined();
    expect(providerUsage(usageIn({ usage: { prompt_tokens: 9, total_tokens: 9 } })!)).toEqual({ promptTokens: 9, completionTokens: 0, totalTokens: 9, source: "provider" });
  });
});

describe("JSON answers past the parse limit (issue 11)", () => {
  const chat = (content: string, usage?: unknown) =>
    JSON.stringify({ id: "chatcmpl-1", object: "chat.completion", created: 1, model: "gpt-4o", choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }], ...(usage ? { usage } : {}), system_fingerprint: "fp" });
  // The model may write anything — including what looks like a usage block — but it lands inside a string.
  const trap = bigText(20 * MiB) + ' "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0} \\"usage\\": {"prompt_tokens": 1}';

  it("a 20 MB chat answer ending with its usage: the provider's usage, whole or in chunks, holding at most the limit", () => {
    const bytes = enc.encode(chat(trap, { prompt_tokens: 12, completion_tokens: 5_000_000, total_tokens: 5_000_012, prompt_tokens_details: { cached_tokens: 3 } }));
    const want = { promptTokens: 12, completionTokens: 5_000_000, totalTokens: 5_000_012, cachedTokens: 3, source: "provider" };
    for (const size of [64 * KiB, 1_000_003]) {
      const m = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 1 });
      let maxHeld = 0;
      let changed = 0;
      const w = work(() => {
        for (const c of cut(bytes, size)) {
          if (m.chunk(c) !== c) changed++;
          maxHeld = Math.max(maxHeld, m.heldBytes());
        }
        return m.usage();
      });
      expect(changed).toBe(0);
      expect(w.result).toEqual(want);
      expect(maxHeld).toBeLessThanOrEqual(8 * MiB + 256 * KiB);
      expect(w.parsed).toBeLessThan(1 * KiB);
      expect(w.decoded).toBeLessThanOrEqual(128 * KiB);
    }
    const whole = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 1 });
    whole.whole(bytes);
    expect(whole.heldBytes()).toBeLessThanOrEqual(128 * KiB);
    expect(whole.usage()).toEqual(want);
  });

  it("Anthropic and Gemini shapes past the limit: usage last at the top level, or in the last element of Gemini's array", () => {
    const anthropic = JSON.stringify({ id: "msg_1", type: "message", role: "assistant", content: [{ type: "text", text: bigText(9 * MiB) }], stop_reason: "end_turn", usage: { input_tokens: 10, cache_read_input_tokens: 4, output_tokens: 2_000_000 } });
    const m = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 1 });
    for (const c of cut(enc.encode(anthropic), 64 * KiB)) m.chunk(c);
    expect(m.usage()).toEqual({ promptTokens: 10, completionTokens: 2_000_000, totalTokens: 2_000_010, cachedTokens: 4, source: "provider" });

    const part = (text: string, usageMetadata: unknown) => ({ candidates: [{ content: { role: "model", parts: [{ text }] } }], usageMetadata, modelVersion: "gemini-2.5-flash" });
    const gemini = JSON.stringify([part(bigText(9 * MiB), { trafficType: "ON_DEMAND" }), part("end", { promptTokenCount: 5, candidatesTokenCount: 7, totalTokenCount: 20, thoughtsTokenCount: 8 })]);
    const g = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 1 });
    g.whole(enc.encode(gemini));
    expect(g.usage()).toEqual({ promptTokens: 5, completionTokens: 7, totalTokens: 20, reasoningTokens: 8, source: "provider" });
  });

  it("past the limit with no top-level usage (none, or only deep inside a tool's input): estimated from the answer's length, not a handful of tokens", () => {
    const bytes = enc.encode(chat(bigText(20 * MiB)));
    const deep = enc.encode(JSON.stringify({ id: "msg", type: "message", content: [{ type: "text", text: bigText(9 * MiB) }, { type: "tool_use", input: { usage: { input_tokens: 0, output_tokens: 0 } } }] }));
    for (const body of [bytes, deep]) {
      const m = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 7 });
      for (const c of cut(body, 64 * KiB)) m.chunk(c);
      const u = m.usage();
      expect(u.source).toBe("estimated");
      expect(u.promptTokens).toBe(7);
      // Characters of the answer / 4, bounded above by the body's length / 4.
      expect(u.completionTokens).toBeGreaterThan((body.length * 0.6) / 4);
      expect(u.completionTokens).toBeLessThanOrEqual(Math.ceil(body.length / 4));
    }
  });
});

describe("usageInTail: usage from the end of a document, by a scan that respects strings", () => {
  const doc = (u: unknown) => JSON.stringify({ id: "x", choices: [{ message: { content: 'a "usage": {"prompt_tokens": 99} \\ \\\\ "' } }], usage: u, z: { usage: { prompt_tokens: 55 } } });
  const parts = (p: UsageParts | undefined) => (p ? providerUsage(p) : undefined);

  it("from every starting point of the text: the top-level usage, or nothing — never what a string holds", () => {
    const text = doc({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
    const want = { promptTokens: 3, completionTokens: 4, totalTokens: 7, source: "provider" };
    const top = text.indexOf('"usage":{"prompt_tokens":3');
    for (let from = 0; from < text.length; from++) {
      const got = parts(usageInTail(text.slice(from)));
      // Once the top-level key is cut off, only the depth-2 `z.usage` remains to be found.
      if (from < top) expect(got, `from ${from}`).toEqual(want);
      else expect(got === undefined || got.promptTokens === 55, `from ${from}`).toBe(true);
    }
  });

  it("an unfinished document (cut short, or ending inside a string) yields nothing", () => {
    const text = doc({ prompt_tokens: 3, completion_tokens: 4 });
    expect(usageInTail(text.slice(0, -1))).toBeUndefined();
    expect(usageInTail('"usage":{"prompt_tokens":1}, "x": "abc')).toBeUndefined();
  });
});
