import { BadRequest, type Classified } from "../classify.ts";
import type { BodyBytes } from "../types.ts";
import type { TargetInput, UpstreamTarget } from "./kind.ts";

/**
 * Target pieces every kind shares: the body rename, the deployment check, the pass-through of
 * paths that are not a model API, and the OpenAI-style `/v1/{operation}` URL.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** With the `u` flag a surrogate pair is one code point, so only a lone surrogate matches. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Refuses a deployment that is not well-formed Unicode, whichever kind the backend is: in a URL
 * it cannot be percent-encoded (encodeURIComponent throws URIError), and in a body no provider
 * serves such a name, so the client hears 400 from the gateway rather than a kind-dependent fault.
 */
export function checkDeployment(deployment: string): void {
  if (LONE_SURROGATE.test(deployment)) {
    throw new BadRequest("the model name is not well-formed Unicode (it holds a lone surrogate)", "invalid_model");
  }
}

/** One path segment; checkDeployment ran first, so encodeURIComponent cannot throw here. */
export function pathSegment(deployment: string): string {
  return encodeURIComponent(deployment);
}

/** The client's body with `model` set to the backend's name for it, only when that differs. */
export function bodyWithModel(body: BodyBytes | null, cls: Classified, deployment: string): BodyBytes | null {
  if (!body || !deployment) return body;
  let json = cls.json;
  if (!json) {
    try {
      json = JSON.parse(decoder.decode(body)) as Record<string, unknown>;
    } catch {
      return body;
    }
    if (!json || typeof json !== "object") return body;
  }
  if (json.model === deployment) return body;
  return encoder.encode(JSON.stringify({ ...json, model: deployment }));
}

/** A path that is not a model API goes to the backend as the client wrote it. */
export function passThrough(input: TargetInput): UpstreamTarget {
  return { url: input.baseUrl + input.url.pathname + input.url.search, body: input.body };
}

/**
 * OpenAI's layout (`/v1/{operation}`, the model in the body), also Anthropic's. An Azure
 * client's `api-version` means nothing there, so it is dropped.
 */
export function v1Target(input: TargetInput): UpstreamTarget {
  const { baseUrl, cls, url, body, deployment } = input;
  if (cls.operation === undefined) return passThrough(input);
  checkDeployment(deployment);
  let search = url.search;
  if (cls.azurePath) {
    const params = new URLSearchParams(search);
    params.delete("api-version");
    search = params.size ? `?${params}` : "";
  }
  return { url: `${baseUrl}/v1/${cls.operation}${search}`, body: bodyWithModel(body, cls, deployment) };
}
