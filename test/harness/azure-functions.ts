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
 * Storage Queue triggers (`app.storageQueue`) are served by a queue host that does what the
 * Functions host's queue listener does (QueueListener below): it resolves the binding's
 * `connection` app setting from the app's settings (not from the worker's process.env), polls
 * the queue with the host.json `extensions.queues` settings, decodes each message, and invokes
 * the function through the same InvocationModel, the message as typed data and its properties
 * as trigger metadata, so the handler gets the package's own InvocationContext and the
 * package's conversion of the message (a JSON message arrives as the parsed object). A message
 * is deleted when the invocation succeeds, made visible again after `visibilityTimeout` when it
 * throws, and moved to `<queue>-poison` once dequeued `maxDequeueCount` times. Timer triggers
 * are registered and run on demand (`runTimer`), as the host's admin endpoint runs them.
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
import { QueueServiceClient, type QueueClient } from "@azure/storage-queue";
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
  "SLUICE_JOBS_STORAGE",
  "AzureWebJobsStorage",
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
  const touched = [...new Set([...ENV_KEYS, ...Object.keys(env)])];
  const savedEnv = new Map(touched.map((k) => [k, process.env[k]] as const));
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

// ---------------------------------------------------------------------------------------------
// Invocations, as the worker's InvocationHandler runs them (minus hooks the app does not register)

/** Runs one invocation through the package's InvocationModel: its arguments, the handler, its response. */
async function runInvocation(model: ProgrammingModel, fn: RegisteredFunction, coreCtx: CoreInvocationContext): Promise<unknown> {
  const invocation = await model.getInvocationModel(coreCtx);
  const { context, inputs } = await invocation.getArguments();
  coreCtx.state = "invocation";
  let result: unknown;
  try {
    result = await invocation.invokeFunction(context, inputs, fn.callback);
  } finally {
    coreCtx.state = undefined;
  }
  return invocation.getResponse(context, result);
}

interface RegisteredFunction {
  metadata: CoreFunctionMetadata;
  callback: FunctionCallback;
}

function triggerOf(fn: RegisteredFunction, type: string): [string, CoreBinding] | undefined {
  return Object.entries(fn.metadata.bindings).find(([, b]) => b.type?.toLowerCase() === type.toLowerCase() && b.direction === "in");
}

function coreContext(core: WorkerCore, fn: RegisteredFunction, triggerName: string, data: RpcTypedData, triggerMetadata: Record<string, RpcTypedData>, invocationId = randomUUID()): CoreInvocationContext {
  return {
    invocationId,
    request: {
      invocationId,
      functionId: fn.metadata.functionId || fn.metadata.name,
      inputData: [{ name: triggerName, data }],
      triggerMetadata,
      traceContext: { traceParent: "", traceState: "", attributes: {} },
    },
    metadata: fn.metadata,
    log: (level, category, message) => core.log(level, category, message),
  };
}

// ---------------------------------------------------------------------------------------------
// The host's Storage Queue listener

/** host.json `extensions.queues`, with the host's defaults (learn.microsoft.com, "Azure Queue storage trigger", host.json settings). */
export interface QueueSettings {
  batchSize: number;
  newBatchThreshold: number;
  maxPollingIntervalMs: number;
  /** How long a message stays invisible after a failed invocation before it is retried. */
  visibilityTimeoutMs: number;
  maxDequeueCount: number;
  messageEncoding: "base64" | "none";
}

/** A TimeSpan as host.json writes it: `[d.]hh:mm:ss[.fff]`. */
function timeSpanMs(value: unknown, fallback: number): number {
  if (typeof value !== "string") return fallback;
  const m = /^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?$/.exec(value.trim());
  if (!m) throw new Error(`host.json: ${JSON.stringify(value)} is not a TimeSpan ([d.]hh:mm:ss[.fff])`);
  const [, d, h, min, sec, frac] = m;
  return ((Number(d ?? 0) * 24 + Number(h)) * 60 + Number(min)) * 60_000 + Number(sec) * 1000 + Math.round(Number(`0.${frac ?? "0"}`) * 1000);
}

function hostQueueSettings(): QueueSettings {
  const hostJson = JSON.parse(readFileSync(HOST_JSON, "utf8")) as { extensions?: { queues?: Record<string, unknown> } };
  const q = hostJson.extensions?.queues ?? {};
  const int = (v: unknown, fallback: number, min: number, max: number) => {
    if (v === undefined) return fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw new Error(`host.json: extensions.queues value ${JSON.stringify(v)} is out of range [${min}, ${max}]`);
    return v;
  };
  const batchSize = int(q.batchSize, 16, 1, 32);
  const encoding = q.messageEncoding ?? "base64";
  if (encoding !== "base64" && encoding !== "none") throw new Error(`host.json: extensions.queues.messageEncoding ${JSON.stringify(encoding)}`);
  return {
    batchSize,
    newBatchThreshold: int(q.newBatchThreshold, Math.floor(batchSize / 2), 0, 1000),
    maxPollingIntervalMs: timeSpanMs(q.maxPollingInterval, 60_000),
    visibilityTimeoutMs: timeSpanMs(q.visibilityTimeout, 0),
    maxDequeueCount: int(q.maxDequeueCount, 5, 1, 1000),
    messageEncoding: encoding,
  };
}

/** One invocation of a queue trigger, as the host saw it end. */
export interface QueueInvocation {
  function: string;
  queue: string;
  messageId: string;
  dequeueCount: number;
  /** The message as the trigger got it (decoded). */
  text: string;
  outcome: "succeeded" | "failed" | "poisoned";
  error?: string;
}

/** The first poll after an empty one waits this long; each further empty poll doubles it, up to maxPollingInterval (the host's randomized exponential back-off, without the randomness). */
const MIN_POLL_MS = 100;
/** The host receives with a 10-minute visibility and renews it halfway while the invocation runs. */
const RECEIVE_VISIBILITY_S = 600;
const RENEW_EVERY_MS = 300_000;
const MAX_INVOCATIONS_KEPT = 1000;

const statusOf = (err: unknown) => (err as { statusCode?: unknown } | null)?.statusCode;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * What the Functions host does for a `queueTrigger` binding (azure-webjobs-sdk QueueListener and
 * QueueProcessor): polls the queue (batchSize at a time, a new batch once no more than
 * newBatchThreshold run; at once again after a batch, backing off to maxPollingInterval while it
 * is empty), decodes each message (base64 by default), invokes the function with the message as
 * typed data and its properties as trigger metadata, keeps it invisible while it runs, deletes it
 * when the invocation succeeds; on a throw makes it visible again after visibilityTimeout, or,
 * once it was dequeued maxDequeueCount times, moves it to `<queue>-poison`. A message already
 * dequeued more than maxDequeueCount times is moved without an invocation.
 */
class QueueListener {
  private stopped = true;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private delay = 0;
  private polling: Promise<void> | undefined;
  readonly running = new Set<Promise<void>>();

  constructor(
    private readonly fn: RegisteredFunction,
    private readonly triggerName: string,
    readonly queue: QueueClient,
    private readonly poison: QueueClient,
    private readonly settings: QueueSettings,
    private readonly invoke: (fn: RegisteredFunction, coreCtx: CoreInvocationContext) => Promise<unknown>,
    private readonly core: WorkerCore,
    private readonly record: (i: QueueInvocation) => void,
  ) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.delay = 0;
    this.schedule(0);
  }

  /** Stops polling; resolves once no poll is under way (invocations may still run). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.polling;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.polling = this.poll().finally(() => (this.polling = undefined));
    }, Math.max(0, Math.min(ms, 3_600_000)));
  }

  private async poll(): Promise<void> {
    if (this.stopped) return;
    if (this.running.size > this.settings.newBatchThreshold) {
      // Full: look again when an invocation ends (it reschedules), or shortly.
      this.schedule(50);
      return;
    }
    let found = 0;
    try {
      const res = await this.queue.receiveMessages({ numberOfMessages: this.settings.batchSize, visibilityTimeout: RECEIVE_VISIBILITY_S });
      for (const m of res.receivedMessageItems) {
        found++;
        const run = this.process(m).catch((err: unknown) => this.core.log("error", "system", `queue host: message ${m.messageId}: ${String(err)}`));
        this.running.add(run);
        void run.finally(() => this.running.delete(run));
      }
    } catch (err) {
      // A queue that does not exist (yet) is polled on; anything else is the host's problem to log.
      if (statusOf(err) !== 404 && !this.stopped) this.core.log("warning", "system", `queue host: receive from ${this.queue.name} failed: ${String(err)}`);
    }
    this.delay = found ? 0 : Math.min(this.settings.maxPollingIntervalMs, Math.max(MIN_POLL_MS, this.delay * 2));
    this.schedule(this.delay);
  }

  private async process(m: { messageId: string; popReceipt: string; messageText: string; dequeueCount: number; insertedOn: Date; expiresOn: Date; nextVisibleOn: Date }): Promise<void> {
    const name = this.fn.metadata.name;
    let popReceipt = m.popReceipt;
    if (m.dequeueCount > this.settings.maxDequeueCount) {
      await this.toPoison(m.messageId, popReceipt, m.messageText);
      this.record({ function: name, queue: this.queue.name, messageId: m.messageId, dequeueCount: m.dequeueCount, text: m.messageText, outcome: "poisoned" });
      return;
    }
    let text = m.messageText;
    let failure: string | undefined;
    const renew = setInterval(() => {
      void this.queue
        .updateMessage(m.messageId, popReceipt, undefined, RECEIVE_VISIBILITY_S)
        .then((r) => {
          if (r.popReceipt) popReceipt = r.popReceipt;
        })
        .catch(() => undefined);
    }, RENEW_EVERY_MS);
    try {
      if (this.settings.messageEncoding === "base64") {
        if (!BASE64.test(text)) throw new Error("the message is not valid base64 (host.json messageEncoding: base64)");
        text = Buffer.from(text, "base64").toString("utf8");
      }
      const data: RpcTypedData = isJson(text) ? { json: text } : { string: text };
      const iso = (d: Date) => ({ json: JSON.stringify(d.toISOString()) });
      const triggerMetadata: Record<string, RpcTypedData> = {
        QueueTrigger: { string: text },
        DequeueCount: { json: String(m.dequeueCount) },
        Id: { string: m.messageId },
        PopReceipt: { string: popReceipt },
        InsertionTime: iso(m.insertedOn),
        ExpirationTime: iso(m.expiresOn),
        NextVisibleTime: iso(m.nextVisibleOn),
        sys: { json: JSON.stringify({ MethodName: name, UtcNow: new Date().toISOString(), RandGuid: randomUUID() }) },
      };
      await this.invoke(this.fn, coreContext(this.core, this.fn, this.triggerName, data, triggerMetadata));
    } catch (err) {
      failure = err instanceof Error ? err.message : String(err);
    } finally {
      clearInterval(renew);
    }
    if (failure === undefined) {
      await this.queue.deleteMessage(m.messageId, popReceipt).catch(() => undefined);
      this.record({ function: name, queue: this.queue.name, messageId: m.messageId, dequeueCount: m.dequeueCount, text, outcome: "succeeded" });
    } else if (m.dequeueCount >= this.settings.maxDequeueCount) {
      await this.toPoison(m.messageId, popReceipt, m.messageText);
      this.record({ function: name, queue: this.queue.name, messageId: m.messageId, dequeueCount: m.dequeueCount, text, outcome: "poisoned", error: failure });
    } else {
      await this.queue.updateMessage(m.messageId, popReceipt, undefined, Math.ceil(this.settings.visibilityTimeoutMs / 1000)).catch(() => undefined);
      this.record({ function: name, queue: this.queue.name, messageId: m.messageId, dequeueCount: m.dequeueCount, text, outcome: "failed", error: failure });
    }
    // Room again: look for more now rather than after the back-off.
    if (!this.stopped && this.timer && this.delay > MIN_POLL_MS) {
      clearTimeout(this.timer);
      this.delay = 0;
      this.schedule(0);
    }
  }

  /** The message, as it was in the queue, copied to `<queue>-poison` and deleted. */
  private async toPoison(messageId: string, popReceipt: string, rawText: string): Promise<void> {
    await this.poison.createIfNotExists();
    await this.poison.sendMessage(rawText, { messageTimeToLive: -1 });
    await this.queue.deleteMessage(messageId, popReceipt).catch(() => undefined);
  }
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** The host's queue listeners for the app's queue triggers. */
export interface QueueHost {
  /** Starts polling (startFunctionsApp does, unless told not to). */
  start(): void;
  /** Stops polling; invocations under way go on. */
  stop(): Promise<void>;
  /** Every queue-triggered invocation that ended, oldest first. */
  readonly invocations: QueueInvocation[];
  /** Invocations under way. */
  readonly running: number;
  /** The queue a registered queue trigger reads, by function name. */
  queue(functionName: string): QueueClient;
  settings: QueueSettings;
}

/**
 * A binding's `connection`: the name of an app setting, which the host resolves from its own
 * settings (the Function App's), trying `AzureWebJobs<name>` too; no name means
 * AzureWebJobsStorage.
 */
function resolveConnection(settings: Record<string, string | undefined>, name: unknown, functionName: string): string {
  const setting = typeof name === "string" && name !== "" ? name : "AzureWebJobsStorage";
  const value = settings[setting] ?? settings[`AzureWebJobs${setting}`];
  if (!value) throw new Error(`Error indexing method 'Functions.${functionName}': Storage account connection string '${setting}' does not exist. Make sure that it is a defined App Setting.`);
  return value;
}

export interface FunctionsAppOptions {
  /** The queue host: `autoStart: false` leaves messages in the queue until `queueHost.start()`; the intervals override host.json's (tests). */
  queues?: { autoStart?: boolean; maxPollingIntervalMs?: number; visibilityTimeoutMs?: number };
}

export interface RunningFunctionsApp {
  /** The host's address, no trailing slash. */
  url: string;
  /** The HTTP function, as the package registered it. */
  metadata: CoreFunctionMetadata;
  /** Every registered function, by name. */
  functions: Map<string, CoreFunctionMetadata>;
  /** The package's own proxy (its `HttpUri` capability). */
  httpUri: string;
  /** Warnings and errors the package logged. */
  problems: string[];
  /** The listeners of the app's Storage Queue triggers. */
  queueHost: QueueHost;
  /** Runs a timer-triggered function now (as the host's admin endpoint `POST /admin/functions/{name}` does); resolves with its return value. */
  runTimer(name: string): Promise<unknown>;
  close(): Promise<void>;
}

const settleWithin = (work: Promise<unknown>, ms: number) =>
  Promise.race([work.catch(() => undefined), new Promise<void>((resolve) => setTimeout(resolve, ms).unref())]);

/**
 * Loads the app with these settings and serves it as the Functions host would: its one HTTP
 * function on 127.0.0.1 and a free port, its Storage Queue triggers from the queues they name
 * (on the storage account of the app setting each binding names), its timers on demand.
 */
export async function startFunctionsApp(env: Record<string, string | undefined>, options: FunctionsAppOptions = {}): Promise<RunningFunctionsApp> {
  const core = await loadApp(env);
  const model = core.programmingModel;
  if (!model?.getCapabilities) throw new Error("main.ts did not set a programming model (no app.http call?)");
  const registered = [...core.functions.values()];
  const https = registered.filter((f) => triggerOf(f, "httpTrigger"));
  if (https.length !== 1) throw new Error(`expected one registered HTTP function, got ${https.length}`);
  const fn = https[0]!;
  const [triggerName, trigger] = triggerOf(fn, "httpTrigger")!;
  const unknown = registered.filter((f) => !triggerOf(f, "httpTrigger") && !triggerOf(f, "queueTrigger") && !triggerOf(f, "timerTrigger"));
  if (unknown.length) throw new Error(`the Functions harness does not host ${unknown.map((f) => f.metadata.name).join(", ")} (only HTTP, Storage Queue and timer triggers)`);

  // The queue listeners: their connections are resolved when the host indexes the functions.
  const settings = { ...hostQueueSettings(), ...definedOnly(options.queues ?? {}) };
  const invocations: QueueInvocation[] = [];
  const listeners = new Map<string, QueueListener>();
  const invoke = (f: RegisteredFunction, coreCtx: CoreInvocationContext) => runInvocation(model, f, coreCtx);
  for (const f of registered) {
    const t = triggerOf(f, "queueTrigger");
    if (!t) continue;
    const [name, binding] = t;
    if (typeof binding.queueName !== "string") throw new Error(`function ${f.metadata.name}: queueTrigger without a queueName`);
    const conn = resolveConnection(env, binding.connection, f.metadata.name);
    const service = QueueServiceClient.fromConnectionString(conn);
    listeners.set(
      f.metadata.name,
      new QueueListener(f, name, service.getQueueClient(binding.queueName), service.getQueueClient(`${binding.queueName}-poison`), settings, invoke, core, (i) => {
        invocations.push(i);
        if (invocations.length > MAX_INVOCATIONS_KEPT) invocations.shift();
      }),
    );
  }
  const queueHost: QueueHost = {
    start: () => listeners.forEach((l) => l.start()),
    stop: async () => {
      await Promise.all([...listeners.values()].map((l) => l.stop()));
    },
    invocations,
    get running() {
      return [...listeners.values()].reduce((n, l) => n + l.running.size, 0);
    },
    queue(name) {
      const l = listeners.get(name);
      if (!l) throw new Error(`no queue-triggered function ${name}`);
      return l.queue;
    },
    settings,
  };

  async function runTimer(name: string): Promise<unknown> {
    const f = core.functions.get(name);
    const t = f && triggerOf(f, "timerTrigger");
    if (!f || !t) throw new Error(`no timer-triggered function ${name}`);
    const now = new Date().toISOString();
    // The host's TimerInfo, as JSON (the package camel-cases it).
    const timer = { Schedule: { AdjustForDST: true }, ScheduleStatus: { Last: now, Next: now, LastUpdated: now }, IsPastDue: false };
    const response = (await invoke(f, coreContext(core, f, t[0], { json: JSON.stringify(timer) }, {}))) as { returnValue?: unknown };
    return response?.returnValue;
  }

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
    const coreCtx = coreContext(core, fn, triggerName, { http: {} }, triggerMetadata, invocationId);
    void invoke(fn, coreCtx).catch((err: unknown) => {
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
  if (options.queues?.autoStart !== false) queueHost.start();

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      // The host stops: its listeners stop taking messages, client connections close, and with
      // them any forwarded request still open.
      await queueHost.stop();
      const closed = new Promise<void>((resolve) => host.close(() => resolve()));
      host.closeAllConnections();
      await closed;
      // The worker's graceful termination runs the app's appTerminate hooks (main.ts puts the
      // jobs it still runs back in their queue, closes its config follower, its upstream
      // connections and its usage sinks there). An invocation still reading an upstream body
      // (its client gone: see above) holds the upstream client's close until that body ends or
      // its backend closes; the rest of the shutdown does not wait.
      await settleWithin(core.runHooks("appTerminate", { hookData: {}, appHookData: {} }), 1_000);
      // Queue invocations the hooks ended settle their messages.
      await settleWithin(Promise.allSettled([...listeners.values()].flatMap((l) => [...l.running])), 1_000);
      agent.destroy();
      const proxyClosed = new Promise<void>((resolve) => packageProxy.close(() => resolve()));
      packageProxy.closeAllConnections();
      await proxyClosed;
    })());

  return {
    url: `http://127.0.0.1:${port}`,
    metadata: fn.metadata,
    functions: new Map(registered.map((f) => [f.metadata.name, f.metadata])),
    httpUri,
    problems: core.problems,
    queueHost,
    runTimer,
    close,
  };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([k, v]) => v !== undefined && k !== "autoStart")) as Partial<T>;
}

/** The gateway on Azure Functions (see above), on an ephemeral 127.0.0.1 port. */
export const startFunctionsGateway: StartGateway = async (input: SluiceConfigInput) => {
  // Usage events on stdout would flood the test output; tests that read them name a sink.
  const running = await startFunctionsApp({ SLUICE_CONFIG: JSON.stringify({ metering: { sinks: [] }, ...input }) });
  return { url: running.url, close: running.close };
};

/** The gateway on Azure Functions with its usage events in a temp NDJSON file. */
export const startFunctionsGatewayWithEvents: StartGatewayWithEvents = functionsGatewayWithEvents({});

/**
 * A StartGatewayWithEvents for the Functions app with these further app settings (e.g. a storage
 * connection string for the job store) and harness options; `running` is called with each app
 * once it serves.
 */
export function functionsGatewayWithEvents(
  appSettings: Record<string, string | undefined>,
  options: FunctionsAppOptions = {},
  running?: (app: RunningFunctionsApp) => void,
): StartGatewayWithEvents {
  return async (input: SluiceConfigInput) => {
    const file = usageFile();
    let app: RunningFunctionsApp;
    try {
      app = await startFunctionsApp({ ...appSettings, SLUICE_CONFIG: JSON.stringify({ ...input, metering: { sinks: [{ type: "file", path: file.path }] } }) }, options);
    } catch (err) {
      file.remove();
      throw err;
    }
    running?.(app);
    return {
      url: app.url,
      events: file.events,
      close: async () => {
        await app.close();
        file.remove();
      },
    };
  };
}
