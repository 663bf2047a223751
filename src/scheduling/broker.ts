/**
 * Where a backend's slots come from when several replicas share its `maxConcurrency` (Redis on
 * Node and Azure Functions). Each replica's queue stays in process and synchronous: it leases
 * against its `share` of the slots (`BackendLive.share`), and the broker moves slots between
 * replicas — to the one whose waiter is the most urgent across all of them when a slot frees.
 * Without a broker every slot is the process's own.
 */

/** The most urgent request waiting here for a backend: what is compared across replicas. */
export interface Waiting {
  /** Priority level: lower is more urgent. */
  level: number;
  /** When that request arrived (epoch ms): the earlier goes first within a level. */
  since: number;
  /** How many requests wait here for the backend, all levels. */
  count: number;
}

/** True when `a` goes before `b`: a more urgent level, or the same level and an earlier arrival. */
export function goesBefore(a: Pick<Waiting, "level" | "since">, b: Pick<Waiting, "level" | "since">): boolean {
  return a.level < b.level || (a.level === b.level && a.since < b.since);
}

export interface SlotBroker {
  /**
   * What waits here for backends whose slots (this replica's share) are all taken, by backend
   * name; called after changes, coalesced (once per turn of the event loop at most).
   */
  demand(waiting: ReadonlyMap<string, Waiting>): void;
  /**
   * A lease on `backend` came back; `next` is the local request it would go to. The broker may
   * take the slot for another replica (lowering the backend's share) before the queue looks.
   */
  released(backend: string, next: Waiting | undefined): void;
}
