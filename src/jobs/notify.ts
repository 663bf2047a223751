import type { WebhookConfig } from "../config/schema.ts";
import { later } from "../timers.ts";

const encoder = new TextEncoder();

/** Hex of HMAC-SHA256(secret, `${timestamp}.${body}`): a receiver recomputes it to trust the POST, and rejects old timestamps to refuse replays. */
export async function webhookSignature(secret: string, timestamp: string, body: string): Promise<string> {
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(`${timestamp}.${body}`)));
  let hex = "";
  for (const b of mac) hex += b.toString(16).padStart(2, "0");
  return hex;
}

/** Each delivery may take this long before it counts as failed. */
const DELIVERY_TIMEOUT_MS = 10_000;
/** The longest wait between deliveries, however many have failed. */
const MAX_BACKOFF_MS = 15 * 60_000;

export interface WebhookDelivery {
  /** The job's id: the receiver's idempotency key (a redelivery after a restart repeats it). */
  id: string;
  body: string;
}

/**
 * POSTs the final status of a job, signed, until a 2xx answer or `maxAttempts` deliveries,
 * waiting `backoffMs` (doubled each time, with jitter, capped at 15 min) in between. Resolves
 * true when delivered. Never throws: a webhook that cannot be reached is logged, not fatal.
 */
export async function deliverWebhook(hook: WebhookConfig, d: WebhookDelivery, fetcher: typeof fetch = fetch, random: () => number = Math.random): Promise<boolean> {
  for (let attempt = 1; attempt <= hook.maxAttempts; attempt++) {
    const timestamp = String(Math.floor(Date.now() / 1000));
    let outcome: string;
    try {
      const signature = await webhookSignature(hook.secret, timestamp, d.body);
      const res = await fetcher(hook.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-sluice-event": "job.finished",
          "x-sluice-job-id": d.id,
          "x-sluice-timestamp": timestamp,
          "x-sluice-signature": `sha256=${signature}`,
          "x-sluice-delivery-attempt": String(attempt),
        },
        body: d.body,
        signal: AbortSignal.timeout(DELIVERY_TIMEOUT_MS),
      });
      await res.body?.cancel().catch(() => undefined);
      if (res.ok) return true;
      outcome = `HTTP ${res.status}`;
    } catch (err) {
      outcome = (err as Error).message;
    }
    if (attempt === hook.maxAttempts) {
      console.error(`sluice: job ${d.id}: webhook ${hook.url} not delivered after ${attempt} attempt(s) (${outcome}); giving up`);
      return false;
    }
    const wait = Math.min(MAX_BACKOFF_MS, hook.backoffMs * 2 ** (attempt - 1)) * (0.75 + random() * 0.5);
    console.error(`sluice: job ${d.id}: webhook delivery ${attempt} failed (${outcome}); again in ${Math.round(wait)} ms`);
    await new Promise<void>((resolve) => later(resolve, wait));
  }
  return false;
}
