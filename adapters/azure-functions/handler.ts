import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import type { Gateway } from "../../src/gateway.ts";

/**
 * Turns the Functions request into a Web Request for the core and the core's Response back,
 * body as a stream (the app runs with HTTP streaming enabled), so nothing is buffered.
 */
export function createFunctionsHandler(gateway: Gateway) {
  return async (req: HttpRequest, _context?: InvocationContext): Promise<HttpResponseInit> => {
    const hasBody = req.method !== "GET" && req.method !== "HEAD" && req.body !== null;
    const request = new Request(req.url, {
      method: req.method,
      headers: req.headers as unknown as Headers,
      body: hasBody ? (req.body as ReadableStream<Uint8Array>) : null,
      duplex: "half",
    } as RequestInit);
    const response = await gateway.fetch(request);
    return { status: response.status, headers: response.headers as unknown as HttpResponseInit["headers"], body: response.body as HttpResponseInit["body"] };
  };
}
