import type { Classified } from "../classify.ts";
import { upstreamRequestHeaders } from "../http/headers.ts";
import type { Backend } from "../routing/backend.ts";
import type { BackendPool } from "../routing/pool.ts";
import type { BodyBytes, HeaderPairs, HeaderSource } from "../types.ts";

/** One backend the request may be sent to, with what it would be sent. */
export interface PlannedTarget {
  readonly backend: Backend;
  readonly url: string;
  readonly body: BodyBytes | null;
}

/** Which backends may take the request, in what order, and what each would be sent. */
export interface Plan {
  /** Backend names serving the model at the request's priority, lowest group first. */
  readonly eligible: readonly string[];
  /** Where each eligible backend would be sent the request. */
  readonly targets: ReadonlyMap<string, PlannedTarget>;
  /** The client's headers as every backend gets them (credentials are added per attempt). */
  readonly headers: HeaderPairs;
  /** The backend the client asked to stick to (x-backend-affinity), when affinity is on. */
  readonly affinity: string | undefined;
}

export interface PlanInput {
  cls: Classified;
  eligible: readonly string[];
  url: URL;
  /** The body to send: the client's bytes, or the gateway's include_usage rewrite. */
  body: BodyBytes | null;
  /** The JSON of `body` (the rewrite's, when there is one). */
  json: Readonly<Record<string, unknown>> | undefined;
  clientHeaders: HeaderSource;
  stripHeaders: ReadonlySet<string> | undefined;
  addHeaders: HeaderPairs | undefined;
  affinity: string | undefined;
}

/**
 * The plan step: pure. Everything about what would be sent is decided here, before a lease is
 * taken, so that a request no backend can be sent (a name that cannot be encoded in a URL)
 * is refused with nothing held. Throws BadRequest for such input.
 */
export function plan(pool: BackendPool, input: PlanInput): Plan {
  const cls = input.json === input.cls.json ? input.cls : { ...input.cls, json: input.json };
  const targets = new Map<string, PlannedTarget>();
  for (const name of input.eligible) {
    const backend = pool.byName(name)!;
    const t = backend.protocol.target({
      baseUrl: backend.baseUrl,
      deployment: backend.deploymentFor(cls.model) ?? "",
      apiVersion: backend.config.apiVersion,
      cls,
      url: input.url,
      body: input.body,
    });
    targets.set(name, { backend, url: t.url, body: t.body });
  }
  const headers = upstreamRequestHeaders(input.clientHeaders, input.stripHeaders);
  if (input.addHeaders) for (const h of input.addHeaders) headers.push(h);
  return { eligible: input.eligible, targets, headers, affinity: input.affinity };
}

/** The headers of one attempt: the plan's, the backend's credentials and kind headers, the policy cycle. */
export function attemptHeaders(p: Plan, target: PlannedTarget, priority: number, requestId: string, policyCycle: string | null): HeaderPairs {
  const headers = p.headers.slice();
  target.backend.credentials.apply(headers);
  target.backend.protocol.requestHeaders(priority, headers);
  headers.push(["x-request-id", requestId]);
  if (policyCycle !== null) headers.push(["x-policycyclecounter", policyCycle]);
  return headers;
}
