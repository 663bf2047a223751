/**
 * Completion notification on Azure: a profile's `notify.queue` gets one message per finished job
 * in that Storage Queue of the job store's account (base64 JSON, what a Functions queue trigger
 * reads), read back from Azurite as a consumer would.
 */
import { randomUUID } from "node:crypto";
import { QueueClient } from "@azure/storage-queue";
import { describe, expect, it } from "vitest";
import { useAzurite } from "../harness/azurite.ts";
import { closeAfterEach, eventedGateway, sim } from "../harness/e2e.ts";
import { until } from "../harness/until.ts";

const azurite = useAzurite();
closeAfterEach();

describe("job notifications to an Azure Storage Queue", () => {
  it("sends the final status of each finished job, once, as base64 JSON", async () => {
    const b = await sim("b");
    const name = `jobs-${randomUUID().replaceAll("-", "").slice(0, 20)}`;
    const events = `events-${randomUUID().replaceAll("-", "").slice(0, 20)}`;
    const gw = await eventedGateway({
      profiles: { jobs: { async: true, notify: { queue: events } } },
      auth: { defaultProfile: "jobs" },
      jobs: { store: { type: "azure", connectionString: azurite().connectionString, container: name, queue: name } },
      backends: [{ name: "b", url: b.url, kind: "azure-openai", models: ["gpt-4o"] }],
    });
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json", prefer: "respond-async", "api-key": "k" }, body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }) });
      expect(r.status).toBe(202);
      ids.push(((await r.json()) as { id: string }).id);
    }
    const queue = new QueueClient(azurite().connectionString, events);
    const seen = new Map<string, { type: string; job: { id: string; status: string } }>();
    await until(
      "both notifications",
      async () => {
        if (!(await queue.exists())) return false;
        const got = await queue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 60 });
        for (const m of got.receivedMessageItems) {
          const body = JSON.parse(Buffer.from(m.messageText, "base64").toString("utf8")) as { type: string; job: { id: string; status: string } };
          expect(seen.has(body.job.id), `one message for ${body.job.id}`).toBe(false);
          seen.set(body.job.id, body);
        }
        return seen.size === 2;
      },
      15_000,
      200,
    );
    expect([...seen.keys()].sort()).toEqual([...ids].sort());
    for (const m of seen.values()) expect(m).toMatchObject({ type: "job.finished", job: { status: "succeeded" } });
    // Nothing more arrives: one message per job.
    await new Promise((r) => setTimeout(r, 500));
    expect((await queue.receiveMessages({ numberOfMessages: 32 })).receivedMessageItems).toHaveLength(0);
  });
});
