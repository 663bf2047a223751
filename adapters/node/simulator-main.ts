/** `npm run simulator`: one simulator on a fixed port, for the demo and manual poking. */
import { parseArgs } from "node:util";
import { startSimulator } from "./simulator-server.ts";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "9000" },
    name: { type: "string", default: "sim" },
    host: { type: "string", default: "127.0.0.1" },
    pace: { type: "string" },
    tpm: { type: "string" },
    fixtures: { type: "string" },
  },
});

function numberFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) {
    console.error(`simulator: --${flag} must be a non-negative number, got '${value}'`);
    process.exit(2);
  }
  return n;
}

const running = await startSimulator({
  name: values.name,
  host: values.host,
  port: numberFlag("port", values.port) ?? 9000,
  ...(values.pace !== undefined ? { paceMs: numberFlag("pace", values.pace)! } : {}),
  ...(values.tpm !== undefined ? { tpm: numberFlag("tpm", values.tpm)! } : {}),
  ...(values.fixtures !== undefined ? { fixturesDir: values.fixtures } : {}),
});

console.log(`simulator '${running.name}' listening on ${running.url}`);
console.log(`try:
  curl -N ${running.url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 \\
    -H 'content-type: application/json' \\
    -d '{"messages":[{"role":"user","content":"hello"}],"stream":true,"stream_options":{"include_usage":true}}'
faults:  add -H 'x-sim-fault: {"status":429,"headers":{"retry-after-ms":"2000"}}'
stats:   curl ${running.url}/_sim/stats`);

const stop = (): void => {
  void running.close().then(() => process.exit(0));
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
