/** A misbehaviour to inject into one response (or every response, via `always`). */
export interface Fault {
  /** Answer with this status; the body is an OpenAI-style error unless `body` is given. */
  status?: number;
  /** Extra response headers, e.g. {"retry-after-ms":"2000"}. Applied last, so they override defaults. */
  headers?: Record<string, string>;
  /** Raw body for status responses. */
  body?: string;
  /** 429 with `S7PREQUEUE: true`, like the APIM priority-with-retry policy. */
  requeue?: boolean;
  /** Destroy the connection before headers, or after N body chunks (SSE events) were sent. */
  reset?: "before-headers" | number;
  /** Never answer, until the client goes away (or 10 minutes pass). */
  hang?: boolean;
  /** Send the headers (a JSON answer with its content-length) and this many body chunks, then nothing more until the client goes away. */
  stallAfter?: number;
  /** Wait this long before sending headers. */
  firstByteDelayMs?: number;
  /** Delay between body chunks. */
  paceMs?: number;
  /** Number of content chunks (= completion tokens) in a generated answer; default 8. */
  chunks?: number;
  /** Serve this recorded fixture file's bytes exactly. */
  fixture?: string;
}

export interface ReceivedRequest {
  seq: number;
  method: string;
  path: string;
  /** The query string without the leading "?". */
  query: string;
  /** Lower-cased names. */
  headers: Record<string, string>;
  body: string;
  at: number;
}

export interface SimulatorStats {
  name: string;
  received: number;
  /** The last 500 received requests, oldest first. */
  requests: ReceivedRequest[];
  /** Response bodies still streaming. */
  open: number;
  /** The most response bodies streaming at once since the last reset: the concurrency the backend saw. */
  peakOpen: number;
  /** Response bodies cancelled by the client (disconnect). */
  cancelled: number;
  /** Response bodies delivered to the end. */
  completed: number;
}

export interface SimulatorOptions {
  name: string;
  /** Recorded responses by file name. */
  fixtures?: Record<string, Uint8Array>;
  /** Default delay between body chunks. */
  paceMs?: number;
  /** Tokens-per-minute limit over a sliding 60 s window; off when absent. */
  tpm?: number;
  now?: () => number;
}

/** Supplied by the host: what a Web-standard handler cannot do by itself. */
export interface HostHooks {
  /** Destroy the socket now, without any HTTP response. */
  resetConnection(): void;
}

export interface Simulator {
  readonly name: string;
  fetch(request: Request, hooks?: HostHooks): Promise<Response>;
  stats(): SimulatorStats;
  /** Queue faults; each applies to one next received request, FIFO. Appends to the queue. */
  script(next: Fault[]): void;
  /** Applies to every request once the `next` queue is empty; null clears it. */
  setAlways(fault: Fault | null): void;
  /** Clears stats, the script, `always` and the token window. */
  reset(): void;
}
