/**
 * Token usage in one shape for every provider. `source` says whether the numbers came from
 * the provider or were estimated by the gateway; unknown is never recorded as zero.
 */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** Prompt tokens served from the provider's cache (OpenAI cached_tokens, Anthropic cache reads, Gemini cached content). */
  cachedTokens?: number;
  /** Anthropic: prompt tokens written to the cache. */
  cacheCreationTokens?: number;
  /** Completion tokens spent on reasoning (OpenAI reasoning_tokens, Gemini thoughts). */
  reasoningTokens?: number;
  source: "provider" | "estimated";
}

/**
 * The usage numbers seen so far in a response; stream events fill it in piece by piece.
 * `unusable`: the provider stated a prompt, completion or total count that is not a count
 * (negative, fractional, not finite, absurdly large, not a number): its report is not used.
 */
export type UsageParts = Partial<Omit<Usage, "source">> & { unusable?: true };

type Json = Record<string, unknown>;

/** The largest count taken from a provider; more is a fault, not a count. */
export const COUNT_MAX = 1e12;

/** A count as stated: a non-negative integer, absent (missing or null), or "bad". */
function count(v: unknown): number | undefined | "bad" {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > COUNT_MAX) return "bad";
  return v === 0 ? 0 : v; // -0 → 0
}
/** A detail count (cached, reasoning…): a bad one is left out, as unknown. */
const detail = (v: unknown): number | undefined => {
  const c = count(v);
  return c === "bad" ? undefined : c;
};
const obj = (v: unknown): Json | undefined => (v && typeof v === "object" && !Array.isArray(v) ? (v as Json) : undefined);

/** The three main counts; any stated but unusable one makes the whole report unusable. */
function core(parts: UsageParts, prompt: number | undefined | "bad", completion: number | undefined | "bad", total: number | undefined | "bad"): void {
  if (prompt === "bad" || completion === "bad" || total === "bad") parts.unusable = true;
  if (typeof prompt === "number") parts.promptTokens = prompt;
  if (typeof completion === "number") parts.completionTokens = completion;
  if (typeof total === "number") parts.totalTokens = total;
}

/** OpenAI chat/completions/embeddings (prompt_/completion_tokens), Responses (input_/output_tokens), Anthropic. */
function fromUsageBlock(u: Json): UsageParts {
  const parts: UsageParts = {};
  core(parts, count(u.prompt_tokens) ?? count(u.input_tokens), count(u.completion_tokens) ?? count(u.output_tokens), count(u.total_tokens));
  const cached =
    detail(obj(u.prompt_tokens_details)?.cached_tokens) ?? detail(obj(u.input_tokens_details)?.cached_tokens) ?? detail(u.cache_read_input_tokens);
  if (cached !== undefined) parts.cachedTokens = cached;
  const creation = detail(u.cache_creation_input_tokens);
  if (creation !== undefined) parts.cacheCreationTokens = creation;
  const reasoning = detail(obj(u.completion_tokens_details)?.reasoning_tokens) ?? detail(obj(u.output_tokens_details)?.reasoning_tokens);
  if (reasoning !== undefined) parts.reasoningTokens = reasoning;
  return parts;
}

/** Gemini's usageMetadata. */
function fromUsageMetadata(u: Json): UsageParts {
  const parts: UsageParts = {};
  core(parts, count(u.promptTokenCount), count(u.candidatesTokenCount), count(u.totalTokenCount));
  const cached = detail(u.cachedContentTokenCount);
  if (cached !== undefined) parts.cachedTokens = cached;
  const thoughts = detail(u.thoughtsTokenCount);
  if (thoughts !== undefined) parts.reasoningTokens = thoughts;
  return parts;
}

/**
 * The usage a parsed JSON document or stream event carries, wherever the provider puts it:
 * `usage` (OpenAI, Azure, Anthropic, Responses), `message.usage` (Anthropic message_start),
 * `response.usage` (Responses stream events), `usageMetadata` (Gemini). A JSON array (Gemini's
 * streamed array) yields its last usage.
 */
export function usageIn(doc: unknown): UsageParts | undefined {
  if (Array.isArray(doc)) {
    for (let i = doc.length - 1; i >= 0; i--) {
      const u = usageIn(doc[i]);
      if (u) return u;
    }
    return undefined;
  }
  const o = obj(doc);
  if (!o) return undefined;
  const block = obj(o.usage) ?? obj(obj(o.message)?.usage) ?? obj(obj(o.response)?.usage);
  if (block) return fromUsageBlock(block);
  const meta = obj(o.usageMetadata);
  return meta ? fromUsageMetadata(meta) : undefined;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const isSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
const USAGE_KEY = /"(?:usage|usageMetadata)"[ \t\r\n]*:/g;

/**
 * The usage of a JSON document of which only the end is at hand (`text`, its last bytes; the
 * provider puts usage last): the last `usage` / `usageMetadata` object that is a member of the
 * top-level object, else of an object one level down (`response.usage`, `message.usage`, the
 * elements of Gemini's array). Linear in `text`.
 *
 * `text` may begin inside a string, so the scan starts at a place known to be outside one: a
 * `"usage"` key whose opening quote is not escaped (inside a string every quote is). From
 * there a scan that respects strings tracks nesting to the document's end, where the closing
 * of the top-level container tells how deep each key was. Text written by a model is inside
 * strings and cannot pass for a key.
 */
export function usageInTail(text: string): UsageParts | undefined {
  let start = -1;
  USAGE_KEY.lastIndex = 0;
  for (let m = USAGE_KEY.exec(text); m; m = USAGE_KEY.exec(text)) {
    let slashes = 0;
    while (m.index - slashes - 1 >= 0 && text.charCodeAt(m.index - slashes - 1) === BACKSLASH) slashes++;
    // An even run of backslashes (none) before the quote, with a character before the run (the
    // run is not cut by the start of the text): the quote opens a key.
    if (slashes % 2 === 0 && m.index - slashes > 0) {
      start = m.index;
      break;
    }
  }
  if (start < 0) return undefined;

  interface Found {
    depth: number;
    meta: boolean;
    from: number;
    to: number;
  }
  const found: Found[] = [];
  /** Containers opened since `start`: the index in `found` of the usage object each is, or -1. */
  const open: number[] = [];
  let depth = 0; // 0: inside the object holding the first key; an ancestor's end goes below
  let min = 0;
  let minAt = -1;
  let key: 0 | 1 | 2 = 0; // the value about to start is that of `usage` (1) or `usageMetadata` (2)
  const n = text.length;
  for (let i = start; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      let j = i + 1;
      for (; j < n; j++) {
        const d = text.charCodeAt(j);
        if (d === BACKSLASH) j++;
        else if (d === QUOTE) break;
      }
      if (j >= n) return undefined; // ends inside a string: not a whole document
      let k = j + 1;
      while (k < n && isSpace(text.charCodeAt(k))) k++;
      if (k < n && text.charCodeAt(k) === COLON) {
        const len = j - i - 1;
        key = len === 5 && text.startsWith("usage", i + 1) ? 1 : len === 13 && text.startsWith("usageMetadata", i + 1) ? 2 : 0;
        i = k;
      } else {
        key = 0;
        i = j;
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (key && c === 0x7b) {
        open.push(found.length);
        found.push({ depth, meta: key === 2, from: i, to: -1 });
      } else open.push(-1);
      key = 0;
      depth++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      const f = open.pop();
      if (f !== undefined && f >= 0) found[f]!.to = i;
      depth--;
      if (depth < min) {
        min = depth;
        minAt = i;
      }
      key = 0;
    } else if (!isSpace(c)) key = 0;
  }
  // A whole document: everything opened was closed, its top-level container last.
  if (minAt < 0 || depth !== min || text.slice(minAt + 1).trim() !== "") return undefined;
  let best: Found | undefined;
  for (const level of [1, 2]) {
    for (let i = found.length - 1; i >= 0 && !best; i--) if (found[i]!.to >= 0 && found[i]!.depth - min === level) best = found[i];
    if (best) break;
  }
  if (!best) return undefined;
  let block: unknown;
  try {
    block = JSON.parse(text.slice(best.from, best.to + 1));
  } catch {
    return undefined;
  }
  const o = obj(block);
  if (!o) return undefined;
  return best.meta ? fromUsageMetadata(o) : fromUsageBlock(o);
}

/** Later events win field by field (Anthropic sends input first and the final output count last); an unusable report stays so. */
export function mergeUsage(into: UsageParts, from: UsageParts): UsageParts {
  return Object.assign(into, from);
}

/** A complete Usage from what the provider said; undefined when it said nothing usable. */
export function providerUsage(parts: UsageParts): Usage | undefined {
  const { promptTokens, completionTokens, totalTokens, unusable, ...details } = parts;
  if (unusable) return undefined;
  if (promptTokens === undefined && completionTokens === undefined && totalTokens === undefined) return undefined;
  const prompt = promptTokens ?? 0;
  let completion = completionTokens;
  if (completion === undefined) {
    // Only a total: the completion is what it adds to the prompt; a total below the prompt is no count.
    if (totalTokens !== undefined && totalTokens < prompt) return undefined;
    completion = (totalTokens ?? prompt) - prompt;
  }
  const total = totalTokens ?? prompt + completion;
  if (total > COUNT_MAX) return undefined;
  return { ...details, promptTokens: prompt, completionTokens: completion, totalTokens: total, source: "provider" };
}
