import type { Classified } from "../classify.ts";
import type { SluiceConfig } from "../config/schema.ts";
import { retryAfterHeaders } from "../http/errors.ts";
import { budgetHeaders, MAX_RETRY_AFTER_MS, tokenCapacity, type Admission, type LimitScope, type RateLimiter } from "../governance/limits.ts";
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

/** A token count as a finite whole number ≥ 0 (an absurd `max_tokens` such as 1e999 parses to Infinity). */
function wholeTokens(n: number): number {
  if (!(n > 0)) return 0;
  return n >= Number.MAX_SAFE_INTEGER ? Number.MAX_SAFE_INTEGER : Math.ceil(n);
}

const encoder = new TextEncoder();

/**
 * The prompt part of a request's estimate: `cost` less the completion budget. Beyond 2^53 that
 * difference has lost the prompt's digits (and Infinity − Infinity is NaN): the prompt is then
 * estimated again the way the classifier does, one token per four bytes of the (re-encoded) body.
 */
export function promptEstimate(cls: Pick<Classified, "cost" | "completionBudget" | "json">): number {
  const { cost, completionBudget } = cls;
  if (Number.isFinite(cost) && Number.isFinite(completionBudget) && cost <= Number.MAX_SAFE_INTEGER) {
    return wholeTokens(Math.round(cost - completionBudget));
  }
  const body = cls.json === undefined ? "" : JSON.stringify(cls.json);
  return Math.max(1, Math.ceil(encoder.encode(body).byteLength / 4));
}

/**
 * What to reserve for a request against budgets whose smallest token capacity is `capacity`:
 * its prompt estimate and completion budget, the completion capped so that the whole fits the
 * capacity (it is then admitted once the budget is full again, never refused for ever);
 * `fits: false` when the prompt alone exceeds it.
 */
export function reservationFor(cls: Pick<Classified, "cost" | "completionBudget" | "json">, capacity: number | undefined): { prompt: number; tokens: number; fits: boolean } {
  const prompt = promptEstimate(cls);
  const completion = wholeTokens(cls.completionBudget);
  const asked = Math.min(Number.MAX_SAFE_INTEGER, prompt + completion);
  if (capacity === undefined) return { prompt, tokens: asked, fits: true };
  const room = Math.floor(capacity);
  return { prompt, tokens: Math.min(asked, room), fits: prompt <= room };
}

/** A refusal's wait as a whole number of ms in [1, MAX_RETRY_AFTER_MS], whatever a limiter said. */
function retryMs(ms: number): number {
  if (!(ms >= 1)) return 1;
  return ms >= MAX_RETRY_AFTER_MS ? MAX_RETRY_AFTER_MS : Math.ceil(ms);
}

/** The 429 (or 503) for a limiter's refusal: it names the limit, and its headers agree with it. */
function refusal(admission: Extract<Admission, { ok: false }>, tokens: number): Refusal {
  const wait = retryMs(admission.retryAfterMs);
  const headers = { ...budgetHeaders(admission.view), ...retryAfterHeaders(wait) };
  const seconds = Math.ceil(wait / 1000);
  const v = admission.view;
  switch (admission.limit) {
    case "tokens":
      return {
        status: 429,
        code: "rate_limit_exceeded",
        message:
          `rate limit reached on tokens per minute: this caller's limit is ${v.limitTokens ?? "?"} tokens per minute, ` +
          `${v.remainingTokens ?? "?"} are left and this request reserves ${tokens}; retry after ${seconds} s`,
        headers,
      };
    case "requests":
      return {
        status: 429,
        code: "rate_limit_exceeded",
        message: `rate limit reached on requests per minute: this caller's limit is ${v.limitRequests ?? "?"} requests per minute, none is left; retry after ${seconds} s`,
        headers,
      };
    default:
      // No limit decided: the limiter could not (an overloaded Durable Object). A gateway-side condition, not the caller's budget.
      return { status: 503, code: "limiter_overloaded", message: `the gateway's budget store is overloaded and could not admit this request; retry after ${seconds} s`, headers };
  }
}

/**
 * The admit step: may this caller have this model, does any backend serve it at this priority,
 * is the TTL still ahead, and does the caller's budget hold the estimate — reserved now and
 * held by the exchange, which settles it.
 *
 * The estimate reserved is the prompt estimate plus the completion budget, the completion capped
 * so that the reservation never exceeds the smallest token budget: a request without `max_tokens`
 * (256 by default) under a budget of 200 is admitted, not refused for ever.
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
  const capacity = tokenCapacity(scopes);
  const r = reservationFor(cls, capacity);
  const admission = r.fits ? await ctx.limiter.reserve(scopes, r.tokens) : undefined;
  if (admission === undefined || (!admission.ok && admission.never)) {
    // 413, not 429: no wait would ever let this request in, and SDKs retry a 429 (OpenAI's and
    // Anthropic's retry 408, 409, 429 and 5xx) — a Retry-After here would be one that cannot
    // succeed. 413 (RFC 9110 §15.5.14: content larger than the server is willing to process) is
    // what it is, is not retried, and is Anthropic's `request_too_large`. No Retry-After, no
    // budget taken (nor a request counted); the request never reaches a backend.
    // (A limiter answering `never` to a capped reservation holds a smaller budget than the config: the same answer.)
    const what = admission === undefined ? `prompt estimate of ${r.prompt} tokens` : `reservation of ${r.tokens} tokens (prompt estimate ${r.prompt})`;
    return {
      status: 413,
      code: "prompt_exceeds_token_limit",
      message:
        `this request's ${what} exceeds the caller's whole limit of ${admission?.view.limitTokens ?? capacity} tokens per minute: ` +
        `it can never be admitted, and retrying will not help; shorten the prompt or ask for a higher limit`,
    };
  }
  if (!admission.ok) return refusal(admission, r.tokens);
  ex.reserved(admission.reservation);
  return { eligible, budget: budgetHeaders(admission.view) };
}
