/** The job-store conformance suite against the Node gateway's embedded store: a fresh directory per test. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DirectoryJobStore } from "../../adapters/node/job-directory.ts";
import { jobStoreSuite } from "./job-store-suite.ts";

jobStoreSuite("directory", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sluice-jobstore-"));
  const store = await DirectoryJobStore.open(dir);
  return { store, queue: store, close: async () => rmSync(dir, { recursive: true, force: true }) };
});
