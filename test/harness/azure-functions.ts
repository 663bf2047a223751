/**
 * The gateway on Azure Functions, started through adapters/azure-functions/main.ts and the real
 * `@azure/functions` package, the way a Functions worker runs it, with the Functions host played
 * by a small node:http server.
 *
 * Without a host, `@azure/functions` keeps nothing: `app.http()` only warns that the package is
 * "in test mode" (src/app.ts lines 39-49 and 189-202) because `require('@azure/functions-core')`
 * fails (src/utils/tryGetCoreApiLazy.ts lines 7-17). That module is provided at run time by the Node.js
 * language worker, which intercepts `Module.prototype.require` (azure-functions-nodejs-worker,
 * src/setupCoreModule.ts). So the harness does what the worker does:
 *
 * - intercepts `require('@azure/functions-core')` with a core API of its own, loads a fresh
 *   instance of the package and a fresh instance of main.ts (its imports of `@azure/functions`
 *   answered with that instance), with SLUICE_CONFIG set to the config: `app.setup()`,
 *   `app.http()` and `app.hook.appTerminate()` run as on Azure, and the package hands the core
 *   API its ProgrammingModel (`setProgrammingModel`), the function's metadata and handler
 *   (`registerFunction`) and the hooks (`registerHook`);
 * - asks the ProgrammingModel for its capabilities, as the worker does after loading the app
 *   (worker src/eventHandlers/getWorkerCapabilities.ts). With `enableHttpStream` that starts the
 *   package's own HTTP proxy server and returns its address as `HttpUri` (src/ProgrammingModel.ts
 *   lines 19-30, src/http/httpProxy.ts `setupHttpProxy`, lines 122-171);
 * - for each client request, does what the host does for a streaming HTTP trigger: forwards the
 *   request (body streamed) to `HttpUri` with `x-ms-invocation-id`, `x-forwarded-host` and
 *   `x-forwarded-proto` (the host's YARP forwarder, azure-functions-host
 *   src/WebJobs.Script/Http/DefaultHttpProxyService.cs), and sends the invocation with the
 *   request's headers and route parameters as trigger metadata; the worker part then runs the
 *   package's InvocationModel as the worker's InvocationHandler does: `getArguments()` (which
 *   waits for the forwarded request and builds the HttpRequest with `createStreamRequest`,
 *   src/InvocationModel.ts lines 81-84, src/http/HttpRequest.ts lines 341-390),
 *   `invokeFunction()` (the registered handler) and `getResponse()` (which writes the returned
 *   HttpResponseInit to the forwarded request's response with `sendProxyResponse`,
 *   src/converters/toRpcHttp.ts lines 221-226, src/http/httpProxy.ts lines 52-74). The host
 *   streams that response back to the client as it comes.
 *
 * So every conversion between Node's HTTP messages and HttpRequest / HttpResponse is the
 * package's own code, not a copy of it; none of that code is exported, the ProgrammingModel is
 * the only way to it. (Line numbers: node_modules/@azure/functions/src, version 4.16.5.)
 *
 * A client leaving: the host's forwarder cancels the forwarded request, which closes its
 * connection to the package's proxy; that is all the shim does. What the package does then is
 * nothing: its proxy listens to neither the request's nor the response's `close`, the Request
 * it builds has no signal, the invocation has no cancellation (the worker leaves
 * `invocationCancel` unimplemented), and `sendProxyResponse` goes on reading the handler's body
 * to its end, its writes to the closed response dropped.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import type * as NodeHttp from "node:http";
import Module, { createRequire } from "node:module";
import { vi } from "vitest";
import type { SluiceConfigInput } from "../../src/config/schema.ts";
import type { StartGateway, StartGatewayWithEvents } from "./types.ts";
import { usageFile } from "./usage-events.ts";

const require = createRequire(import.meta.url);
/** The CommonJS object the package itself gets from require("http"), so that createServer can be observed. */
const http = require("node:http") as typeof NodeHttp;
const PACKAGE_PATH = require.resolve("@azure/functions");
const HOST_JSON = new URL("../../host.json", import.meta.url);

// ---------------------------------------------------------------------------------------------
// What the worker gives the package as '@azure/functions-core' (only what the package uses)

type RpcTypedData = { string?: string; json?: string; http?: Record<string, unknown> };

interface CoreBinding {
  type?: string;
  direction?: string;
  route?: string;
  methods?: string[];
  authLevel?: string;
  [key: string]: unknown;
}

export interface CoreFunctionMetadata {
  name: string;
  functionId?: string;
  bindings: Record<string, CoreBinding>;
}

interface CoreInvocationContext {
  invocationId: string;
  request: {
    invocationId: string;
    functionId: string;
    inputData: { name: string; data: RpcTypedData }[];
    triggerMetadata: Record<string, RpcTypedData>;
    traceContext: { traceParent: string; traceState: string; attributes: Record<string, string> };
  };
  metadata: CoreFunctionMetadata;
  state?: "preInvocationHooks" | "postInvocationHooks" | "invocation";
  log(level: string, category: string, message: string): void;
}

interface InvocationModel {
  getArguments(): Promise<{ context: unknown; inputs: unknown[] }>;
  invokeFunction(context: unknown, inputs: unknown[], handler: FunctionCallback): Promise<unknown>;
  getResponse(context: unknown, result: unknown): Promise<unknown>;
}

interface ProgrammingModel {
  name: string;
  version: string;
  getInvocationModel(coreCtx: CoreInvocationContext): InvocationModel | Promise<InvocationModel>;
  getCapabilities?(capabilities: Record<string, string>): Promise<Record<string, string>>;
}

type FunctionCallback = (...args: unknown[]) => unknown;
type HookCallback = (context: unknown) => unknown;

class Disposable {
  constructor(private readonly dispose: () => void) {}
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** One worker's view of the app: what the package registered while main.ts loaded. */
class WorkerCore {
  programmingModel: ProgrammingModel | undefined;
  readonly functions = new Map<string, { metadata: CoreFunctionMetadata; callback: FunctionCallback }>();
  readonly hooks = new Map<string, HookCallback[]>();
  /** What the package logged at warning level or above. */
  readonly problems: string[] = [];

  /** The API the worker's setupCoreModule.ts exposes as '@azure/functions-core'. */
  readonly api = {
    version: "sluice-test-harness",
    hostVersion: "4.1040.0",
    setProgrammingModel: (model: ProgrammingModel) => {
      this.programmingModel = model;
    },
    getProgrammingModel: () => this.programmingModel,
    registerFunction: (metadata: CoreFunctionMetadata, callback: FunctionCallback) => {
      const id = metadata.functionId || metadata.name;
      if (this.functions.has(id)) throw new Error(`A function with id "${id}" has already been registered.`);
      this.functions.set(id, { metadata, callback });
      return new Disposable(() => this.functions.delete(id));
    },
    registerHook: (name: string, callback: HookCallback) => {
      const list = this.hooks.get(name) ?? [];
      list.push(callback);
      this.hooks.set(name, list);
      return new Disposable(() => list.splice(list.indexOf(callback) >>> 0, 1));
    },
    log: (level: string, category: string, message: string) => this.log(level, category, message),
    Disposable,
  };

  log(level: string, category: string, message: string): void {
    if (level !== "warning" && level !== "error" && level !== "critical") return;
    this.problems.push(`${level}: ${message}`);
    console.error(`@azure/functions ${category} ${level}: ${message}`);
  }

  /** As the worker's executeHooks: each callback in turn, awaited. */
  async runHooks(name: string, context: unknown): Promise<void> {
    for (const callback of this.hooks.get(name) ?? []) await callback(context);
  }
}

// ---------------------------------------------------------------------------------------------
// Loading the app as the worker does

const ENV_KEYS = [
  "SLUICE_CONFIG",
  "SLUICE_APPCONFIG_CONNECTION_STRING",
  "SLUICE_APPCONFIG_KEY",
  "SLUICE_APPCONFIG_SENTINEL",
  "SLUICE_APPCONFIG_LABEL",
  "SLUICE_APPCONFIG_POLL_MS",
] as const;

/** A fresh instance of the installed @azure/functions (module state and all), as a new worker process would have. */
function freshFunctionsPackage(): Record<string, unknown> {
  const previous = require.cache[PACKAGE_PATH];
  delete require.cache[PACKAGE_PATH];
  try {
    return require(PACKAGE_PATH) as Record<string, unknown>;
  } finally {
    if (previous) require.cache[PACKAGE_PATH] = previous;
    else delete require.cache[PACKAGE_PATH];
  }
}

/**
 * Loads adapters/azure-functions/main.ts as the worker loads an app's entry point, with `env`
 * (the Function App's settings) in process.env while it loads; process.env is restored after.
 */
async function loadApp(env: Record<string, string | undefined>): Promise<WorkerCore> {
  const core = new WorkerCore();
  const savedEnv = new Map(ENV_KEYS.map((k) => [k, process.env[k]] as const));
  const proto = Module.prototype as unknown as { require: (id: string) => unknown };
  const originalRequire = proto.require;
  const interceptor = new Proxy(originalRequire, {
    apply(target, thisArg, args: [string]) {
      return args[0] === "@azure/functions-core" ? core.api : Reflect.apply(target, thisArg, args);
    },
  });
  proto.require = interceptor;
  try {
    for (const k of ENV_KEYS) delete process.env[k];
    for (const [k, v] of Object.entries(env)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    const functions = freshFunctionsPackage();
    // A new main.ts (and a new core) on every load, importing this package instance.
    vi.resetModules();
    vi.doMock("@azure/functions", () => ({ ...functions, default: functions }));
    try {
      await import("../../adapters/azure-functions/main.ts");
    } finally {
      vi.doUnmock("@azure/functions");
    }
  } finally {
    if (proto.require === interceptor) proto.require = originalRequire;
    for (const k of Object.keys(env)) if (!(ENV_KEYS as readonly string[]).includes(k)) delete process.env[k];
    for (const [k, v] of savedEnv) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  return core;
}

// ---------------------------------------------------------------------------------------------
// The host

/** Connection-scoped headers a forwarding proxy does not pass on (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"]);

/** Matches request paths against host.json's route prefix and the function's route (a catch-all only). */
function routeMatcher(route: string): (pathname: string) => Record<string, string> | undefined {
  const hostJson = JSON.parse(readFileSync(HOST_JSON, "utf8")) as { extensions?: { http?: { routePrefix?: string } } };
  const prefix = (hostJson.extensions?.http?.routePrefix ?? "api").replace(/^\/+|\/+$/g, "");
  const template = [prefix, route.replace(/^\/+/, "")].filter((s) => s !== "").join("/");
  const m = /^(.*?)\{\*(\w+)\}$/.exec(template);
  if (!m) throw new Error(`the Functions harness only knows catch-all routes ("...{*name}"), not ${JSON.stringify(template)}`);
  const literal = `/${m[1]!}`;
  const name = m[2]!;
  return (pathname) => {
    if (!pathname.startsWith(literal) && `${pathname}/` !== literal) return undefined;
    const rest = pathname.slice(literal.length);
    if (rest === "") return {};
    try {
      return { [name]: decodeURIComponent(rest) };
    } catch {
      return { [name]: rest };
    }
  };
}

export interface RunningFunctionsApp {
  /** The host's address, no trailing slash. */
  url: string;
  /** The registered function, as the package registered it. */
  metadata: CoreFunctionMetadata;
  /** The package's own proxy (its `HttpUri` capability). */
  httpUri: string;
  /** Warnings and errors the package logged. */
  problems: string[];
  close(): Promise<void>;
}

const settleWithin = (work: Promise<unknown>, ms: number) =>
  Promise.race([work.catch(() => undefined), new Promise<void>((resolve) => setTimeout(resolve, ms).unref())]);

/**
 * Loads the app with these settings and serves its one HTTP function as the Functions host
 * would, on 127.0.0.1 and a free port.
 */
export async function startFunctionsApp(env: Record<string, string | undefined>): Promise<RunningFunctionsApp> {
  const core = await loadApp(env);
  const model = core.programmingModel;
  if (!model?.getCapabilities) throw new Error("main.ts did not set a programming model (no app.http call?)");
  const registered = [...core.functions.values()];
  if (registered.length !== 1) throw new Error(`expected one registered function, got ${registered.length}`);
  const fn = registered[0]!;
  const [triggerName, trigger] = Object.entries(fn.metadata.bindings).find(([, b]) => b.type?.toLowerCase() === "httptrigger") ?? [];
  if (!triggerName || !trigger) throw new Error(`function ${fn.metadata.name} has no httpTrigger binding`);

  // The worker's capabilities, then the package's: with enableHttpStream this starts its proxy.
  // Its server is observed as it is created, so that it can be closed.
  const createServer = http.createServer;
  let proxyServer: NodeHttp.Server | undefined;
  http.createServer = ((...args: Parameters<typeof createServer>) => (proxyServer = createServer(...args))) as typeof createServer;
  let capabilities: Promise<Record<string, string>>;
  try {
    capabilities = model.getCapabilities({ RawHttpBodyBytes: "true", RpcHttpTriggerMetadataRemoved: "true", RpcHttpBodyOnly: "true", IgnoreEmptyValuedRpcHttpHeaders: "true", UseNullableValueDictionaryForHttp: "true", WorkerStatus: "true", TypedDataCollection: "true", HandlesWorkerTerminateMessage: "true" });
  } finally {
    http.createServer = createServer;
  }
  const httpUri = (await capabilities).HttpUri;
  if (!httpUri || !proxyServer) throw new Error("the package started no HTTP proxy: is enableHttpStream set?");
  const packageProxy = proxyServer;
  const workerHost = new URL(httpUri).host;

  const match = routeMatcher(String(trigger.route ?? fn.metadata.name));
  const methods = new Set((trigger.methods ?? ["GET", "POST"]).map((m) => m.toUpperCase()));
  // The host's forwarder keeps a pool of connections to the worker.
  const agent = new http.Agent({ keepAlive: true });

  /** The worker's InvocationHandler, minus hooks the app does not register. */
  async function invoke(coreCtx: CoreInvocationContext): Promise<void> {
    const invocation = await model!.getInvocationModel(coreCtx);
    const { context, inputs } = await invocation.getArguments();
    coreCtx.state = "invocation";
    let result: unknown;
    try {
      result = await invocation.invokeFunction(context, inputs, fn.callback);
    } finally {
      coreCtx.state = undefined;
    }
    await invocation.getResponse(context, result);
  }

  function serve(req: NodeHttp.IncomingMessage, res: NodeHttp.ServerResponse): void {
    const target = new URL(req.url ?? "/", "http://host.invalid");
    const params = match(target.pathname);
    if (!params || !methods.has(req.method ?? "")) {
      req.resume();
      res.writeHead(404, { "content-length": "0" }).end();
      return;
    }
    const invocationId = randomUUID();

    // The forwarded request: the client's headers minus hop-by-hop ones, Host the worker's, plus
    // the forwarding headers and the invocation id; the body streamed through.
    const headers: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i]!;
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || lower === "host" || lower.startsWith("x-forwarded-") || lower === "x-ms-invocation-id") continue;
      headers.push(name, req.rawHeaders[i + 1]!);
    }
    headers.push("host", workerHost, "x-forwarded-for", req.socket.remoteAddress ?? "", "x-forwarded-host", req.headers.host ?? "", "x-forwarded-proto", "http", "x-ms-invocation-id", invocationId);
    const forwarded = http.request(new URL(`${target.pathname}${target.search}`, httpUri), { method: req.method, headers, agent });
    forwarded.on("response", (answer) => {
      const out: string[] = [];
      for (let i = 0; i < answer.rawHeaders.length; i += 2) {
        if (!HOP_BY_HOP.has(answer.rawHeaders[i]!.toLowerCase())) out.push(answer.rawHeaders[i]!, answer.rawHeaders[i + 1]!);
      }
      res.writeHead(answer.statusCode ?? 502, out);
      answer.pipe(res);
      answer.once("aborted", () => res.destroy());
      answer.once("error", () => res.destroy());
    });
    forwarded.once("error", () => {
      if (!res.headersSent) res.writeHead(502, { "content-length": "0" }).end();
      else res.destroy();
    });
    // The client went away before its response ended: the forwarder cancels the forwarded request.
    res.once("close", () => {
      if (!res.writableFinished) forwarded.destroy();
    });
    req.pipe(forwarded);

    // The invocation, with the request's headers (each name once, values joined by commas) and
    // route parameters as trigger metadata.
    const headerMap: Record<string, string> = {};
    for (const [name, values] of Object.entries(req.headersDistinct)) headerMap[name] = (values ?? []).join(",");
    const triggerMetadata: Record<string, RpcTypedData> = {
      Headers: { json: JSON.stringify(headerMap) },
      Query: { json: JSON.stringify(Object.fromEntries(target.searchParams)) },
    };
    for (const [name, value] of Object.entries(params)) triggerMetadata[name] = { string: value };
    const coreCtx: CoreInvocationContext = {
      invocationId,
      request: {
        invocationId,
        functionId: fn.metadata.functionId || fn.metadata.name,
        inputData: [{ name: triggerName!, data: { http: {} } }],
        triggerMetadata,
        traceContext: { traceParent: "", traceState: "", attributes: {} },
      },
      metadata: fn.metadata,
      log: (level, category, message) => core.log(level, category, message),
    };
    void invoke(coreCtx).catch((err: unknown) => {
      // A failed invocation: the host answers 500 when nothing was sent yet.
      core.log("error", "system", `invocation ${invocationId} failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
      forwarded.destroy();
      if (!res.headersSent) res.writeHead(500, { "content-length": "0" }).end();
      else res.destroy();
    });
  }

  const host = http.createServer({ keepAlive: true, maxHeaderSize: 128 * 1024 }, serve);
  await new Promise<void>((resolve, reject) => {
    host.once("error", reject);
    host.listen(0, "127.0.0.1", () => {
      host.off("error", reject);
      resolve();
    });
  });
  const { port } = host.address() as { port: number };

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      // The host stops: client connections close, and with them any forwarded request still open.
      const closed = new Promise<void>((resolve) => host.close(() => resolve()));
      host.closeAllConnections();
      await closed;
      // The worker's graceful termination runs the app's appTerminate hooks (main.ts closes its
      // config follower, its upstream connections and its usage sinks there). An invocation
      // still reading an upstream body (its client gone: see above) holds the upstream client's
      // close until that body ends or its backend closes; the rest of the shutdown does not wait.
      await settleWithin(core.runHooks("appTerminate", { hookData: {}, appHookData: {} }), 1_000);
      agent.destroy();
      const proxyClosed = new Promise<void>((resolve) => packageProxy.close(() => resolve()));
      packageProxy.closeAllConnections();
      await proxyClosed;
    })());

  return { url: `http://127.0.0.1:${port}`, metadata: fn.metadata, httpUri, problems: core.problems, close };
}

/** The gateway on Azure Functions (see above), on an ephemeral 127.0.0.1 port. */
export const startFunctionsGateway: StartGateway = async (input: SluiceConfigInput) => {
  // Usage events on stdout would flood the test output; tests that read them name a sink.
  const running = await startFunctionsApp({ SLUICE_CONFIG: JSON.stringify({ metering: { sinks: [] }, ...input }) });
  return { url: running.url, close: running.close };
};

/** The gateway on Azure Functions with its usage events in a temp NDJSON file. */
export const startFunctionsGatewayWithEvents: StartGatewayWithEvents = async (input: SluiceConfigInput) => {
  const file = usageFile();
  const running = await startFunctionsApp({ SLUICE_CONFIG: JSON.stringify({ ...input, metering: { sinks: [{ type: "file", path: file.path }] } }) });
  return {
    url: running.url,
    events: file.events,
    close: async () => {
      await running.close();
      file.remove();
    },
  };
};
