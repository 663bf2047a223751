import { app } from "@azure/functions";
import { createGateway } from "../../src/gateway.ts";
import { InProcessRateLimiter } from "../../src/governance/limits.ts";
import { GatewayHolder, openNodeConfigSource } from "../node/reload.ts";
import { nodeSinks } from "../node/sinks.ts";
import { createUpstreamClient } from "../node/upstream.ts";
import { createFunctionsHandler } from "./handler.ts";

app.setup({ enableHttpStream: true });

// SLUICE_CONFIG (a file, watched for changes, or inline JSON), or Azure App Configuration when
// SLUICE_APPCONFIG_CONNECTION_STRING is set (polled through its sentinel key). Loaded before the
// route is registered: an invalid or unreadable config fails the app's start, as before.
const source = await openNodeConfigSource([], process.env);
if (!source) throw new Error("sluice: set SLUICE_CONFIG (a path or inline JSON) or SLUICE_APPCONFIG_CONNECTION_STRING in the Function App settings");
const client = createUpstreamClient();
const usage = nodeSinks(source.initial.config.metering.sinks);
const limiter = new InProcessRateLimiter();
const holder = new GatewayHolder((config, configStatus) => createGateway({ config, upstream: client.upstream, usageSinks: usage.sinks, limiter, configStatus }), source.initial);
const follower = source.follow(holder);

// One catch-all route; host.json sets an empty route prefix so client paths reach the core unchanged.
app.http("sluice", {
  route: "{*path}",
  methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
  authLevel: "anonymous",
  handler: createFunctionsHandler(holder.gateway),
});

// A graceful worker shutdown (the host's WorkerTerminate) runs this before the process exits:
// stop following config changes, let the upstream connections finish, write the usage lines
// still batched and close the usage files.
app.hook.appTerminate(async () => {
  follower?.close();
  holder.closeProfiles();
  await client.close();
  await usage.close();
});
