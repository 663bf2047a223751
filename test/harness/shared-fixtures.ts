/**
 * The recorded provider responses live outside this repository, in ../shared/fixtures/recorded/
 * beside the clone (CI lays them there and fails without them: .ci/run). A clone without them
 * still runs every other test: the tests that read them are skipped, with one line saying why.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const SHARED_FIXTURES_DIR = fileURLToPath(new URL("../../../shared/fixtures/recorded/", import.meta.url));

/** Whether ../shared/fixtures/recorded/ is there. */
export const HAVE_SHARED_FIXTURES = existsSync(SHARED_FIXTURES_DIR);

const WHY = `needs the recorded responses in ${SHARED_FIXTURES_DIR} (the project's shared/ folder beside this clone)`;
let told = false;

/**
 * A test's title, marked when the fixtures are missing (then the test is skipped: use with
 * `it.skipIf(!HAVE_SHARED_FIXTURES)`); the first such test in a file prints why, once.
 */
export function needsFixtures(title: string): string {
  if (HAVE_SHARED_FIXTURES) return title;
  if (!told) {
    told = true;
    console.warn(`sluice tests: skipping the tests that ${WHY.replace("needs", "need")}`);
  }
  return `${title} [skipped: ${WHY}]`;
}
