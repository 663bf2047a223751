import { BadRequest } from "../classify.ts";

/** A `.` or `..` segment, plain or percent-encoded: URL parsing would resolve it, moving the request elsewhere. */
const DOT_SEGMENT = /(?:^|\/)(?:\.|%2e){1,2}(?:\/|$)/i;
/** A `%` not followed by two hex digits. */
const BAD_ESCAPE = /%(?![0-9a-f]{2})/i;

/**
 * The request target as the client sent it (before URL parsing resolved dot segments), checked:
 * dot segments and bad percent-encoding (a lone `%`, a truncated or invalid UTF-8 sequence) are
 * 400, so no path is ever rewritten into another one on its way to a backend.
 */
export function checkPath(target: string): void {
  const q = target.indexOf("?");
  const path = q < 0 ? target : target.slice(0, q);
  if (DOT_SEGMENT.test(path)) throw new BadRequest("the path holds a '.' or '..' segment", "invalid_path");
  if (!path.includes("%")) return;
  if (BAD_ESCAPE.test(path)) throw new BadRequest("the path holds a '%' that is not a percent-encoded byte", "invalid_path");
  try {
    decodeURIComponent(path);
  } catch {
    throw new BadRequest("the path's percent-encoding is not valid UTF-8", "invalid_path");
  }
}

/** Query parameters that carry credentials: never forwarded (and never accepted as the caller's credential). */
const QUERY_CREDENTIALS = ["api-key", "api_key", "apikey", "key", "subscription-key", "ocp-apim-subscription-key", "access_token", "code", "sig"];

/** Removes credentials from the query string in place; true when there were any. */
export function stripQueryCredentials(url: URL): boolean {
  if (!url.search) return false;
  let found = false;
  for (const name of QUERY_CREDENTIALS) {
    if (url.searchParams.has(name)) {
      url.searchParams.delete(name);
      found = true;
    }
  }
  return found;
}
