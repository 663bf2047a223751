import { QueueServiceClient } from "@azure/storage-queue";
import type { JobStoreConfig } from "../../src/config/schema.ts";
import type { QueueNotifier } from "../../src/jobs/service.ts";
import { azureJobsFromConnectionString, type AzureJobQueue, type AzureJobStore } from "./job-store.ts";

/**
 * Sends notifications to Storage Queues of the job store's account, creating each queue the
 * first time. Messages are base64 JSON, what a Functions queue trigger reads by default.
 */
export function storageQueueNotifier(connectionString: string): QueueNotifier {
  const service = QueueServiceClient.fromConnectionString(connectionString);
  const ready = new Map<string, Promise<unknown>>();
  return async (queue, message) => {
    const client = service.getQueueClient(queue);
    let made = ready.get(queue);
    if (!made) {
      made = client.createIfNotExists();
      ready.set(queue, made);
      made.catch(() => ready.delete(queue));
    }
    await made;
    await client.sendMessage(Buffer.from(message, "utf8").toString("base64"));
  };
}

/** The Azure job store of a config (`jobs.store.type: "azure"`): Blob for jobs, a Storage Queue for their ids; created when missing. */
export async function openAzureJobs(config: Extract<JobStoreConfig, { type: "azure" }>): Promise<{ store: AzureJobStore; queue: AzureJobQueue; notifyQueue: QueueNotifier }> {
  const jobs = azureJobsFromConnectionString(config.connectionString, { container: config.container, queue: config.queue });
  await jobs.ensure();
  return { store: jobs.store, queue: jobs.queue, notifyQueue: storageQueueNotifier(config.connectionString) };
}
