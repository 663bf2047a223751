/**
 * The same settlement on every runtime (issue 9): a client that leaves mid-stream, on Node, on
 * workerd (miniflare) and on Azure Functions (through its real registration). Each exchange ends
 * with exactly one usage event, its budget reservation settled (the next request is admitted
 * under a budget that would refuse it otherwise), and its lease released (a `maxConcurrency: 1`
 * backend serves the next request). Node and workerd see the client leave: the upstream is
 * cancelled and the event says `truncated: true`. Azure Functions does not (its stream proxy
 * reads the answer to the end): the bound shown here is the answer's own end.
 */
import { request as httpRequest } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type RunningSimulator } from "../adapters/node/simulator-server.ts";
import { startFunctionsGatewayWithEvents } from "./harness/azure-functions.ts";
import { startNodeGatewayWithEvents } from "./harness/node.ts";
import type { GatewayWithEvents, StartGatewayWithEvents } from "./harness/types.ts";
import { until } from "./harness/until.ts";
import { startWorkersGatewayWithEvents } from "./harness/workers.ts";

const RUNTIMES: Array<[string, StartGatewayWithEvents, { seesClientLeave: boolean }]> = [
  ["node", startNodeGatewayWithEvents, { seesClientLeave: true }],
  ["workerd (miniflare)", startWorkersGatewayWithEvents, { seesClientLeave: true }],
  ["azure-functions", startFunctionsGatewayWithEvents, { seesClientLeave: false }],
];

/** max_tokens 200: the estimate is the prompt (bytes / 4) plus 200. */
const BODY = JSON.stringify({ model: "gpt-4o", stream: true, stream_options: { include_usage: true }, max_tokens: 200, messages: [{ role: "user", content: "Tell me a long story." }] });
const ESTIMATE = Math.ceil(BODY.length / 4) + 200;

/** Sends a streamed request and goes away after its first chunk; resolves once the socket is gone. */
function leaveAfterFirstChunk(url: string, requestId: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": requestId } }, (res) => {
      res.once("data", () => {
        req.destroy();
        resolve();
      });
    });
    req.on("error", (err) => ((err as NodeJS.ErrnoException).code === "ECONNRESET" ? resolve() : reject(err)));
    req.end(BODY);
  });
}

for (const [runtime, start, caps] of RUNTIMES) {
  describe(`settlement when a client leaves mid-stream [${runtime}]`, () => {
    let sim: RunningSimulator | undefined;
    let gw: GatewayWithEvents | undefined;
    afterEach(async () => {
      await gw?.close();
      await sim?.close();
      gw = undefined;
      sim = undefined;
    });

    it(caps.seesClientLeave ? "one truncated usage event, the reservation refunded, the lease released, the upstream cancelled" : "one usage event once the answer ends, the reservation settled, the lease released", async () => {
      sim = await startSimulator({ name: "b" });
      // A budget one request fits in, but not two at their estimate: the second is admitted only if the first's reservation was settled to what it used.
      gw = await start({
        limits: { perCaller: { tokensPerMinute: ESTIMATE + Math.floor(ESTIMATE / 2) } },
        backends: [{ name: "b", url: sim.url, models: ["gpt-4o"], maxConcurrency: 1 }],
      });
      sim.sim.script([{ paceMs: caps.seesClientLeave ? 200 : 40, chunks: caps.seesClientLeave ? 50 : 20 }]);
      await leaveAfterFirstChunk(gw.url, "leaver-1");

      if (caps.seesClientLeave) await until("the upstream cancelled", () => sim!.sim.stats().cancelled === 1, 5_000);
      else await until("the upstream to run to its end", () => sim!.sim.stats().completed === 1, 5_000);
      await until("the usage event", () => gw!.events().filter((e) => e.requestId === "leaver-1").length === 1, 5_000);
      const [event] = gw.events().filter((e) => e.requestId === "leaver-1");
      expect(event).toMatchObject({ backend: "b", status: 200, truncated: caps.seesClientLeave });
      // What it used, well under what it reserved.
      expect(event!.totalTokens).toBeGreaterThan(0);
      expect(event!.totalTokens!).toBeLessThan(ESTIMATE / 2);

      // The lease is back and the budget holds the next request's estimate again.
      const next = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": "next-1", s7pttl: "3" }, body: BODY });
      expect(next.status).toBe(200);
      expect(next.headers.get("x-sluice-queue-ms")).toBe("0");
      expect(await next.text()).toContain("[DONE]");
      await until("the next request's event", () => gw!.events().some((e) => e.requestId === "next-1"), 5_000);
      // Exactly one event each.
      expect(gw.events().filter((e) => e.requestId === "leaver-1")).toHaveLength(1);
      expect(gw.events().filter((e) => e.requestId === "next-1")).toHaveLength(1);
    }, 20_000);
  });
}
