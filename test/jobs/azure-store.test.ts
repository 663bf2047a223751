/**
 * The job-store conformance suite against AzureJobStore + AzureJobQueue on Azurite, each test on
 * a container and a queue of its own (deleted after it), all on one Azurite per file.
 */
import { randomUUID } from "node:crypto";
import { azureJobsFromConnectionString } from "../../adapters/azure/job-store.ts";
import { useAzurite } from "../harness/azurite.ts";
import { jobStoreSuite } from "./job-store-suite.ts";

const azurite = useAzurite();

jobStoreSuite("azure (Azurite)", async () => {
  // Container and queue names: 3-63 lowercase letters, digits and single hyphens.
  const name = `jobs-${randomUUID().replaceAll("-", "").slice(0, 20)}`;
  const jobs = azureJobsFromConnectionString(azurite().connectionString, { container: name, queue: name });
  await jobs.ensure();
  // ensure() twice: the second finds both and changes nothing.
  await jobs.ensure();
  return {
    store: jobs.store,
    queue: jobs.queue,
    async close() {
      await Promise.all([jobs.store.container.deleteIfExists(), jobs.queue.client.deleteIfExists()]);
    },
  };
});
