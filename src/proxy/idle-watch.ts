import { clampDelay } from "../timers.ts";

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
    const every = Math.min(1000, clampDelay(Math.floor(idleMs / 4), 5));
    if (this.timer && every >= this.everyMs) return;
    if (this.timer) clearInterval(this.timer);
    this.everyMs = every;
    this.timer = setInterval(() => this.sweep(), every);
    (this.timer as { unref?: () => void }).unref?.();
  }

  unwatch(entry: IdleEntry): void {
    // The timer stops at the next sweep that finds nothing watched, not here: a busy gateway
    // watches and unwatches on every request, and should not make a timer each time.
    this.entries.delete(entry);
  }

  private sweep(): void {
    if (!this.entries.size) {
      clearInterval(this.timer);
      this.timer = undefined;
      this.everyMs = 1000;
      return;
    }
    const now = this.now();
    for (const e of this.entries) {
      if (e.deadline > now) continue;
      this.entries.delete(e);
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

/** What the relay reads an upstream body through: a Web stream's reader, or an adapter's lighter one. */
export interface BodyReader {
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  cancel(reason?: unknown): Promise<void>;
}

/**
 * Reads a body with an idle timeout: each read is watched, and one that gets no byte within
 * `idleMs` cancels the body and throws UpstreamIdle. One watch entry per body, reused for every
 * read; no timer and no extra promise per chunk.
 */
export class IdleReader implements IdleEntry {
  deadline = 0;
  private idled = false;

  constructor(
    readonly reader: BodyReader,
    private readonly idleMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  onIdle(): void {
    this.idled = true;
    // The pending read then ends (done), which `read` turns into UpstreamIdle.
    this.reader.cancel(new UpstreamIdle(this.idleMs)).catch(() => undefined);
  }

  async read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    if (this.idled) throw new UpstreamIdle(this.idleMs);
    this.deadline = this.now() + this.idleMs;
    idleWatch.watch(this, this.idleMs);
    try {
      const r = await this.reader.read();
      if (this.idled) throw new UpstreamIdle(this.idleMs);
      return r;
    } finally {
      idleWatch.unwatch(this);
    }
  }

  cancel(reason?: unknown): Promise<void> {
    return this.reader.cancel(reason);
  }
}
