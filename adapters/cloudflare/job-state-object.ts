import { DurableObject } from "cloudflare:workers";
import { JOB_ID, nextStatus, TERMINAL, type JobRecord } from "../../src/jobs/port.ts";

/** Job ids the object accepts (as the service and the store do): nothing path-like. */

/** What a Worker calls on the job state object (every call a Promise across the RPC boundary). */
export interface JobStateRpc {
  /** Stores a new record (a record already there under the id is replaced: a retried create). */
  create(record: JobRecord): Promise<void>;
  get(id: string): Promise<JobRecord | null>;
  /** Merges the patch, applying nextStatus; null when there is no such job. */
  update(id: string, patch: Partial<Omit<JobRecord, "id">>): Promise<JobRecord | null>;
  forget(id: string): Promise<void>;
  unfinished(): Promise<string[]>;
  finishedBefore(before: number): Promise<string[]>;
}

/** The part of the object's SQLite storage (`ctx.storage.sql`) used here; the project's workers typings declare only setAlarm. */
interface SqlCursor<T> {
  toArray(): T[];
}
interface SqlStorage {
  exec<T = Record<string, string | number | null>>(query: string, ...bindings: unknown[]): SqlCursor<T>;
}

/** Whether a record is one `unfinished()` lists: not ended, or ended and still to be notified. */
const isOpen = (r: JobRecord) => !TERMINAL.has(r.status) || !r.notified;

/**
 * The job records of a Workers gateway (CONTRACT §7): one SQLite-backed Durable Object (named
 * "jobs"), a row per job holding the record as JSON, beside the two columns its listings are
 * answered from (indexed). Requests and results live in R2 (job-store.ts); only the small,
 * often-read records are here.
 *
 * Every method runs to its end without awaiting anything, so a read-merge-write `update` is one
 * atomic step: concurrent updates from any isolate are applied one after the other and none is
 * lost, and `nextStatus` is applied against the record as it is at that moment (a late runner
 * cannot undo a cancel). SQLite writes are durable before the call answers (the object's output
 * gate holds the reply until they are).
 *
 * One object serves every job of the deployment: each poll, heartbeat and state change is one
 * call to it. A Durable Object handles on the order of a thousand such calls a second, which is
 * far above what the jobs of one gateway make (a running job heartbeats every leaseMs/3).
 */
export class JobStateObject extends DurableObject {
  private get sql(): SqlStorage {
    return (this.ctx.storage as unknown as { sql: SqlStorage }).sql;
  }

  private ready = false;

  private schema(): SqlStorage {
    const sql = this.sql;
    if (!this.ready) {
      sql.exec(`CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        open INTEGER NOT NULL,
        finished_at INTEGER
      )`);
      sql.exec("CREATE INDEX IF NOT EXISTS jobs_open ON jobs (open) WHERE open = 1");
      sql.exec("CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL");
      this.ready = true;
    }
    return sql;
  }

  create(record: JobRecord): void {
    if (!JOB_ID.test(record.id)) throw new Error(`invalid job id ${JSON.stringify(record.id)}`);
    this.write(this.schema(), record);
  }

  get(id: string): JobRecord | null {
    if (!JOB_ID.test(id)) return null;
    return this.read(this.schema(), id);
  }

  update(id: string, patch: Partial<Omit<JobRecord, "id">>): JobRecord | null {
    if (!JOB_ID.test(id)) return null;
    const sql = this.schema();
    const current = this.read(sql, id);
    if (!current) return null;
    // An undefined in the patch means "not given", as after a JSON round trip.
    const given = Object.fromEntries(Object.entries(patch).filter(([k, v]) => v !== undefined && k !== "id")) as Partial<JobRecord>;
    const next: JobRecord = { ...current, ...given, id, status: nextStatus(current.status, patch.status) };
    this.write(sql, next);
    return next;
  }

  forget(id: string): void {
    if (!JOB_ID.test(id)) return;
    this.schema().exec("DELETE FROM jobs WHERE id = ?", id);
  }

  unfinished(): string[] {
    return this.schema()
      .exec<{ id: string }>("SELECT id FROM jobs WHERE open = 1")
      .toArray()
      .map((r) => r.id);
  }

  finishedBefore(before: number): string[] {
    return this.schema()
      .exec<{ id: string }>("SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", before)
      .toArray()
      .map((r) => r.id);
  }

  private read(sql: SqlStorage, id: string): JobRecord | null {
    const row = sql.exec<{ record: string }>("SELECT record FROM jobs WHERE id = ?", id).toArray()[0];
    return row ? (JSON.parse(row.record) as JobRecord) : null;
  }

  private write(sql: SqlStorage, r: JobRecord): void {
    sql.exec(
      "INSERT INTO jobs (id, record, open, finished_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET record = excluded.record, open = excluded.open, finished_at = excluded.finished_at",
      r.id,
      JSON.stringify(r),
      isOpen(r) ? 1 : 0,
      r.finishedAt,
    );
  }
}
