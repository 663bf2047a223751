import { BadRequest } from "../classify.ts";

/** What a request asks of the async handoff. */
export interface AsyncPreference {
  /** Try for a synchronous answer this long first (`wait=N`); 0: hand off at once. */
  waitMs: number;
}

/** RFC 7240 preferences: `token [= word] *( ";" param )`, comma separated. */
const TOKEN = "[A-Za-z0-9!#$%&'*+.^_`|~-]+";
const WORD = '(?:"(?:[^"\\\\]|\\\\.)*"|' + TOKEN + ")";
const PREFERENCE = new RegExp(`^\\s*(${TOKEN})\\s*(?:=\\s*(${WORD}))?\\s*((?:;\\s*${TOKEN}\\s*(?:=\\s*${WORD})?\\s*)*)$`);
const MAX_PREFER = 1024;

/**
 * The async preference of a request: `Prefer: respond-async` (optionally `wait=N` seconds) or
 * SimpleL7Proxy's `S7PAsyncMode: true`; undefined when it asks for none. A Prefer header that
 * is not a list of RFC 7240 preferences, or a `wait` that is not whole seconds, is 400; other
 * preferences are ignored, as RFC 7240 lets a server do.
 */
export function asyncPreference(headers: Headers, maxWaitSeconds: number): AsyncPreference | undefined {
  const mode = headers.get("s7pasyncmode");
  let wanted = false;
  if (mode !== null) {
    const m = mode.trim().toLowerCase();
    if (m === "true") wanted = true;
    else if (m !== "false") throw new BadRequest(`S7PAsyncMode "${mode.slice(0, 64)}" is not true or false`, "invalid_async_mode");
  }
  const prefer = headers.get("prefer");
  let waitSeconds: number | undefined;
  if (prefer !== null) {
    if (prefer.length > MAX_PREFER) throw new BadRequest(`the Prefer header is longer than ${MAX_PREFER} characters`, "invalid_prefer");
    for (const part of prefer.split(",")) {
      if (!part.trim()) continue;
      const m = PREFERENCE.exec(part);
      if (!m) throw new BadRequest(`the Prefer header "${prefer.slice(0, 128)}" is not a list of preferences (RFC 7240)`, "invalid_prefer");
      const name = m[1]!.toLowerCase();
      if (name === "respond-async") wanted = true;
      else if (name === "wait") {
        const v = m[2]?.replace(/^"|"$/g, "") ?? "";
        if (!/^\d{1,6}$/.test(v)) throw new BadRequest(`Prefer: wait=${v.slice(0, 32)} is not whole seconds`, "invalid_prefer");
        waitSeconds = Number(v);
      }
    }
  }
  if (!wanted) return undefined;
  return { waitMs: Math.min(waitSeconds ?? 0, maxWaitSeconds) * 1000 };
}
