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

/** The usage numbers seen so far in a response; stream events fill it in piece by piece. */
export type UsageParts = Partial<Omit<Usage, "source">>;

type Json = Record<string, unknown>;

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const obj = (v: unknown): Json | undefined => (v && typeof v === "object" && !Array.isArray(v) ? (v as Json) : undefined);

/** OpenAI chat/completions/embeddings (prompt_/completion_tokens), Responses (input_/output_tokens), Anthropic. */
function fromUsageBlock(u: Json): UsageParts {
  const parts: UsageParts = {};
  const prompt = num(u.prompt_tokens) ?? num(u.input_tokens);
  const completion = num(u.completion_tokens) ?? num(u.output_tokens);
  if (prompt !== undefined) parts.promptTokens = prompt;
  if (completion !== undefined) parts.completionTokens = completion;
  const total = num(u.total_tokens);
  if (total !== undefined) parts.totalTokens = total;
  const cached =
    num(obj(u.prompt_tokens_details)?.cached_tokens) ?? num(obj(u.input_tokens_details)?.cached_tokens) ?? num(u.cache_read_input_tokens);
  if (cached !== undefined) parts.cachedTokens = cached;
  const creation = num(u.cache_creation_input_tokens);
  if (creation !== undefined) parts.cacheCreationTokens = creation;
  const reasoning = num(obj(u.completion_tokens_details)?.reasoning_tokens) ?? num(obj(u.output_tokens_details)?.reasoning_tokens);
  if (reasoning !== undefined) parts.reasoningTokens = reasoning;
  return parts;
}

/** Gemini's usageMetadata. */
function fromUsageMetadata(u: Json): UsageParts {
  const parts: UsageParts = {};
  const prompt = num(u.promptTokenCount);
  const completion = num(u.candidatesTokenCount);
  const total = num(u.totalTokenCount);
  if (prompt !== undefined) parts.promptTokens = prompt;
  if (completion !== undefined) parts.completionTokens = completion;
  if (total !== undefined) parts.totalTokens = total;
  const cached = num(u.cachedContentTokenCount);
  if (cached !== undefined) parts.cachedTokens = cached;
  const thoughts = num(u.thoughtsTokenCount);
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

/** Later events win field by field (Anthropic sends input first and the final output count last). */
export function mergeUsage(into: UsageParts, from: UsageParts): UsageParts {
  return Object.assign(into, from);
}

/** A complete Usage from what the provider said; undefined when it said nothing usable. */
export function providerUsage(parts: UsageParts): Usage | undefined {
  const { promptTokens, completionTokens } = parts;
  if (promptTokens === undefined && completionTokens === undefined && parts.totalTokens === undefined) return undefined;
  const prompt = promptTokens ?? 0;
  const completion = completionTokens ?? Math.max(0, (parts.totalTokens ?? prompt) - prompt);
  return { ...parts, promptTokens: prompt, completionTokens: completion, totalTokens: parts.totalTokens ?? prompt + completion, source: "provider" };
}
