import type { ProfileConfig, SluiceConfig } from "./config/schema.ts";
import type { ApiKind, BodyBytes } from "./types.ts";
import { resolvePriority } from "./priority.ts";

export type { ApiKind };

/**
 * What the gateway needs to know about a request before choosing a backend: the classify
 * step's result, computed once and never changed afterwards (a rewrite makes a new body, not a
 * new classification).
 */
export interface Classified {
  readonly api: ApiKind;
  /** Azure deployment from the URL, else the body's `model`. */
  readonly model: string | undefined;
  /** The model came from an Azure `/openai/deployments/{d}/…` URL. */
  readonly azurePath: boolean;
  /** The part of the path after `/openai/deployments/{d}/`, `/openai/v1/` or `/v1/` (no leading slash); undefined for other paths. */
  readonly operation: string | undefined;
  /** The level the request is served at: what it asked for (or the default), within what its caller's profile allows. */
  readonly priority: number;
  /** The client named its priority (else it is the configured or profile default). */
  readonly priorityExplicit: boolean;
  /** Parsed JSON body, when the body is a JSON object. */
  readonly json: Readonly<Record<string, unknown>> | undefined;
  /** Estimated tokens (prompt + completion budget): the request's weight in fair share and its reservation against limits. */
  readonly cost: number;
  /** The completion part of `cost`: max_tokens (or the default budget) × n. */
  readonly completionBudget: number;
  /** The client asked for a streamed answer. */
  readonly stream: boolean;
}

export class BadRequest extends Error {
  constructor(message: string, readonly code: string) {
    super(message);
  }
}

const AZURE_DEPLOYMENT = /^\/openai\/deployments\/([^/]+)\/(.+)$/;
const OPENAI_V1 = /^\/(?:openai\/)?v1\/(.+)$/;
const AZURE_RESPONSES = /^\/openai\/(responses.*)$/;

/** The gateway's own model listings (CONTRACT §6): answered after authentication, never proxied. */
const MODEL_LISTING = /^\/(?:openai\/v1|openai|v1)\/models(?:\/[^/]+)?\/?$/;

/** Whether a request is one of the model listings (or one model's entry) the gateway answers itself. */
export function isModelListing(method: string, pathname: string): boolean {
  return (method === "GET" || method === "HEAD") && MODEL_LISTING.test(pathname);
}

/** The API family of a path, before the body is read: it shapes the errors of early refusals. */
export function apiOfPath(pathname: string): ApiKind {
  if (MODEL_LISTING.test(pathname)) return "models";
  const azure = AZURE_DEPLOYMENT.exec(pathname);
  return apiKind(azure ? azure[2] : (OPENAI_V1.exec(pathname) ?? AZURE_RESPONSES.exec(pathname))?.[1]);
}

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

const levelSets = new WeakMap<Record<string, number>, Set<number>>();

/** The level numbers a config names, kept per config version (no array per request). */
function configuredLevels(levels: Record<string, number>): Set<number> {
  let set = levelSets.get(levels);
  if (!set) {
    set = new Set(Object.values(levels));
    levelSets.set(levels, set);
  }
  return set;
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
    // Only configured levels: an arbitrary integer (-1000) would jump every queue.
    if (level === undefined || !configuredLevels(levels).has(level)) {
      throw new BadRequest(`priority "${raw}" is not one of ${Object.entries(levels).map(([n, l]) => `${n} (${l})`).join(", ")}`, "invalid_priority");
    }
    return level;
  }
  return undefined;
}

const DEFAULT_COMPLETION_BUDGET = 256;
/** Bounds of what feeds an estimate: a `max_tokens` of 1e300 or an `n` of 1e9 must not make a request weigh more than any real one. */
const MAX_COMPLETION_TOKENS = 1_000_000;
const MAX_CHOICES = 128;

/**
 * Tokens a request may cost: about one per four bytes of body for the prompt, plus the
 * completion budget it asks for (`max_tokens` and friends, 256 when unset) times `n`.
 */
export function estimateTokens(body: BodyBytes | null, json: Record<string, unknown> | undefined): { prompt: number; completion: number } {
  const prompt = Math.max(1, Math.ceil((body?.byteLength ?? 0) / 4));
  if (!json) return { prompt, completion: 0 };
  const budget = json.max_tokens ?? json.max_completion_tokens ?? json.max_output_tokens;
  const n = typeof json.n === "number" && Number.isFinite(json.n) && json.n >= 1 ? Math.min(MAX_CHOICES, Math.floor(json.n)) : 1;
  const each = typeof budget === "number" && Number.isFinite(budget) && budget >= 0 ? Math.min(MAX_COMPLETION_TOKENS, Math.ceil(budget)) : DEFAULT_COMPLETION_BUDGET;
  return { prompt, completion: each * n };
}

/** Longest model or deployment name accepted; a longer one is not a model any backend serves. */
const MODEL_MAX_LENGTH = 256;
/** A lone UTF-16 surrogate or a control character: no backend can be sent such a name (percent-encoding a lone surrogate throws). */
const UNSENDABLE = /[\u0000-\u001f\u007f]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkModel(model: string | undefined): void {
  if (model === undefined) return;
  if (model.length === 0 || model.length > MODEL_MAX_LENGTH) throw new BadRequest(`the model name must be 1 to ${MODEL_MAX_LENGTH} characters long`, "invalid_model");
  if (UNSENDABLE.test(model)) throw new BadRequest("the model name holds a control character or invalid Unicode (a lone surrogate)", "invalid_model");
  // As a deployment in a URL path, "." or ".." would move the request to another path.
  if (model === "." || model === "..") throw new BadRequest("the model name may not be '.' or '..'", "invalid_model");
}

/** The profile's default applies when the client named no priority; its maximum caps what the client asked for. */
function governedPriority(named: number | undefined, profile: ProfileConfig | undefined, config: SluiceConfig): number {
  const levels = config.priorities.levels;
  let level = named ?? resolvePriority(config.priorities.default, levels)!;
  if (!profile) return level;
  if (named === undefined && profile.defaultPriority !== undefined) level = resolvePriority(profile.defaultPriority, levels)!;
  // A lower number is more urgent: the cap is the larger of the two.
  if (profile.maxPriority !== undefined) level = Math.max(level, resolvePriority(profile.maxPriority, levels)!);
  return level;
}

export function classify(pathname: string, url: URL, headers: Headers, body: BodyBytes | null, config: SluiceConfig, profile?: ProfileConfig): Classified {
  let model: string | undefined;
  let operation: string | undefined;
  let azurePath = false;
  const azure = AZURE_DEPLOYMENT.exec(pathname);
  if (azure) {
    try {
      model = decodeURIComponent(azure[1]!);
    } catch {
      throw new BadRequest("the deployment in the path is not valid percent-encoding", "invalid_path");
    }
    operation = azure[2];
    azurePath = true;
  } else {
    operation = (OPENAI_V1.exec(pathname) ?? AZURE_RESPONSES.exec(pathname))?.[1];
  }
  const json = parseJsonObject(body);
  if (!azurePath && typeof json?.model === "string") model = json.model;
  checkModel(model);
  const named = priorityOf(headers, url, config);
  const api = apiKind(operation);
  // Embeddings produce no completion: their cost is the input alone.
  const estimate = estimateTokens(body, api === "embeddings" ? undefined : json);
  return {
    api,
    model,
    azurePath,
    operation,
    priority: governedPriority(named, profile, config),
    priorityExplicit: named !== undefined,
    json,
    cost: estimate.prompt + estimate.completion,
    completionBudget: estimate.completion,
    stream: json?.stream === true,
  };
}
