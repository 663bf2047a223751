/** One watched body read: it is over when `deadline` passes before the next `touch`. */
export interface IdleEntry {
  /** Epoch ms after which the body counts as idle. */
  deadline: number;
  onIdle(): void;
}

/**
 * Watches upstream bodies for silence with one sweep timer for all of them instead of a timer per
 * chunk: a body's deadline moves forward with each byte (a field write), and the sweep, every
 * quarter of the shortest idle timeout (at most every second), ends those past theirs. A body is
 * only watched while the relay waits on the backend, so a slow client never counts as a silent
 * backend. The timer runs only while something is watched.
 */
export class IdleWatch {
  private readonly entries = new Set<IdleEntry>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private everyMs = 1000;

  constructor(private readonly now: () => number = Date.now) {}

  watch(entry: IdleEntry, idleMs: number): void {
    this.entries.add(entry);
    const every = Math.max(5, Math.min(1000, Math.floor(idleMs / 4)));
    if (this.timer && every >= this.everyMs) return;
    if (this.timer) clearInterval(this.timer);
    this.everyMs = every;
    this.timer = setInterval(() => this.sweep(), every);
    (this.timer as { unref?: () => void }).unref?.();
  }

  unwatch(entry: IdleEntry): void {
    this.entries.delete(entry);
    if (!this.entries.size && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.everyMs = 1000;
    }
  }

  private sweep(): void {
    const now = this.now();
    for (const e of this.entries) {
      if (e.deadline > now) continue;
      this.unwatch(e);
      e.onIdle();
    }
  }
}

/** The process's watch (one per isolate on Workers). */
export const idleWatch = new IdleWatch();

/** A read that did not finish within the idle timeout. */
export class UpstreamIdle extends Error {
  constructor(readonly idleMs: number) {
    super(`no body byte within ${idleMs} ms`);
    this.name = "UpstreamIdle";
  }
}

/**
 * `reader.read()`, rejected with UpstreamIdle (and the body cancelled) when no byte comes within
 * `idleMs`. One promise and one watch entry per read; no timer of its own.
 */
export function readWithin(reader: ReadableStreamDefaultReader<Uint8Array>, idleMs: number, now: () => number = Date.now): Promise<ReadableStreamReadResult<Uint8Array>> {
  return new Promise((resolve, reject) => {
    const entry: IdleEntry = {
      deadline: now() + idleMs,
      onIdle: () => {
        reject(new UpstreamIdle(idleMs));
        reader.cancel(new UpstreamIdle(idleMs)).catch(() => undefined);
      },
    };
    idleWatch.watch(entry, idleMs);
    reader.read().then(
      (r) => {
        idleWatch.unwatch(entry);
        resolve(r);
      },
      (err: unknown) => {
        idleWatch.unwatch(entry);
        reject(err);
      },
    );
  });
}
