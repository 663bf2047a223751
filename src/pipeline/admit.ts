import type { Classified } from "../classify.ts";
import type { SluiceConfig } from "../config/schema.ts";
import { retryAfterHeaders } from "../http/errors.ts";
import { budgetHeaders, type LimitScope, type RateLimiter } from "../governance/limits.ts";
import { modelAllowed, type Identity } from "../governance/identity.ts";
import type { BackendPool } from "../routing/pool.ts";
import type { Exchange } from "./exchange.ts";
import type { Refusal } from "./respond.ts";

export interface Admitted {
  /** Backend names serving the model at the request's priority, lowest group first. */
  eligible: readonly string[];
  /** The caller's remaining budget, for every answer. */
  budget: Record<string, string> | undefined;
}

/** The budgets a caller counts against: its profile's, its own entry, else every caller's. */
export function limitScopes(identity: Identity, config: SluiceConfig): LimitScope[] {
  const spec = identity.profile?.limits ?? config.limits.callers[identity.caller] ?? config.limits.perCaller;
  return spec ? [{ key: `caller:${identity.caller}`, spec }] : [];
}

/**
 * The admit step: may this caller have this model, does any backend serve it at this priority,
 * is the TTL still ahead, and does the caller's budget hold the estimate — reserved now and
 * held by the exchange, which settles it.
 */
export async function admit(
  ctx: { config: SluiceConfig; pool: BackendPool; limiter: RateLimiter; now: () => number },
  ex: Exchange,
  cls: Classified,
  identity: Identity,
  deadline: number,
): Promise<Admitted | Refusal> {
  if (!modelAllowed(identity.profile?.models, cls.model)) {
    return { status: 403, code: "model_not_allowed", message: `this caller may not use the model "${cls.model ?? ""}"` };
  }
  const { modelKnown, names: eligible } = ctx.pool.eligible(cls.model, cls.priority);
  if (!modelKnown) {
    return cls.model === undefined
      ? { status: 404, code: "not_found", message: "no backend serves this path (it names no model, and no backend is configured with passThrough)" }
      : { status: 404, code: "model_not_found", message: `the model "${cls.model}" is not served by this gateway` };
  }
  if (!eligible.length) return { status: 503, code: "no_eligible_backend", message: `no backend serves "${cls.model}" at priority ${cls.priority}` };
  if (deadline <= ctx.now()) return { status: 412, code: "ttl_expired", message: "the request's TTL had passed when it arrived; it was not sent" };
  const scopes = limitScopes(identity, ctx.config);
  if (!scopes.length) return { eligible, budget: undefined };
  const admission = await ctx.limiter.reserve(scopes, cls.cost);
  if (!admission.ok) {
    return {
      status: 429,
      code: "rate_limit_exceeded",
      message: `this request's estimate of ${cls.cost} tokens exceeds the caller's remaining budget; retry after the indicated time`,
      headers: { ...budgetHeaders(admission.view), ...retryAfterHeaders(admission.retryAfterMs) },
    };
  }
  ex.reserved(admission.reservation);
  return { eligible, budget: budgetHeaders(admission.view) };
}
