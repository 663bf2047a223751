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
  /** Parsed JSON body when it was needed and is an object. */
  json: Record<string, unknown> | undefined;
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
  if (!body || body.byteLength === 0) return undefined;
  try {
    const v: unknown = JSON.parse(decoder.decode(body));
    return v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function priorityOf(headers: Headers, url: URL, config: SluiceConfig): number {
  const levels = config.priorities.levels;
  const raw = headers.get("x-priority") ?? url.searchParams.get("priority");
  if (raw !== null) {
    const level = resolvePriority(raw, levels);
    if (level === undefined) {
      throw new BadRequest(`x-priority "${raw}" is not one of ${Object.keys(levels).join(", ")} or an integer`, "invalid_priority");
    }
    return level;
  }
  return resolvePriority(config.priorities.default, levels)!;
}

export function classify(pathname: string, url: URL, headers: Headers, body: BodyBytes | null, config: SluiceConfig): Classified {
  let model: string | undefined;
  let operation: string | undefined;
  let azurePath = false;
  let json: Record<string, unknown> | undefined;
  const azure = AZURE_DEPLOYMENT.exec(pathname);
  if (azure) {
    model = decodeURIComponent(azure[1]!);
    operation = azure[2];
    azurePath = true;
  } else {
    operation = (OPENAI_V1.exec(pathname) ?? AZURE_RESPONSES.exec(pathname))?.[1];
    json = parseJsonObject(body);
    if (typeof json?.model === "string") model = json.model;
  }
  return { api: apiKind(operation), model, azurePath, operation, priority: priorityOf(headers, url, config), json };
}
