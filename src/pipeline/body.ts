import type { BodyBytes } from "../types.ts";

/** The request body is larger than `server.maxBodyBytes`: 413, nothing sent. */
export class BodyTooLarge extends Error {
  constructor(readonly limit: number) {
    super(`the request body is larger than the gateway's limit of ${limit} bytes`);
    this.name = "BodyTooLarge";
  }
}

/** Refuses at once a body whose declared length is over the limit. */
export function checkDeclaredLength(headers: Headers, limit: number): void {
  const declared = headers.get("content-length");
  if (declared !== null && Number(declared) > limit) throw new BodyTooLarge(limit);
}

/**
 * The body, read from the Web stream and held only up to `limit` bytes: past it the stream is
 * cancelled and BodyTooLarge thrown, so an oversized body is never buffered whole.
 */
export async function readBodyWithin(request: Request, limit: number): Promise<BodyBytes> {
  checkDeclaredLength(request.headers, limit);
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    length += value.byteLength;
    if (length > limit) {
      reader.cancel().catch(() => undefined);
      throw new BodyTooLarge(limit);
    }
    chunks.push(value);
  }
  if (chunks.length === 1 && chunks[0]!.byteOffset === 0 && chunks[0]!.buffer instanceof ArrayBuffer) return chunks[0] as BodyBytes;
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}
