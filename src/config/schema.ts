import { z } from "zod";

/**
 * The one declarative configuration of the gateway. The JSON Schema published in
 * `docs/config.schema.json` is generated from this file (`npm run schema`), so the
 * two cannot drift.
 */

const priorityRef = z.union([z.string().min(1), z.number().int()]);

const DAY_MS = 86_400_000;
/**
 * A duration in ms, bounded: every duration ends up in a timer or in date arithmetic, and an
 * absurd one (above `max`) is refused naming the field rather than overflowing a 32-bit timer.
 */
const durationMs = (max: number, min = 1) =>
  z
    .number()
    .int()
    .min(min)
    .max(max, { error: `at most ${max} ms (${max >= DAY_MS ? `${max / DAY_MS} day(s)` : max >= 3_600_000 ? `${max / 3_600_000} h` : `${max / 60_000} min`})` });

const modelEntry = z.union([
  z.string().min(1).describe("A model name the backend serves under the same name."),
  z
    .object({
      name: z.string().min(1).describe("The model name clients ask for."),
      deployment: z
        .string()
        .min(1)
        .optional()
        .describe("The backend's own deployment or model name, when it differs."),
    })
    .strict(),
]);

const backendAuth = z.discriminatedUnion("type", [
  z
    .object({
      type: z.literal("api-key"),
      key: z.string().min(1).describe("The key; use ${ENV_VAR} to keep secrets out of the file."),
      header: z
        .string()
        .min(1)
        .optional()
        .describe("Header that carries the key. Default by kind: api-key (azure-openai), ocp-apim-subscription-key (apim), x-api-key (anthropic), Authorization: Bearer (openai)."),
    })
    .strict(),
  z
    .object({
      type: z.literal("bearer"),
      token: z.string().min(1).describe("Sent as Authorization: Bearer <token>."),
    })
    .strict(),
  z
    .object({
      type: z.literal("managed-identity").describe("An Entra ID token of the Azure managed identity the gateway runs as, sent as Authorization: Bearer <token>; cached and renewed before it expires. Node and Azure Functions only (refused on Workers)."),
      clientId: z
        .string()
        .regex(/^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$/, "a client id is a GUID (8-4-4-4-12 hex digits)")
        .optional()
        .describe("Client id of a user-assigned identity. Omitted: the system-assigned identity."),
      scope: z
        .string()
        .regex(/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^\s/?#]+[^\s]*$/, "a scope is a URI such as https://cognitiveservices.azure.com/.default or api://<app id>/.default")
        .default("https://cognitiveservices.azure.com/.default")
        .describe("The token's scope (one). Default: https://cognitiveservices.azure.com/.default (Azure OpenAI, AI Foundry)."),
    })
    .strict(),
  z.object({ type: z.literal("none").describe("Send no credentials.") }).strict(),
]);

const backend = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9._-]+$/, "use letters, digits, '.', '_' or '-'")
      .describe("Unique name; reported in x-sluice-backend and usable as x-backend-affinity."),
    url: z.url().describe("Base URL: scheme, host, port and an optional path prefix."),
    kind: z
      .enum(["openai", "azure-openai", "apim", "anthropic"])
      .default("openai")
      .describe("Request shape the backend expects."),
    models: z
      .array(modelEntry)
      .min(1)
      .default(["*"])
      .describe("Models served. '*' serves any model. An entry may rename the model to the backend's deployment."),
    group: z.number().int().min(1).default(1).describe("Priority group: lower groups are used first (PTU = 1, pay-as-you-go = 2)."),
    priorities: z
      .array(priorityRef)
      .min(1)
      .optional()
      .describe("Request priorities this backend accepts (names or numbers). Default: all."),
    weight: z.number().positive().default(1).describe("Share for weighted round-robin."),
    maxConcurrency: z
      .number()
      .int()
      .positive()
      .optional()
      .describe("In-flight requests allowed at once. Default: unlimited."),
    timeoutMs: durationMs(DAY_MS).optional().describe("Per-attempt time allowed until response headers. Default: resilience.timeoutMs."),
    idleTimeoutMs: durationMs(DAY_MS)
      .optional()
      .describe("Longest silence allowed between body bytes once headers arrived. Default: resilience.idleTimeoutMs."),
    apiVersion: z
      .string()
      .optional()
      .describe("api-version used when an OpenAI-path request is sent to an azure-openai or apim backend."),
    auth: backendAuth.optional().describe("Credentials the gateway sends: an API key, a bearer token, or a managed identity's token (Node, Azure Functions). Omitted: none."),
    passThrough: z
      .boolean()
      .default(false)
      .describe("Also receives requests that name no model (paths other than the model APIs, e.g. /openai/files), forwarded as they are. Model listings are always answered by the gateway."),
  })
  .strict();

const breaker = z
  .object({
    policy: z
      .enum(["consecutive", "failure-rate"])
      .default("consecutive")
      .describe("What opens the circuit: failureThreshold consecutive failures, or a failure share of at least failureRate over windowMs."),
    failureThreshold: z
      .number()
      .int()
      .positive()
      .max(1_000_000, "at most 1000000")
      .default(5)
      .describe("Consecutive failures that open the circuit (policy consecutive)."),
    openMs: z
      .number()
      .int()
      .positive()
      .max(86_400_000, "at most 24 h (86400000 ms)")
      .default(30_000)
      .describe("How long the circuit stays open before one half-open probe; the interval again after it closes."),
    maxOpenMs: z
      .number()
      .int()
      .positive()
      .max(86_400_000, "at most 24 h (86400000 ms)")
      .default(300_000)
      .describe("Cap of the open interval grown by failed probes; a value below openMs means no growth."),
    backoffMultiplier: z
      .number()
      .min(1)
      .max(100)
      .default(2)
      .describe("Each failed half-open probe multiplies the open interval by this (1: no growth); a successful probe resets it to openMs."),
    failureRate: z
      .number()
      .gt(0)
      .max(1)
      .default(0.5)
      .describe("Failure share (0 to 1) over windowMs that opens the circuit (policy failure-rate)."),
    windowMs: z
      .number()
      .int()
      .positive()
      .max(86_400_000, "at most 24 h (86400000 ms)")
      .default(60_000)
      .describe("Sliding window over which the failure share is measured (policy failure-rate)."),
    minimumCalls: z
      .number()
      .int()
      .positive()
      .max(1_000_000, "at most 1000000")
      .default(20)
      .describe("Verdicts the window must hold before the failure share can open the circuit (policy failure-rate)."),
  })
  .strict();

const resilience = z
  .object({
    failoverOn: z
      .array(z.number().int().min(100).max(599))
      .default([408, 429, 500, 502, 503, 504])
      .describe("Upstream statuses that fail over to the next backend. Connection errors, resets before the first byte and timeouts always fail over."),
    cooldownOn: z
      .array(z.number().int().min(100).max(599))
      .default([429, 503])
      .describe("Statuses that put the backend in cooldown (from Retry-After and friends, else defaultCooldownMs)."),
    defaultCooldownMs: durationMs(DAY_MS, 0)
      .default(10_000)
      .describe("Cooldown after a 429/503 that carries no retry header."),
    timeoutMs: durationMs(DAY_MS).default(30_000).describe("Default per-attempt timeout until response headers."),
    idleTimeoutMs: durationMs(DAY_MS)
      .default(60_000)
      .describe(
        "Longest silence between body bytes once a backend's headers arrived. Before the first body byte it fails over like a timeout; after, a stream ends with the SSE error event and the lease is released. 60 s leaves room for reasoning models that think before their first token while no slot is ever held by a silent backend.",
      ),
    maxAttempts: z.number().int().positive().optional().describe("Attempts per request. Default: every eligible backend once."),
    breaker: breaker.prefault({}),
  })
  .strict();

const routing = z
  .object({
    strategy: z
      .enum(["latency", "weighted-round-robin", "round-robin", "random"])
      .default("latency")
      .describe("How a backend is chosen within a priority group."),
    latencyExploration: z
      .number()
      .min(0)
      .max(1)
      .default(0.1)
      .describe("Share of requests (latency strategy) sent to a random backend so that a recovered backend is measured again."),
    latencyAlpha: z.number().gt(0).max(1).default(0.3).describe("Weight of the newest time-to-first-byte sample in the moving average."),
    affinity: z.boolean().default(true).describe("Honour x-backend-affinity from clients and return it on responses."),
  })
  .strict();

const priorities = z
  .object({
    levels: z
      .record(z.string().regex(/^[a-z][a-z0-9_-]*$/), z.number().int())
      .default({ high: 1, normal: 2, low: 3 })
      .describe("Priority names and their levels; a lower number is more urgent."),
    default: priorityRef.default("normal").describe("Priority of a request that names none."),
    keys: z
      .record(z.string().min(1), priorityRef)
      .default({})
      .describe("SimpleL7Proxy's S7PPriorityKey: header value → priority it grants."),
  })
  .strict();

const scheduling = z
  .object({
    defaultTtlMs: durationMs(DAY_MS)
      .default(120_000)
      .describe("How long a request may wait for a backend when it sends no S7PTTL header; past it: 412."),
    maxQueue: z.number().int().nonnegative().default(10_000).describe("Requests waiting at once, all priorities; beyond it: 429."),
    maxQueuePerLevel: z
      .record(z.string(), z.number().int().nonnegative())
      .default({})
      .describe("Per-priority queue limits, by priority name or level number."),
    reservedShare: z
      .number()
      .min(0)
      .max(1)
      .default(0.1)
      .describe("Dispatches a less urgent level gets for each one of a more urgent level while both wait (0.1: about one in eleven)."),
    queueFullRetryMs: durationMs(3_600_000, 0).default(1000).describe("Retry-After sent with a queue-full 429."),
    maxRequeues: z.number().int().nonnegative().default(10).describe("Times one request may go back to the queue after S7PREQUEUE throttles."),
  })
  .strict();

const sink = z.discriminatedUnion("type", [
  z.object({ type: z.literal("stdout").describe("NDJSON on standard output (Node, Azure Functions; console on Workers).") }).strict(),
  z.object({ type: z.literal("file"), path: z.string().min(1).describe("NDJSON appended to this file (Node).") }).strict(),
  z.object({ type: z.literal("console").describe("console.log, one JSON per line (every runtime).") }).strict(),
  z
    .object({ type: z.literal("queue"), binding: z.string().min(1).describe("A Cloudflare Queue producer binding (Workers).") })
    .strict(),
]);

const metering = z
  .object({
    addStreamUsage: z
      .boolean()
      .default(true)
      .describe("Add stream_options.include_usage to streamed chat/completions requests that lack it (and hide the extra usage chunk from the client), so streams are metered exactly."),
    sinks: z.array(sink).default([{ type: "stdout" }]).describe("Where the one usage event per request goes."),
  })
  .strict();

const limitSpec = z
  .object({
    tokensPerMinute: z.number().int().positive().optional().describe("Tokens (prompt + completion) per minute."),
    requestsPerMinute: z.number().int().positive().optional().describe("Requests per minute."),
  })
  .strict();

const limits = z
  .object({
    perCaller: limitSpec.optional().describe("The budget of every caller that has no entry of its own in `callers`."),
    callers: z
      .record(z.string(), limitSpec)
      .default({})
      .describe("Budgets by caller id, as in usage events: the verified caller (API key `caller`, JWT caller claim), or on an open gateway `key:` and a fingerprint of the credential sent."),
  })
  .strict();

const profile = z
  .object({
    models: z
      .array(z.string().min(1))
      .optional()
      .describe("Models the caller may use; `*` matches any run of characters (`gpt-4o*`). Default: all."),
    defaultPriority: priorityRef.optional().describe("Priority when the request names none."),
    maxPriority: priorityRef
      .optional()
      .describe("The most urgent priority the caller may have; a request asking for more is served at this one."),
    limits: limitSpec.optional().describe("The caller's own token and request budget (instead of limits.perCaller)."),
    async: z
      .boolean()
      .default(false)
      .describe("May use long-running async requests (`Prefer: respond-async`, `S7PAsyncMode: true`): 202 and a job to poll. Without it such a request is 403."),
    notify: z
      .object({
        webhook: z
          .object({
            url: z.url({ protocol: /^https?$/, error: "use an http:// or https:// URL" }).describe("Receives a POST of the job's final status (JSON) when a job of this caller ends."),
            secret: z
              .string()
              .min(16, { error: "at least 16 characters" })
              .describe("HMAC-SHA256 key: the POST carries `x-sluice-signature: sha256=<hex of HMAC(secret, timestamp + \".\" + body)>` and `x-sluice-timestamp`."),
            maxAttempts: z.number().int().min(1).max(20).default(6).describe("Deliveries tried before giving up (a 2xx answer is delivered)."),
            backoffMs: durationMs(3_600_000).default(1000).describe("Wait before the second delivery; doubled for each one after (with jitter)."),
          })
          .strict()
          .optional(),
        queue: z
          .string()
          .regex(/^[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]$/, { error: "an Azure Storage Queue name: 3-63 lower-case letters, digits and single hyphens" })
          .optional()
          .describe("Azure (Node with an Azure job store, Functions): the final status is also sent as a message to this Storage Queue of the job store's account."),
      })
      .strict()
      .optional()
      .describe("How the caller hears that a job ended, besides polling."),
    headers: z.record(z.string(), z.string()).default({}).describe("Headers added to the request sent to the backend."),
    validateHeaders: z
      .record(z.string(), z.array(z.string()))
      .default({})
      .describe("Request headers whose value must be one of these (missing or other: 400)."),
    suspended: z.boolean().default(false).describe("Every request of the caller is refused (403)."),
  })
  .strict();

const apiKey = z
  .object({
    hash: z
      .string()
      .regex(/^sha256:[0-9a-f]{64}$/, "use sha256:<64 lower-case hex digits> (npm run hash-key -- <key>)")
      .describe("SHA-256 of the key; the key itself is never stored."),
    caller: z.string().min(1).describe("Caller id reported in usage events and metrics."),
    app: z.string().min(1).optional(),
    groups: z.array(z.string()).default([]),
    profile: z.string().min(1).optional().describe("Profile name; default: auth.defaultProfile."),
  })
  .strict();

const jwt = z
  .object({
    jwksUrl: z.url().describe("Where the signing keys are (Entra ID: https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys)."),
    issuer: z.union([z.string(), z.array(z.string()).min(1)]).describe("Accepted `iss`."),
    audience: z.union([z.string(), z.array(z.string()).min(1)]).describe("Accepted `aud`."),
    algorithms: z.array(z.string()).default(["RS256"]).describe("Accepted signing algorithms (never `none`)."),
    clockToleranceSec: z.number().int().nonnegative().default(60).describe("Allowed clock skew for exp/nbf/iat."),
    callerClaim: z.string().default("oid").describe("Claim that names the caller (Entra ID: oid; else sub)."),
    appClaims: z.array(z.string()).default(["azp", "appid"]).describe("Claims naming the calling application, first present wins."),
    groupClaims: z.array(z.string()).default(["groups", "roles"]).describe("Claims whose values are the caller's groups (and app roles)."),
    allowedApps: z.array(z.string()).optional().describe("Only these application ids may call (403 for others)."),
  })
  .strict();

const operator = z
  .object({
    apiKeys: z
      .array(
        z
          .object({
            hash: z
              .string()
              .regex(/^sha256:[0-9a-f]{64}$/, "use sha256:<64 lower-case hex digits> (npm run hash-key -- <key>)")
              .describe("SHA-256 of the operator key."),
            name: z.string().min(1).describe("Who holds it (for logs)."),
          })
          .strict(),
      )
      .default([])
      .describe("Operator keys (api-key or Authorization: Bearer) for the gateway's own endpoints."),
    groups: z.array(z.string().min(1)).default([]).describe("JWT groups or app roles (auth.jwt.groupClaims) that make a caller an operator."),
  })
  .strict();

const auth = z
  .object({
    apiKeys: z.array(apiKey).default([]).describe("Accepted API keys (api-key, Authorization: Bearer, ocp-apim-subscription-key)."),
    jwt: jwt.optional().describe("Accept JWT bearer tokens (Entra ID first)."),
    anonymous: z
      .boolean()
      .optional()
      .describe("Serve requests without credentials. Default: true when neither apiKeys nor jwt is configured."),
    defaultProfile: z.string().min(1).optional().describe("Profile of callers no binding names."),
    groupProfiles: z.record(z.string(), z.string()).default({}).describe("Group or role id → profile (JWT callers; the first match wins)."),
    appProfiles: z.record(z.string(), z.string()).default({}).describe("Application id → profile."),
    operator: operator
      .optional()
      .describe(
        "Who may use the gateway's own endpoints (/_gateway/*, /metrics) once inbound auth is on (apiKeys or jwt): an operator key, or a JWT carrying one of the groups. Without it they refuse everyone (403). /liveness, /readiness and /startup stay open.",
      ),
    forwardIdentity: z
      .boolean()
      .default(false)
      .describe("Send the verified caller, app and groups to backends as x-sluice-caller, x-sluice-app, x-sluice-groups."),
  })
  .strict();

const headerPolicy = z
  .object({
    strip: z.array(z.string()).default([]).describe("Request headers removed before the backend."),
    require: z.array(z.string()).default([]).describe("Request headers that must be present (else 400)."),
  })
  .strict();

const server = z
  .object({
    host: z.string().default("0.0.0.0").describe("Address the Node server listens on."),
    port: z.number().int().min(0).max(65535).default(8000).describe("Port the Node server listens on."),
    operatorPort: z
      .number()
      .int()
      .min(0)
      .max(65535)
      .optional()
      .describe("Node: serve the gateway's own endpoints (/_gateway/*, /metrics) only on this port (same host), never on `port`. They still need an operator credential when auth is on."),
    shutdownGraceMs: durationMs(3_600_000, 0)
      .default(30_000)
      .describe("On SIGTERM: time in-flight requests get to finish before connections are closed."),
    workers: z
      .number()
      .int()
      .min(1)
      .max(64)
      .default(1)
      .describe(
        "Node: gateway processes on this machine behind the one port (Node's cluster module), e.g. 2 on a 2-vCPU container. More than 1 needs `state.redis`, so the processes share one capacity (slots, budgets, cooldowns, breakers, queue order), and a shared job store (`jobs.store.azure`) or none. Read at start.",
      ),
    maxBodyBytes: z
      .number()
      .int()
      .min(1)
      .max(1024 * 1024 * 1024, { error: "at most 1 GiB" })
      .default(32 * 1024 * 1024)
      .describe(
        "Largest request body accepted, on every runtime; a bigger one is 413 before any backend is contacted, and is never read past the limit. 32 MiB holds a chat request with several base64 images (OpenAI allows 20 MB per image).",
      ),
  })
  .strict();

const jobs = z
  .object({
    store: z
      .discriminatedUnion("type", [
        z
          .object({
            type: z.literal("directory"),
            path: z.string().min(1).default(".sluice/jobs").describe("Directory (relative: to the working directory) holding jobs; one gateway process per directory."),
          })
          .strict(),
        z
          .object({
            type: z.literal("azure"),
            connectionString: z.string().min(1).describe("Storage account connection string (put it in an environment variable and write `${NAME}`)."),
            container: z.string().min(3).max(63).default("sluice-jobs").describe("Blob container for requests, records and results."),
            queue: z.string().min(3).max(63).default("sluice-jobs").describe("Storage Queue the job ids wait in."),
          })
          .strict(),
      ])
      .optional()
      .describe("Where jobs are kept. Default: Node, a local directory (`.sluice/jobs`); Azure Functions, the app's storage account (AzureWebJobsStorage); Workers, its bindings (JOBS, JOB_RESULTS, JOB_STATE)."),
    defaultTtlMs: durationMs(7 * DAY_MS)
      .default(6 * 3_600_000)
      .describe("How long a job may wait for a backend when the request sends no S7PTTL header: longer than a synchronous request's `scheduling.defaultTtlMs`. Past it the job fails with 412."),
    resultTtlMs: durationMs(30 * DAY_MS, 1000)
      .default(DAY_MS)
      .describe("How long a finished job's result is kept; then it is deleted and the job says `expired`."),
    leaseMs: durationMs(3_600_000, 1000)
      .default(60_000)
      .describe("A running job's heartbeat interval is a third of this; a job not heard from for this long (its runner died) is run again by the next runner to see it."),
    concurrency: z
      .number()
      .int()
      .min(1)
      .max(1024)
      .default(64)
      .describe("Jobs one Node process takes from its queue at once. On Azure Functions host.json's queues.batchSize decides, on Workers the consumer's max_batch_size."),
    maxWaitSeconds: z
      .number()
      .int()
      .min(0)
      .max(3600)
      .default(600)
      .describe("Largest `wait=N` honoured in `Prefer: respond-async, wait=N` (a larger one is served as this)."),
  })
  .strict();

const state = z
  .object({
    redis: z
      .object({
        url: z
          .url({ protocol: /^rediss?$/, error: "use a redis:// or rediss:// URL (rediss:// for TLS)" })
          .describe(
            "The Redis server: redis://[user:password@]host[:port][/db], or rediss:// for TLS (Azure Cache for Redis: rediss://:${REDIS_KEY}@name.redis.cache.windows.net:6380). Put the password in an environment variable and write `${NAME}`.",
          ),
        keyPrefix: z
          .string()
          .min(1)
          .max(64)
          .regex(/^[A-Za-z0-9:._-]+$/, "letters, digits and : . _ - only")
          .default("sluice:")
          .describe("Prefix of every key the gateway writes (one per deployment sharing a Redis). Every key expires on its own."),
        leaseMs: durationMs(600_000, 1000)
          .default(10_000)
          .describe(
            "How long the backend slots a replica holds outlive it: each replica renews them every quarter of this, and the slots of one that stops (killed, or cut off from Redis) go to the others within this time.",
          ),
      })
      .strict()
      .optional()
      .describe(
        "Node and Azure Functions: every replica (and every `server.workers` process) shares one capacity through this Redis: backend slots (`maxConcurrency` holds across replicas), who is served next when a slot frees (priority level, then arrival, across replicas), the token and request budgets of `limits` (reserved and settled atomically), backend cooldowns (a Retry-After seen by one replica is honoured by all), breakers (one half-open probe in all) and latency averages. While Redis is unreachable each replica falls back to its own slots, queue, budgets, cooldowns and breakers, with a warning, and resumes sharing when it is back. One non-clustered endpoint. Read at start; a reload does not change it. Workers share these through their Durable Objects instead.",
      ),
  })
  .strict();

export const configSchema = z
  .object({
    $schema: z.string().optional(),
    server: server.prefault({}),
    priorities: priorities.prefault({}),
    routing: routing.prefault({}),
    resilience: resilience.prefault({}),
    scheduling: scheduling.prefault({}),
    metering: metering.prefault({}),
    limits: limits.prefault({}),
    auth: auth.prefault({}),
    profiles: z.record(z.string(), profile).default({}).describe("Caller profiles by name."),
    profilesSource: z
      .union(
        [
          z
            .object({
              file: z
                .string()
                .min(1)
                .describe("A JSON file (relative paths: to the config file's directory), watched and reloaded on change (Node)."),
            })
            .strict(),
          z
            .object({
              url: z
                .url({ protocol: /^https?$/, error: "use an http:// or https:// URL" })
                .describe("An http(s) URL answering the JSON document, polled (a conditional GET when the server sends an ETag)."),
              pollMs: durationMs(DAY_MS, 100).default(30_000).describe("How often the URL is polled."),
            })
            .strict(),
        ],
        { error: 'use { "file": "<path>" } or { "url": "<http(s) URL>", "pollMs": <ms> }' },
      )
      .optional()
      .describe(
        "More caller profiles and API keys: a JSON document { \"profiles\": {...}, \"apiKeys\": [...] } (both optional) whose profiles are merged over `profiles` and whose apiKeys are appended to `auth.apiKeys` before the config is validated; a change to it is a new config version (Node). On Workers, the `profiles` key of the SLUICE_CONFIG_KV binding takes its place.",
      ),
    headerPolicy: headerPolicy.prefault({}),
    jobs: jobs.prefault({}).describe("Long-running async requests: a 202 and a job to poll (CONTRACT §7)."),
    state: state.optional().describe("State shared between replicas. Without it every replica keeps its own, in process."),
    backends: z.array(backend).min(1),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    const seen = new Set<string>();
    cfg.backends.forEach((b, i) => {
      if (seen.has(b.name)) {
        ctx.addIssue({ code: "custom", path: ["backends", i, "name"], message: `duplicate backend name "${b.name}"` });
      }
      seen.add(b.name);
      b.priorities?.forEach((p, j) => {
        if (typeof p === "string" && !(p in cfg.priorities.levels)) {
          ctx.addIssue({ code: "custom", path: ["backends", i, "priorities", j], message: `unknown priority "${p}"` });
        }
      });
    });
    Object.entries(cfg.priorities.keys).forEach(([key, p]) => {
      if (typeof p === "string" && !(p in cfg.priorities.levels)) {
        ctx.addIssue({ code: "custom", path: ["priorities", "keys", key], message: `unknown priority "${p}"` });
      }
    });
    Object.keys(cfg.scheduling.maxQueuePerLevel).forEach((p) => {
      if (!(p in cfg.priorities.levels) && !/^-?\d+$/.test(p)) {
        ctx.addIssue({ code: "custom", path: ["scheduling", "maxQueuePerLevel", p], message: `unknown priority "${p}"` });
      }
    });
    const profileRef = (name: string | undefined, path: (string | number)[]) => {
      if (name !== undefined && !(name in cfg.profiles)) ctx.addIssue({ code: "custom", path, message: `unknown profile "${name}"` });
    };
    cfg.auth.apiKeys.forEach((k, i) => profileRef(k.profile, ["auth", "apiKeys", i, "profile"]));
    profileRef(cfg.auth.defaultProfile, ["auth", "defaultProfile"]);
    for (const [g, p] of Object.entries(cfg.auth.groupProfiles)) profileRef(p, ["auth", "groupProfiles", g]);
    for (const [a, p] of Object.entries(cfg.auth.appProfiles)) profileRef(p, ["auth", "appProfiles", a]);
    if (cfg.auth.jwt?.algorithms.some((a) => a.toLowerCase() === "none")) {
      ctx.addIssue({ code: "custom", path: ["auth", "jwt", "algorithms"], message: "\"none\" is never accepted" });
    }
    for (const [name, p] of Object.entries(cfg.profiles)) {
      for (const key of ["defaultPriority", "maxPriority"] as const) {
        const v = p[key];
        if (typeof v === "string" && !(v in cfg.priorities.levels)) ctx.addIssue({ code: "custom", path: ["profiles", name, key], message: `unknown priority "${v}"` });
      }
    }
    const d = cfg.priorities.default;
    if (typeof d === "string" && !(d in cfg.priorities.levels)) {
      ctx.addIssue({ code: "custom", path: ["priorities", "default"], message: `unknown priority "${d}"` });
    }
    if (cfg.server.workers > 1) {
      // Processes that do not share state would each allow every limit in full.
      if (!cfg.state?.redis) ctx.addIssue({ code: "custom", path: ["server", "workers"], message: "more than one worker needs state.redis: the processes share slots, budgets and cooldowns through it" });
      if (cfg.jobs.store?.type === "directory") ctx.addIssue({ code: "custom", path: ["server", "workers"], message: "more than one worker cannot share a directory job store (one process per directory): use jobs.store.azure" });
    }
  });

export type SluiceConfig = z.output<typeof configSchema>;
export type SluiceConfigInput = z.input<typeof configSchema>;
export type BackendConfig = SluiceConfig["backends"][number];
export type BackendKind = BackendConfig["kind"];
export type SinkConfig = SluiceConfig["metering"]["sinks"][number];
export type ProfileConfig = SluiceConfig["profiles"][string];
export type JwtConfig = NonNullable<SluiceConfig["auth"]["jwt"]>;
export type JobsConfig = SluiceConfig["jobs"];
export type RedisStateConfig = NonNullable<NonNullable<SluiceConfig["state"]>["redis"]>;
export type JobStoreConfig = NonNullable<JobsConfig["store"]>;
export type WebhookConfig = NonNullable<NonNullable<ProfileConfig["notify"]>["webhook"]>;
