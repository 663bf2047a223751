import type { Classified } from "../classify.ts";
import type { SluiceConfig } from "../config/schema.ts";
import type { AttemptRecord } from "../http/errors.ts";
import { discardBody, sendAttempt, UpstreamIdle, type UpstreamFetch, type UpstreamResponse } from "../proxy/attempt.ts";
import { IdleReader } from "../proxy/idle-watch.ts";
import type { Backend } from "../routing/backend.ts";
import type { QueuePlace, Scheduler, SlotDecision } from "../scheduling/port.ts";
import type { ClientSignal } from "../types.ts";
import type { Exchange } from "./exchange.ts";
import { attemptHeaders, type Plan } from "./plan.ts";

export interface ExecuteContext {
  config: SluiceConfig;
  scheduler: Scheduler;
  upstream: UpstreamFetch;
  now: () => number;
}

export interface ExecuteInput {
  method: string;
  cls: Classified;
  plan: Plan;
  deadline: number;
  signal: ClientSignal | undefined;
}

/** How the attempt loop ended. */
export type Executed =
  /**
   * A backend answered with something to pass on; the exchange still holds its lease. A body
   * that streams comes as its reader and its first read, taken within the idle timeout.
   */
  | { kind: "answer"; upstream: UpstreamResponse; backend: Backend; ttfbMs: number; attempts: AttemptRecord[]; body?: { reader: IdleReader; first: ReadableStreamReadResult<Uint8Array> } }
  /** No backend answered: the scheduler's verdict, or every attempt failed. */
  | { kind: "exhausted"; decision: Exclude<SlotDecision, { kind: "granted" | "cancelled" }> | { kind: "tried-all"; retryAfterMs?: number }; attempts: AttemptRecord[] }
  /** The client went away. */
  | { kind: "client-gone"; attempts: AttemptRecord[] };

const POLICY_CYCLE = "x-policycyclecounter";
/** Error bodies read for a retry hint are this small or not read at all. */
const HINT_BODY_MAX = 16 * 1024;
const decoder = new TextDecoder();

/**
 * The execute step: wait for a lease from the scheduler, send, and on a failover outcome ask
 * at once for a lease on the next backend — never sleeping in between. A 429 with
 * `S7PREQUEUE: true` sends the request back to the queue in its old place until the backend's
 * cooldown ends. A 401 from a backend whose credentials can be refreshed is retried once on the
 * same backend with fresh ones. Every lease is taken and given back through the exchange.
 */
export async function execute(ctx: ExecuteContext, ex: Exchange, input: ExecuteInput): Promise<Executed> {
  const { config, scheduler, now } = ctx;
  const { cls, plan } = input;
  const res = config.resilience;
  const attempts: AttemptRecord[] = [];
  const tried: string[] = [];
  let budget = res.maxAttempts ?? plan.eligible.length;
  let requeues = 0;
  let place: QueuePlace | undefined;
  let notBefore: number | undefined;
  let policyCycle: string | null = null;
  /** Earliest cooldown end this request's attempts caused: the Retry-After of an all-429 answer. */
  let earliestCooldown = Number.POSITIVE_INFINITY;

  /** Every attempt of this round put its backend in cooldown (so waiting for the earliest end can succeed). */
  let roundCooling = true;

  for (;;) {
    if (budget <= 0) {
      // Every eligible backend throttled this request (CONTRACT §4): back to the queue in its place until the earliest cooldown ends, within its TTL.
      if (!roundCooling || !attempts.length || earliestCooldown >= input.deadline || requeues >= config.scheduling.maxRequeues) break;
      requeues++;
      tried.length = 0;
      budget = res.maxAttempts ?? plan.eligible.length;
      // No not-before of its own: the cooldowns keep every backend from it, and it waits in its place, woken at the earliest end.
      notBefore = undefined;
      earliestCooldown = Number.POSITIVE_INFINITY;
      roundCooling = true;
    }
    const decision = await scheduler.acquire(
      { id: ex.requestId, priority: cls.priority, caller: ex.caller, cost: cls.cost, deadline: input.deadline, eligible: plan.eligible, tried, affinity: plan.affinity, place, notBefore },
      input.signal,
    );
    if (decision.kind === "cancelled") return { kind: "client-gone", attempts };
    if (decision.kind !== "queue-full") ex.queueMs += decision.queuedMs;
    if (decision.kind !== "granted") return { kind: "exhausted", decision, attempts };
    ex.leased(decision.backend);
    place = decision.place;
    notBefore = undefined;
    const target = plan.targets.get(decision.backend);
    if (!target) {
      // A backend this request's config version does not have (a shared queue on a newer version): not for this request.
      ex.endAttempt({ verdict: "abandoned" });
      tried.push(decision.backend);
      budget--;
      continue;
    }
    const backend = target.backend;

    /** The attempt failed without an answer to pass on: its backend is not tried again for this request. */
    const failed = (a: { status: number; error: string; ms: number }, verdict: "failure" | "abandoned" = "failure") => {
      ex.endAttempt({ verdict });
      roundCooling = false;
      attempts.push({ backend: backend.name, ...a });
      tried.push(backend.name);
      budget--;
    };
    const pending = backend.credentials.ready();
    if (pending) {
      const waitedFrom = now();
      try {
        await pending;
      } catch (err) {
        // No credentials for it now (a token that cannot be fetched; the wait is bounded): fail
        // over like a connection error. Not the backend's fault, so its breaker is not told.
        failed({ status: 502, error: `no credentials for the backend: ${(err as Error).message}`, ms: now() - waitedFrom }, "abandoned");
        continue;
      }
    }
    const send = () =>
      sendAttempt(
        ctx.upstream,
        target.url,
        { method: input.method, headers: attemptHeaders(plan, target, cls.priority, ex.requestId, policyCycle), body: target.body, signal: input.signal, timeoutMs: backend.timeoutMs, idleTimeoutMs: backend.idleTimeoutMs },
        now,
      );
    let outcome = await send();
    if (outcome.kind === "response" && outcome.response.status === 401 && (await backend.credentials.refresh())) {
      // Credentials that were refused may be stale: one more try with fresh ones, same backend, same lease.
      discardBody(outcome.response);
      outcome = await send();
    }

    if (outcome.kind === "client-gone") {
      ex.backend = backend.name;
      return { kind: "client-gone", attempts };
    }
    if (outcome.kind === "timeout" || outcome.kind === "network") {
      failed(outcome.kind === "timeout" ? { status: 504, error: `timed out after ${outcome.ms} ms waiting for ${outcome.waitingFor === "headers" ? "headers" : "a body byte"}`, ms: outcome.ms } : { status: 502, error: outcome.error, ms: outcome.ms });
      continue;
    }

    const upstream = outcome.response;
    const status = upstream.status;
    if (!res.failoverOn.includes(status)) {
      if ((!upstream.body && !upstream.reader) || upstream.wholeBody) return { kind: "answer", upstream, backend, ttfbMs: outcome.ttfbMs, attempts };
      // Nothing is relayed before the first body byte: a backend silent after its headers (or
      // reset before a byte) is failed over like a timeout, and the client never saw it.
      const reader = new IdleReader(upstream.reader ?? upstream.body!.getReader(), backend.idleTimeoutMs, now);
      const sentAt = now();
      try {
        const first = await reader.read();
        return { kind: "answer", upstream, backend, ttfbMs: outcome.ttfbMs, attempts, body: { reader, first } };
      } catch (err) {
        reader.cancel().catch(() => undefined);
        if (input.signal?.aborted) {
          ex.backend = backend.name;
          return { kind: "client-gone", attempts };
        }
        const ms = outcome.ttfbMs + now() - sentAt;
        failed(err instanceof UpstreamIdle ? { status: 504, error: `no body byte within ${backend.idleTimeoutMs} ms after the headers`, ms } : { status: 502, error: `the body failed before its first byte: ${(err as Error).message}`, ms });
        continue;
      }
    }

    const hint = upstream.wholeBody && upstream.wholeBody.byteLength <= HINT_BODY_MAX ? decoder.decode(upstream.wholeBody) : undefined;
    discardBody(upstream);
    const at = now();
    const cooldownUntil = res.cooldownOn.includes(status) ? at + (backend.protocol.retryAfterMs(upstream.headers, at, hint) ?? res.defaultCooldownMs) : undefined;
    // A throttle says nothing about the backend's health; errors and timeouts do.
    ex.endAttempt({ verdict: status === 429 ? "throttled" : "failure", cooldownUntil });
    if (cooldownUntil !== undefined) earliestCooldown = Math.min(earliestCooldown, cooldownUntil);
    else roundCooling = false;
    attempts.push({ backend: backend.name, status, ms: outcome.ttfbMs });
    policyCycle = upstream.headers.get(POLICY_CYCLE) ?? policyCycle;
    if (status === 429 && upstream.headers.get("s7prequeue")?.toLowerCase() === "true" && requeues < config.scheduling.maxRequeues) {
      // Back to the queue in its old place, every backend allowed again, not before the cooldown ends.
      requeues++;
      tried.length = 0;
      budget = res.maxAttempts ?? plan.eligible.length;
      notBefore = cooldownUntil;
      roundCooling = true;
      continue;
    }
    tried.push(backend.name);
    budget--;
  }

  const wait = earliestCooldown - now();
  return { kind: "exhausted", decision: { kind: "tried-all", retryAfterMs: Number.isFinite(wait) ? Math.max(0, wait) : undefined }, attempts };
}
