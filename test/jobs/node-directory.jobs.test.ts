import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startNodeGatewayWithEvents } from "../harness/node.ts";
import { jobConformance } from "./job-suite.ts";

/** The Node gateway with its embedded job store: a fresh directory per gateway. */
jobConformance("node, directory store", async (config) => {
  const dir = mkdtempSync(join(tmpdir(), "sluice-jobs-"));
  const gw = await startNodeGatewayWithEvents({ ...config, jobs: { ...config.jobs, store: { type: "directory", path: dir } } });
  return { ...gw, close: async () => {
    await gw.close();
    rmSync(dir, { recursive: true, force: true });
  } };
});
