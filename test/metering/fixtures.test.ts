import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ResponseMeter } from "../../src/metering/meter.ts";
import type { Usage } from "../../src/metering/usage.ts";
import { HAVE_SHARED_FIXTURES, needsFixtures } from "../harness/shared-fixtures.ts";

const dir = new URL("../../../shared/fixtures/recorded/", import.meta.url);
const load = (name: string) => new Uint8Array(readFileSync(new URL(name, dir)));

/**
 * Every recorded response that carries usage, with the numbers it carries. gemini-2.5.txt is
 * left out: it is notes holding two documents and prose, not one response body.
 */
const EXPECTED: Record<string, Omit<Usage, "source">> = {
  "openAI.txt": { promptTokens: 41, completionTokens: 512, totalTokens: 553 },
  "aoai2.txt": { promptTokens: 26, completionTokens: 24, totalTokens: 50, cachedTokens: 0, reasoningTokens: 0 },
  "4o-mini.txt": { promptTokens: 58, completionTokens: 1000, totalTokens: 1058, cachedTokens: 0, reasoningTokens: 0 },
  "gpt5-nano.txt": { promptTokens: 71, completionTokens: 200, totalTokens: 271, cachedTokens: 0, reasoningTokens: 200 },
  "gpt5-nano-response.txt": { promptTokens: 30, completionTokens: 448, totalTokens: 478, cachedTokens: 0, reasoningTokens: 448 },
  "embeddings.txt": { promptTokens: 9, completionTokens: 0, totalTokens: 9 },
  "multiline.txt": { promptTokens: 10, completionTokens: 28, totalTokens: 38, cachedTokens: 0, cacheCreationTokens: 0 },
  "claude-3.5-haiku.txt": { promptTokens: 10, completionTokens: 11, totalTokens: 21, cachedTokens: 0, cacheCreationTokens: 0 },
  "claude-sonnet-3.5.txt": { promptTokens: 10, completionTokens: 35, totalTokens: 45, cachedTokens: 0, cacheCreationTokens: 0 },
  "anthropoc-claude-sonnet-4.txt": { promptTokens: 14, completionTokens: 28, totalTokens: 42, cachedTokens: 0, cacheCreationTokens: 0 },
  "claude-code-cli.txt": { promptTokens: 10, completionTokens: 246, totalTokens: 256, cachedTokens: 18281, cacheCreationTokens: 440 },
  "gemini-2.5-pro-chat.txt": { promptTokens: 8, completionTokens: 750, totalTokens: 2163, reasoningTokens: 1405 },
  "gemini-2.5-pro-stream.txt": { promptTokens: 8, completionTokens: 716, totalTokens: 1984, reasoningTokens: 1260 },
  "gemini-2.5-pro.txt": { promptTokens: 6, completionTokens: 19, totalTokens: 1465, reasoningTokens: 1440 },
  "gemini-2.5-flash-lite.txt": { promptTokens: 7, completionTokens: 1684, totalTokens: 1691 },
};

const isSse = (bytes: Uint8Array) => /^\s*(data|event):/.test(new TextDecoder().decode(bytes.subarray(0, 32)));

/** Deterministic odd splits: 1, 7, 13, 3 … bytes, cutting through lines and multi-byte characters. */
function oddlySplit(bytes: Uint8Array): Uint8Array[] {
  const sizes = [1, 7, 13, 3, 29, 2, 61];
  const out: Uint8Array[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** A seeded generator (mulberry32), so a failing split can be reproduced. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random cuts anywhere (mid-line, mid-CRLF, mid-character): tiny pieces, mid-sized, or large, per split. */
function randomlySplit(bytes: Uint8Array, seed: number): Uint8Array[] {
  const next = random(seed);
  const scale = [2, 16, 300, 5000][seed % 4]!;
  const out: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = 1 + Math.floor(next() * scale);
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

const SPLITS = 16;
const SSE_FIXTURES = HAVE_SHARED_FIXTURES ? Object.keys(EXPECTED).filter((name) => isSse(load(name))) : [];
const utf8 = new TextDecoder();
const toBytes = (text: string) => new TextEncoder().encode(text);
/** The recorded stream with its line ends as recorded (LF), as CRLF, and as CR. */
const LINE_ENDS: Record<string, (text: string) => string> = {
  LF: (t) => t,
  CRLF: (t) => t.replace(/\n/g, "\r\n"),
  CR: (t) => t.replace(/\n/g, "\r"),
};

/**
 * Reference for strip mode, from the SSE rules and nothing of the meter: the text cut into
 * lines with their ends (CRLF, LF or CR), an empty line ending an event; every event kept but
 * the usage-only chunk (no choices, a usage object).
 */
function stripReference(text: string): { kept: string; dropped: number } {
  const lines = text.match(/[^\r\n]*(?:\r\n|\r|\n|$)/g)!.filter((l) => l !== "");
  const events: string[] = [];
  let event = "";
  for (const line of lines) {
    event += line;
    if (/^(?:\r\n|\r|\n)$/.test(line)) {
      events.push(event);
      event = "";
    }
  }
  if (event) events.push(event);
  let dropped = 0;
  const kept = events.filter((e) => {
    const data = e
      .split(/\r\n|\r|\n/)
      .filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5))
      .join("\n");
    try {
      const doc = JSON.parse(data);
      if (Array.isArray(doc.choices) && doc.choices.length === 0 && doc.usage && typeof doc.usage === "object") {
        dropped++;
        return false;
      }
    } catch {
      // not JSON: kept
    }
    return true;
  });
  return { kept: kept.join(""), dropped };
}

function meter(bytes: Uint8Array, chunks: Uint8Array[]) {
  const m = new ResponseMeter({ sse: isSse(bytes), stripUsageChunk: false, promptEstimate: 99 });
  const passed: Uint8Array[] = chunks.map((c) => m.chunk(c));
  return { usage: m.usage(), passed: Buffer.concat(passed) };
}

describe.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("metering the recorded provider responses"), () => {
  for (const [name, expected] of Object.entries(EXPECTED)) {
    it(`${name}: exactly its numbers, delivered whole or in small oddly split chunks, bytes untouched`, () => {
      const bytes = load(name);
      for (const chunks of [[bytes], oddlySplit(bytes)]) {
        const { usage, passed } = meter(bytes, chunks);
        expect(usage).toEqual({ ...expected, source: "provider" });
        expect(passed.equals(Buffer.from(bytes))).toBe(true);
      }
    });

    it(`${name}: exactly its numbers in ${SPLITS} random splits, every chunk passed on as it came`, () => {
      const bytes = load(name);
      for (let seed = 1; seed <= SPLITS; seed++) {
        const m = new ResponseMeter({ sse: isSse(bytes), stripUsageChunk: false, promptEstimate: 99 });
        let changed = 0;
        for (const c of randomlySplit(bytes, seed)) if (m.chunk(c) !== c) changed++;
        expect(changed).toBe(0);
        expect(m.flush()).toBeUndefined();
        expect(m.usage(), `seed ${seed}`).toEqual({ ...expected, source: "provider" });
      }
    });
  }

  for (const name of SSE_FIXTURES) {
    for (const [ends, convert] of Object.entries(LINE_ENDS)) {
      it(`${name} with ${ends} line ends, ${SPLITS} random splits: untouched when not stripping; in strip mode exactly the usage-only chunk removed`, () => {
        const text = convert(utf8.decode(load(name)));
        const bytes = toBytes(text);
        const reference = stripReference(text);
        // Only the OpenAI-style streams carry a usage-only chunk; the others pass whole.
        expect(reference.dropped).toBe(name === "openAI.txt" || name === "aoai2.txt" ? 1 : 0);
        for (let seed = 1; seed <= SPLITS; seed++) {
          for (const strip of [false, true]) {
            const m = new ResponseMeter({ sse: true, stripUsageChunk: strip, promptEstimate: 99 });
            const out: Uint8Array[] = [];
            let changed = 0;
            for (const c of randomlySplit(bytes, seed)) {
              const o = m.chunk(c);
              if (o !== c) changed++;
              if (o.byteLength) out.push(o);
            }
            if (!strip) expect(changed).toBe(0);
            const rest = m.flush();
            if (rest) out.push(rest);
            const passed = Buffer.concat(out);
            const want = strip ? Buffer.from(toBytes(reference.kept)) : Buffer.from(bytes);
            expect(passed.equals(want), `seed ${seed} strip ${strip}`).toBe(true);
            expect(m.usage(), `seed ${seed} strip ${strip}`).toEqual({ ...EXPECTED[name], source: "provider" });
          }
        }
      });
    }
  }

  /** Whitespace JSON allows, enough to push a document past the 8 MiB the meter parses whole. */
  const PAD = " ".repeat(9 * 1024 * 1024);

  it("every JSON response grown past the parse limit (whitespace after its first byte): the same numbers, from its end", () => {
    for (const [name, expected] of Object.entries(EXPECTED)) {
      const bytes = load(name);
      if (isSse(bytes)) continue;
      const text = utf8.decode(bytes);
      const big = toBytes(text.slice(0, 1) + PAD + text.slice(1));
      const chunked = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 99 });
      for (const c of randomlySplit(big, 3)) chunked.chunk(c);
      expect(chunked.usage(), name).toEqual({ ...expected, source: "provider" });
      const whole = new ResponseMeter({ sse: false, stripUsageChunk: false, promptEstimate: 99 });
      whole.whole(big);
      expect(whole.usage(), name).toEqual({ ...expected, source: "provider" });
    }
  });

  it("every SSE stream with its usage-bearing events grown past the parse limit: the same numbers, from those events' ends", () => {
    for (const name of SSE_FIXTURES) {
      const text = utf8.decode(load(name));
      let grown = 0;
      const big = text.replace(/^data: \{(?=.*"(?:usage|usageMetadata)":\{)/gm, () => {
        grown++;
        return "data: {" + PAD;
      });
      expect(grown, name).toBeGreaterThan(0);
      const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 99 });
      for (const c of randomlySplit(toBytes(big), 3)) m.chunk(c);
      expect(m.usage(), name).toEqual({ ...EXPECTED[name], source: "provider" });
    }
  });

  it("estimates, and says so, when a stream carries no usage", () => {
    const text = "data: " + JSON.stringify({ choices: [{ delta: { content: "Hello there, friend" } }] }) + "\n\ndata: [DONE]\n\n";
    const m = new ResponseMeter({ sse: true, stripUsageChunk: false, promptEstimate: 12 });
    m.chunk(new TextEncoder().encode(text));
    expect(m.usage()).toEqual({ promptTokens: 12, completionTokens: 5, totalTokens: 17, source: "estimated" });
  });

  it("removes only the usage-only chunk it asked for, keeping every other byte", () => {
    const bytes = load("openAI.txt");
    const text = new TextDecoder().decode(bytes);
    const usageEvent = text.slice(text.lastIndexOf("data: {"), text.lastIndexOf("data: [DONE]"));
    expect(usageEvent).toContain('"choices":[]');
    for (const chunks of [[bytes], oddlySplit(bytes)]) {
      const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
      const out = chunks.map((c) => m.chunk(c));
      const rest = m.flush();
      if (rest) out.push(rest);
      expect(new TextDecoder().decode(Buffer.concat(out))).toBe(text.replace(usageEvent, ""));
      expect(m.usage()).toMatchObject({ promptTokens: 41, completionTokens: 512, source: "provider" });
    }
    // Azure's first chunk also has "choices": [] but no usage: it stays.
    const azure = load("aoai2.txt");
    const m = new ResponseMeter({ sse: true, stripUsageChunk: true, promptEstimate: 1 });
    const out = new TextDecoder().decode(m.chunk(azure));
    expect(out.startsWith('data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results"')).toBe(true);
    expect(out).not.toContain('"usage":{"completion_tokens"');
  });
});
