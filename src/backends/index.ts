import type { BackendKindName } from "../types.ts";
import { anthropic } from "./anthropic.ts";
import { apim } from "./apim.ts";
import { azureOpenai } from "./azure-openai.ts";
import type { BackendKind } from "./kind.ts";
import { openai } from "./openai.ts";

export type { BackendKind, TargetInput, UpstreamTarget } from "./kind.ts";

/** One entry per kind; a Record over the union makes a new kind without a module a type error. */
const KINDS: Record<BackendKindName, BackendKind> = {
  openai,
  "azure-openai": azureOpenai,
  apim,
  anthropic,
};

export function backendKind(name: BackendKindName): BackendKind {
  return KINDS[name];
}
