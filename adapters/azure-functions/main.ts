import { app } from "@azure/functions";
import { createGateway } from "../../src/gateway.ts";
import { loadNodeConfig } from "../node/config-source.ts";
import { nodeSinks } from "../node/sinks.ts";
import { createUpstreamClient } from "../node/upstream.ts";
import { createFunctionsHandler } from "./handler.ts";

app.setup({ enableHttpStream: true });

const config = loadNodeConfig([], process.env);
if (!config) throw new Error("sluice: set SLUICE_CONFIG (a path or inline JSON) in the Function App settings");
const gateway = createGateway({ config, upstream: createUpstreamClient().upstream, usageSinks: nodeSinks(config.metering.sinks).sinks });

// One catch-all route; host.json sets an empty route prefix so client paths reach the core unchanged.
app.http("sluice", {
  route: "{*path}",
  methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
  authLevel: "anonymous",
  handler: createFunctionsHandler(gateway),
});
