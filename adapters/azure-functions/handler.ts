import functions, { type HttpRequest, type HttpResponse as FunctionsHttpResponse, type HttpResponseInit, type InvocationContext } from "@azure/functions";
import type { Gateway } from "../../src/gateway.ts";

// The package is CommonJS, and Node's ESM loader finds `app` among its named exports but not its
// classes: they come from the default export (module.exports).
const { HttpResponse } = functions;

/**
 * Response headers whose Set-Cookie values come out of `entries()` as one entry, a list.
 *
 * With HTTP streaming, @azure/functions writes a response's headers with one
 * `setHeader(name, value)` per entry of `headers.entries()` (sendProxyResponse in its
 * src/http/httpProxy.ts). A Headers object yields every Set-Cookie as an entry of its own, so
 * each would replace the one before and only the last would reach the client. Given the list,
 * setHeader writes one Set-Cookie line per cookie, each as the backend sent it. (The package's
 * own `cookies` would re-encode values and drop attributes it does not know.)
 */
class CookieListHeaders extends Headers {
  override entries(): ReturnType<Headers["entries"]> {
    const cookies = this.getSetCookie();
    const out: [string, string | string[]][] = [];
    let listed = false;
    for (const [name, value] of super.entries()) {
      if (name !== "set-cookie") out.push([name, value]);
      else if (!listed) {
        out.push([name, cookies]);
        listed = true;
      }
    }
    return out[Symbol.iterator]() as unknown as ReturnType<Headers["entries"]>;
  }

  override [Symbol.iterator](): ReturnType<Headers["entries"]> {
    return this.entries();
  }
}

/** An HttpResponse whose headers keep several Set-Cookie values apart (see CookieListHeaders). */
class ResponseWithCookies extends HttpResponse {
  override readonly headers: Headers;

  constructor(init: HttpResponseInit, headers: Headers) {
    super(init);
    this.headers = new CookieListHeaders(headers);
  }
}

/**
 * Turns the Functions request into a Web Request for the core and the core's Response back,
 * body as a stream (the app runs with HTTP streaming enabled), so nothing is buffered.
 */
export function createFunctionsHandler(gateway: Gateway) {
  return async (req: HttpRequest, _context?: InvocationContext): Promise<HttpResponseInit | FunctionsHttpResponse> => {
    const hasBody = req.method !== "GET" && req.method !== "HEAD" && req.body !== null;
    const request = new Request(req.url, {
      method: req.method,
      headers: req.headers as unknown as Headers,
      body: hasBody ? (req.body as ReadableStream<Uint8Array>) : null,
      duplex: "half",
    } as RequestInit);
    const response = await gateway.fetch(request);
    const init: HttpResponseInit = { status: response.status, headers: response.headers as unknown as HttpResponseInit["headers"], body: response.body as HttpResponseInit["body"] };
    return response.headers.getSetCookie().length > 1 ? new ResponseWithCookies(init, response.headers) : init;
  };
}
