/**
 * `server.workers: N` (N > 1): N gateway processes on one machine behind one port, through
 * Node's cluster module, so a container with N vCPUs uses them all. The primary only supervises:
 * it listens on nothing and opens no connection. Each worker is a whole gateway — its own config
 * source and reloads, its own queue — and the workers share one capacity through `state.redis`
 * (config validation refuses N > 1 without it), exactly as replicas on several machines do.
 * The kernel spreads connections between the workers (the primary accepts and hands them out
 * round-robin, Node's default everywhere but Windows).
 *
 * Signals reach the primary (PID 1 in a container): SIGTERM and SIGINT are passed to every
 * worker, which drains as a single process does, and the primary exits once all have; SIGHUP
 * (look at the config again) is passed on too. A worker that dies otherwise is started again,
 * after a pause that grows while workers keep dying.
 */
import cluster, { type Worker } from "node:cluster";

/** Restart pauses: 100 ms doubling to 10 s, back to 100 ms after a worker lived a minute. */
const FIRST_PAUSE_MS = 100;
const MAX_PAUSE_MS = 10_000;
const STABLE_MS = 60_000;

/** True in a worker process started by `superviseWorkers`. */
export const isClusterWorker = (): boolean => cluster.isWorker;

/** Starts `count` workers running this same entry and supervises them until they have all stopped; then exits. */
export function superviseWorkers(count: number): void {
  let stopping = false;
  let pause = FIRST_PAUSE_MS;
  const started = new Map<Worker, number>();

  const fork = () => {
    const w = cluster.fork();
    started.set(w, Date.now());
  };

  cluster.on("exit", (worker, code, signal) => {
    const lived = Date.now() - (started.get(worker) ?? Date.now());
    started.delete(worker);
    if (stopping) {
      if (started.size === 0) process.exit(0);
      return;
    }
    // Exit code 2 is a config the worker refused at start: every restart would refuse it too.
    if (code === 2) {
      console.error("sluice: a worker refused the config at start; stopping");
      stopping = true;
      for (const w of started.keys()) w.process.kill("SIGTERM");
      if (started.size === 0) process.exit(2);
      return;
    }
    pause = lived > STABLE_MS ? FIRST_PAUSE_MS : Math.min(MAX_PAUSE_MS, pause * 2);
    console.error(`sluice: worker ${worker.process.pid} ended (${signal ?? `exit ${code}`}); starting another in ${pause} ms`);
    setTimeout(() => !stopping && fork(), pause).unref();
  });

  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    console.log(`sluice: ${signal}: stopping ${started.size} worker(s)`);
    for (const w of started.keys()) w.process.kill(signal);
    if (started.size === 0) process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => {
    for (const w of started.keys()) w.process.kill("SIGHUP");
  });

  console.log(`sluice: ${count} worker processes sharing one port (server.workers)`);
  for (let i = 0; i < count; i++) fork();
}
