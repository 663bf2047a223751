import { createHash } from "node:crypto";

// Prints the value for auth.apiKeys[].hash: the key itself never goes into the config.
const key = process.argv[2];
if (!key) {
  console.error("usage: npm run hash-key -- <api key>");
  process.exit(2);
}
console.log(`sha256:${createHash("sha256").update(key).digest("hex")}`);
