/** The job conformance suite on the Node gateway with Azure Blob + Storage Queue (Azurite): a container and queue of its own per gateway. */
import { randomUUID } from "node:crypto";
import { useAzurite } from "../harness/azurite.ts";
import { startNodeGatewayWithEvents } from "../harness/node.ts";
import { jobConformance } from "./job-suite.ts";

const azurite = useAzurite();

jobConformance("node, Azure Blob + Storage Queue (Azurite)", (config) => {
  const name = `jobs-${randomUUID().replaceAll("-", "").slice(0, 20)}`;
  return startNodeGatewayWithEvents({ ...config, jobs: { ...config.jobs, store: { type: "azure", connectionString: azurite().connectionString, container: name, queue: name } } });
});
