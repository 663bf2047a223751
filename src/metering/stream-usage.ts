import type { Classified } from "../classify.ts";
import type { BodyBytes } from "../types.ts";

const encoder = new TextEncoder();

/**
 * A streamed chat/completions request that does not ask for usage gets `include_usage` added
 * (a documented rewrite), so the stream can be metered exactly; the extra chunk is removed
 * before the client sees it. Returns the body to send and its JSON, or undefined to send the
 * client's bytes.
 */
export function withStreamUsage(cls: Classified): { body: BodyBytes; json: Record<string, unknown> } | undefined {
  const json = cls.json;
  if (!json || !cls.stream || (cls.api !== "chat" && cls.api !== "completions")) return undefined;
  const options = json.stream_options && typeof json.stream_options === "object" ? (json.stream_options as Record<string, unknown>) : {};
  if (options.include_usage === true) return undefined;
  const rewritten = { ...json, stream_options: { ...options, include_usage: true } };
  return { body: encoder.encode(JSON.stringify(rewritten)), json: rewritten };
}
