import type { SluiceConfig } from "./config/schema.ts";
import type { BodyBytes } from "./proxy/attempt.ts";
import { resolvePriority } from "./priority.ts";

export type ApiKind = "chat" | "completions" | "embeddings" | "responses" | "messages" | "other";

/** What the gateway needs to know about a request before choosing a backend. */
export interface Classified {
  api: ApiKind;
  /** Azure deployment from the URL, else the body's `model`. */
  model: string | undefined;
  /** The model came from an Azure `/openai/deployments/{d}/…` URL. */
  azurePath: boolean;
  /** The part of the path after `/openai/deployments/{d}/`, `/openai/v1/` or `/v1/` (no leading slash); undefined for other paths. */
  operation: string | undefined;
  priority: number;
  /** The client named its priority (else it is the configured default). */
  priorityExplicit: boolean;
  /** Parsed JSON body, when the body is a JSON object. */
  json: Record<string, unknown> | undefined;
  /** Estimated tokens (prompt + completion budget): the request's weight in fair share and its reservation against limits. */
  cost: number;
  /** The completion part of `cost`: max_tokens (or the default budget) × n. */
  completionBudget: number;
  /** The client asked for a streamed answer. */
  stream: boolean;
}

export class BadRequest extends Error {
  constructor(message: string, readonly code: string) {
    super(message);
  }
}

const AZURE_DEPLOYMENT = /^\/openai\/deployments\/([^/]+)\/(.+)$/;
const OPENAI_V1 = /^\/(?:openai\/)?v1\/(.+)$/;
const AZURE_RESPONSES = /^\/openai\/(responses.*)$/;

function apiKind(operation: string | undefined): ApiKind {
  if (operation === undefined) return "other";
  if (operation.startsWith("chat/completions")) return "chat";
  if (operation.startsWith("completions")) return "completions";
  if (operation.startsWith("embeddings")) return "embeddings";
  if (operation.startsWith("responses")) return "responses";
  if (operation.startsWith("messages")) return "messages";
  return "other";
}

const decoder = new TextDecoder();

function parseJsonObject(body: BodyBytes | null): Record<string, unknown> | undefined {
  if (!body) return undefined;
  let i = 0;
  while (i < body.byteLength && (body[i] === 0x20 || body[i] === 0x0a || body[i] === 0x0d || body[i] === 0x09)) i++;
  // Only an object ("{") can be a request we understand; anything else skips the decode.
  if (body[i] !== 0x7b) return undefined;
  try {
    const v: unknown = JSON.parse(decoder.decode(body));
    return v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Priority from, in order: `x-priority`, SimpleL7Proxy's `S7PPriorityKey` (mapped by config), `?priority=`; undefined when none. */
function priorityOf(headers: Headers, url: URL, config: SluiceConfig): number | undefined {
  const { levels, keys } = config.priorities;
  const named = headers.get("x-priority");
  const key = headers.get("s7pprioritykey");
  const raw = named ?? (key !== null ? (keys[key] ?? null) : null) ?? url.searchParams.get("priority");
  if (named === null && key !== null && !(key in keys)) throw new BadRequest("S7PPriorityKey is not a configured priority key", "invalid_priority");
  if (raw !== null) {
    const level = resolvePriority(raw, levels);
    if (level === undefined) {
      throw new BadRequest(`priority "${raw}" is not one of ${Object.keys(levels).join(", ")} or an integer`, "invalid_priority");
    }
    return level;
  }
  return undefined;
}

const DEFAULT_COMPLETION_BUDGET = 256;

/**
 * Tokens a request may cost: about one per four bytes of body for the prompt, plus the
 * completion budget it asks for (`max_tokens` and friends, 256 when unset) times `n`.
 */
export function estimateTokens(body: BodyBytes | null, json: Record<string, unknown> | undefined): { prompt: number; completion: number } {
  const prompt = Math.max(1, Math.ceil((body?.byteLength ?? 0) / 4));
  if (!json) return { prompt, completion: 0 };
  const budget = json.max_tokens ?? json.max_completion_tokens ?? json.max_output_tokens;
  const n = typeof json.n === "number" && json.n > 0 ? json.n : 1;
  return { prompt, completion: (typeof budget === "number" && budget >= 0 ? budget : DEFAULT_COMPLETION_BUDGET) * n };
}

export function classify(pathname: string, url: URL, headers: Headers, body: BodyBytes | null, config: SluiceConfig): Classified {
  let model: string | undefined;
  let operation: string | undefined;
  let azurePath = false;
  const azure = AZURE_DEPLOYMENT.exec(pathname);
  if (azure) {
    model = decodeURIComponent(azure[1]!);
    operation = azure[2];
    azurePath = true;
  } else {
    operation = (OPENAI_V1.exec(pathname) ?? AZURE_RESPONSES.exec(pathname))?.[1];
  }
  const json = parseJsonObject(body);
  if (!azurePath && typeof json?.model === "string") model = json.model;
  const named = priorityOf(headers, url, config);
  const api = apiKind(operation);
  // Embeddings produce no completion: their cost is the input alone.
  const estimate = estimateTokens(body, api === "embeddings" ? undefined : json);
  return {
    api,
    model,
    azurePath,
    operation,
    priority: named ?? resolvePriority(config.priorities.default, config.priorities.levels)!,
    priorityExplicit: named !== undefined,
    json,
    cost: estimate.prompt + estimate.completion,
    completionBudget: estimate.completion,
    stream: json?.stream === true,
  };
}
