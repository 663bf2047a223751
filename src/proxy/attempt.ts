export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export type AttemptOutcome =
  | { kind: "response"; response: Response; ttfbMs: number; detach: () => void }
  | { kind: "timeout"; ms: number }
  | { kind: "network"; error: string; ms: number }
  | { kind: "client-gone" };

const TIMEOUT = "sluice-attempt-timeout";

/**
 * One request to one backend. The timeout covers the wait for response headers only (a long
 * stream is not cut); the client's disconnect aborts the upstream request at any time until
 * `detach()` is called when the body has been relayed.
 */
export async function sendAttempt(
  fetchFn: FetchLike,
  url: string,
  init: { method: string; headers: Headers; body: BodyInit | null },
  timeoutMs: number,
  clientSignal: AbortSignal | undefined,
  now: () => number,
): Promise<AttemptOutcome> {
  const started = now();
  if (clientSignal?.aborted) return { kind: "client-gone" };
  const controller = new AbortController();
  const onClientAbort = () => controller.abort(clientSignal?.reason);
  clientSignal?.addEventListener("abort", onClientAbort);
  const detach = () => clientSignal?.removeEventListener("abort", onClientAbort);
  const timer = setTimeout(() => controller.abort(TIMEOUT), timeoutMs);
  try {
    const response = await fetchFn(url, { ...init, signal: controller.signal, redirect: "manual" });
    return { kind: "response", response, ttfbMs: now() - started, detach };
  } catch (err) {
    detach();
    if (controller.signal.reason === TIMEOUT) return { kind: "timeout", ms: now() - started };
    if (clientSignal?.aborted) return { kind: "client-gone" };
    return { kind: "network", error: describe(err), ms: now() - started };
  } finally {
    clearTimeout(timer);
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as Error & { cause?: unknown }).cause;
    const detail = cause instanceof Error ? `: ${(cause as Error & { code?: string }).code ?? cause.message}` : "";
    return `${err.message}${detail}`;
  }
  return String(err);
}
