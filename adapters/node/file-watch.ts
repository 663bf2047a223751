import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === "ENOENT";
}

/**
 * Reads a file an editor may be replacing: a missing or empty file gets one more look after
 * `pauseMs` (delete and re-create, truncate and write). Throws when it cannot be read;
 * undefined when `closed()` meanwhile.
 */
export async function readSettledFile(path: string, pauseMs: number, closed: () => boolean): Promise<string | undefined> {
  let text: string | undefined;
  for (let attempt = 0; attempt < 2 && !closed(); attempt++) {
    if (attempt) await sleep(pauseMs);
    try {
      text = await readFile(path, "utf8");
      if (text.trim()) break;
    } catch (err) {
      text = undefined;
      if (!isMissing(err) || attempt) throw err;
    }
  }
  return closed() ? undefined : text;
}

/**
 * Watches the directory of a file, not the file: editors and tools that write a new file and
 * rename it over the old one (vim, `mv`, Kubernetes ConfigMap volumes, which swap a symlinked
 * directory) replace the inode a file watch would be bound to. Events are debounced: `onChange`
 * runs `debounceMs` after the last of a burst, and at most `maxWaitMs` after its first.
 */
export class DirectoryWatch {
  private watcher: FSWatcher | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private burstStarted: number | undefined;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly debounceMs: number,
    private readonly maxWaitMs: number,
    private readonly onChange: () => void,
    private readonly onError: (message: string) => void,
  ) {}

  start(): void {
    const dir = dirname(resolve(this.path));
    this.watcher = watch(dir, { persistent: false }, () => this.changed());
    this.watcher.on("error", (err) => {
      if (this.closed) return;
      this.onError(`watching ${dir} for changes to ${this.path} failed (${err.message}); send SIGHUP to reload, or restart`);
    });
  }

  private changed(): void {
    if (this.closed) return;
    const now = Date.now();
    this.burstStarted ??= now;
    clearTimeout(this.timer);
    const wait = Math.max(0, Math.min(this.debounceMs, this.burstStarted + this.maxWaitMs - now));
    this.timer = setTimeout(() => {
      this.burstStarted = undefined;
      this.onChange();
    }, wait);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}
