import { app } from "@azure/functions";
import { createGateway } from "../../src/gateway.ts";
import { InProcessRateLimiter } from "../../src/governance/limits.ts";
import { createRuntime } from "../../src/runtime.ts";
import { nodeCredentials } from "../node/managed-identity.ts";
import { GatewayHolder, openNodeConfigSource } from "../node/reload.ts";
import { openSharedState } from "../node/shared-state.ts";
import { nodeSinks } from "../node/sinks.ts";
import { createUpstreamClient } from "../node/upstream.ts";
import { createFunctionsHandler } from "./handler.ts";
import { JOBS_FUNCTION, openFunctionsJobs, planFunctionsJobs, POISON_FUNCTION, SWEEP_FUNCTION, SWEEP_SCHEDULE } from "./jobs.ts";

app.setup({ enableHttpStream: true });

// SLUICE_CONFIG (a file, watched for changes, or inline JSON), or Azure App Configuration when
// SLUICE_APPCONFIG_CONNECTION_STRING is set (polled through its sentinel key). Loaded before the
// route is registered: an invalid or unreadable config fails the app's start, as before.
const source = await openNodeConfigSource([], process.env);
if (!source) throw new Error("sluice: set SLUICE_CONFIG (a path or inline JSON) or SLUICE_APPCONFIG_CONNECTION_STRING in the Function App settings");

// The async handoff (CONTRACT §7, adapters/azure-functions/jobs.ts): jobs.store of type "azure",
// else the storage account in the app setting SLUICE_JOBS_STORAGE or AzureWebJobsStorage; a
// "directory" store is refused here. None: async requests are 501. Read once, at start.
const jobsPlan = planFunctionsJobs(source.initial.config, process.env);
const jobs = jobsPlan ? await openFunctionsJobs(jobsPlan) : undefined;

const client = createUpstreamClient();
const usage = nodeSinks(source.initial.config.metering.sinks);
// What outlives config versions (backend state, the queue, budgets, metrics, the job service):
// every gateway a reload builds gets this one runtime.
// Budgets, cooldowns, breakers, slots and queue order shared between instances through Redis when
// the config has state.redis (read once, at start).
const shared = await openSharedState(source.initial.config, () => runtime);
const runtime = createRuntime({ jobs: jobs?.service, ...shared.runtimeOptions, limiter: shared.runtimeOptions.limiter ?? new InProcessRateLimiter() });
// Backend credentials: the config's keys, and managed-identity tokens cached across config versions.
const credentials = nodeCredentials();
const holder = new GatewayHolder((config, configStatus) => {
  const gateway = createGateway({ config, runtime, upstream: client.upstream, usageSinks: usage.sinks, configStatus, sharedState: shared.status, credentials: credentials.factory });
  void shared.adopted();
  return gateway;
}, source.initial);
await shared.adopted();
const follower = source.follow(holder);

// One catch-all route; host.json sets an empty route prefix so client paths reach the core unchanged.
app.http("sluice", {
  route: "{*path}",
  methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
  authLevel: "anonymous",
  handler: createFunctionsHandler(holder.gateway),
});

if (jobs) {
  const { plan } = jobs;
  console.log(`sluice: async jobs in container ${plan.container} and queue ${plan.queue} (${plan.origin}, app setting ${plan.connectionSetting})`);
  // `connection` names the app setting the Functions host reads the connection string from.
  // Retries, poison queue, batch size and polling: host.json extensions.queues.
  app.storageQueue(JOBS_FUNCTION, { queueName: plan.queue, connection: plan.connectionSetting, handler: jobs.onMessage });
  if (jobs.poisonQueue) app.storageQueue(POISON_FUNCTION, { queueName: jobs.poisonQueue, connection: plan.connectionSetting, handler: jobs.onPoison });
  app.timer(SWEEP_FUNCTION, { schedule: SWEEP_SCHEDULE, handler: jobs.onSweep });
}

// A graceful worker shutdown (the host's WorkerTerminate) runs this before the process exits:
// jobs running here get a few seconds and the rest go back to the queue, then stop following
// config changes, let the upstream connections finish, write the usage lines still batched and
// close the usage files.
app.hook.appTerminate(async () => {
  const jobsClosed = jobs?.close(holder.config.server.shutdownGraceMs);
  follower?.close();
  await jobsClosed;
  holder.closeProfiles();
  credentials.close();
  await client.close();
  await usage.close();
  await shared.close();
});
