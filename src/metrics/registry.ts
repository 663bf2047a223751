/**
 * A small Prometheus registry rendering the text exposition format 0.0.4.
 *
 * - Counters and histograms keep their series in nested maps keyed by the raw label values, so
 *   updating an existing series allocates nothing but the caller's label array.
 * - Gauges (and counters read from elsewhere, e.g. scheduler stats) are computed at scrape time
 *   by callbacks.
 * - Each metric holds at most `maxSeries` label combinations; beyond that, new combinations have
 *   their foldable label values replaced by `other`, so random callers or models cannot grow
 *   memory without bound.
 * - An empty label value is left out of the output (Prometheus treats `l=""` as no label).
 *
 * Web-standard only: no Node APIs.
 */

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Label value that series beyond a metric's series bound are folded into. */
export const OVERFLOW_LABEL_VALUE = "other";

export const DEFAULT_MAX_SERIES = 10_000;

/**
 * Extra series a metric may create beyond `maxSeries` for folded combinations (which keep their
 * non-foldable label values); past that, every label value becomes `other`.
 */
const FOLDED_SLACK = 1_000;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const NEEDS_LABEL_ESCAPE = /[\\"\n]/;
const NO_LABELS: readonly string[] = [];

/** Escapes a label value: backslash, double quote and line feed. */
export function escapeLabelValue(value: string): string {
  if (!NEEDS_LABEL_ESCAPE.test(value)) return value;
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** Escapes HELP text: backslash and line feed. */
export function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** A sample value as Prometheus parses it: integers plainly, `+Inf`, `-Inf`, `NaN`. */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Number.POSITIVE_INFINITY) return "+Inf";
  if (v === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(v);
}

export interface MetricOptions {
  /** Label combinations kept before folding into `other`. Default: the registry's. */
  maxSeries?: number;
  /** Labels whose values are replaced by `other` once the bound is reached. Default: all. */
  foldable?: readonly string[];
}

export interface RegistryOptions {
  /** Default bound on label combinations per metric (10,000). */
  maxSeries?: number;
}

/** Called at scrape time; report each sample through `sample`. */
export type Collect = (sample: (labelValues: readonly string[], value: number) => void) => void;

interface Family {
  readonly name: string;
  render(out: string[]): void;
}

/** Renders `a="x",b="y"` for the non-empty values (no braces). */
function labelPairs(names: readonly string[], values: readonly string[]): string {
  let s = "";
  for (let i = 0; i < names.length; i++) {
    const v = values[i]!;
    if (v === "") continue;
    if (s !== "") s += ",";
    s += `${names[i]}="${escapeLabelValue(v)}"`;
  }
  return s;
}

function header(out: string[], name: string, help: string, type: string): void {
  out.push(`# HELP ${name} ${escapeHelp(help)}\n# TYPE ${name} ${type}\n`);
}

type Node<S> = Map<string, Node<S> | S>;

/** Series of one metric, found by label values through one map level per label. */
class SeriesStore<S> {
  private readonly root: Node<S> = new Map();
  private single: S | undefined;
  readonly list: S[] = [];
  private readonly fold: boolean[];

  constructor(
    private readonly labelNames: readonly string[],
    private readonly maxSeries: number,
    foldable: readonly string[] | undefined,
    private readonly create: (labels: string) => S,
  ) {
    for (const f of foldable ?? []) {
      if (!labelNames.includes(f)) throw new Error(`metrics: foldable label ${f} is not a label of the metric`);
    }
    this.fold = labelNames.map((n) => foldable === undefined || foldable.includes(n));
  }

  get size(): number {
    return this.list.length;
  }

  /** The series of exactly these values, without creating it. */
  peek(values: readonly string[]): S | undefined {
    if (values.length !== this.labelNames.length) return undefined;
    return values.length === 0 ? this.single : this.find(values);
  }

  get(values: readonly string[]): S {
    const n = this.labelNames.length;
    if (values.length !== n) throw new Error(`metrics: expected ${n} label values, got ${values.length}`);
    if (n === 0) {
      if (this.single === undefined) {
        this.single = this.create("");
        this.list.push(this.single);
      }
      return this.single;
    }
    const found = this.find(values);
    if (found !== undefined) return found;
    if (this.list.length < this.maxSeries) return this.insert(values);
    // Over the bound: fold the foldable labels into `other`.
    const folded = values.map((v, i) => (this.fold[i] ? OVERFLOW_LABEL_VALUE : v));
    const f = this.find(folded);
    if (f !== undefined) return f;
    if (this.list.length < this.maxSeries + FOLDED_SLACK) return this.insert(folded);
    const all = values.map(() => OVERFLOW_LABEL_VALUE);
    return this.find(all) ?? this.insert(all);
  }

  private find(values: readonly string[]): S | undefined {
    let node: Node<S> = this.root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      const next = node.get(values[i]!) as Node<S> | undefined;
      if (next === undefined) return undefined;
      node = next;
    }
    return node.get(values[last]!) as S | undefined;
  }

  private insert(values: readonly string[]): S {
    let node: Node<S> = this.root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      let next = node.get(values[i]!) as Node<S> | undefined;
      if (next === undefined) {
        next = new Map();
        node.set(values[i]!, next);
      }
      node = next;
    }
    const s = this.create(labelPairs(this.labelNames, values));
    node.set(values[last]!, s);
    this.list.push(s);
    return s;
  }
}

interface CounterSeries {
  readonly labels: string;
  value: number;
}

/** A monotonically increasing count per label set. */
export class Counter implements Family {
  private readonly series: SeriesStore<CounterSeries>;

  constructor(
    readonly name: string,
    private readonly help: string,
    readonly labelNames: readonly string[],
    maxSeries: number,
    options: MetricOptions = {},
  ) {
    this.series = new SeriesStore(labelNames, options.maxSeries ?? maxSeries, options.foldable, (labels) => ({ labels, value: 0 }));
  }

  /** Adds `by` (default 1); negative, NaN and infinite amounts are ignored. */
  inc(labelValues: readonly string[] = NO_LABELS, by = 1): void {
    if (!(by >= 0) || by === Number.POSITIVE_INFINITY) return;
    this.series.get(labelValues).value += by;
  }

  /** The current value of one label set (0 when never incremented). */
  value(labelValues: readonly string[] = NO_LABELS): number {
    return this.series.peek(labelValues)?.value ?? 0;
  }

  /** Label combinations held. */
  get seriesCount(): number {
    return this.series.size;
  }

  render(out: string[]): void {
    header(out, this.name, this.help, "counter");
    for (const s of this.series.list) {
      out.push(s.labels === "" ? this.name : `${this.name}{${s.labels}}`, " ", formatValue(s.value), "\n");
    }
  }
}

interface HistogramSeries {
  readonly labels: string;
  /** Observations per bucket (not cumulative); the last slot is (last bound, +Inf). */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

/** Cumulative `_bucket{le}` counts, `_sum` and `_count` per label set. */
export class Histogram implements Family {
  private readonly series: SeriesStore<HistogramSeries>;
  private readonly bounds: Float64Array;
  /** `le="…"` for each bound, then `+Inf`. */
  private readonly le: string[];

  constructor(
    readonly name: string,
    private readonly help: string,
    readonly labelNames: readonly string[],
    buckets: readonly number[],
    maxSeries: number,
    options: MetricOptions = {},
  ) {
    if (labelNames.includes("le")) throw new Error(`metrics: ${name}: "le" is reserved for histogram buckets`);
    const sorted = [...new Set(buckets.filter((b) => Number.isFinite(b)))].sort((a, b) => a - b);
    if (sorted.length === 0) throw new Error(`metrics: ${name}: a histogram needs at least one finite bucket`);
    this.bounds = Float64Array.from(sorted);
    this.le = [...sorted.map(formatValue), "+Inf"].map((v) => `le="${v}"`);
    const slots = sorted.length + 1;
    this.series = new SeriesStore(labelNames, options.maxSeries ?? maxSeries, options.foldable, (labels) => ({
      labels,
      counts: new Float64Array(slots),
      sum: 0,
      count: 0,
    }));
  }

  /** Records one observation; NaN is ignored. */
  observe(labelValues: readonly string[], value: number): void {
    if (Number.isNaN(value)) return;
    const s = this.series.get(labelValues);
    // First bound >= value (buckets are upper-inclusive).
    const b = this.bounds;
    let lo = 0;
    let hi = b.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid]! < value) lo = mid + 1;
      else hi = mid;
    }
    s.counts[lo]!++;
    s.sum += value;
    s.count++;
  }

  get buckets(): readonly number[] {
    return Array.from(this.bounds);
  }

  get seriesCount(): number {
    return this.series.size;
  }

  render(out: string[]): void {
    header(out, this.name, this.help, "histogram");
    const bucket = `${this.name}_bucket{`;
    for (const s of this.series.list) {
      const prefix = s.labels === "" ? bucket : `${bucket}${s.labels},`;
      let cumulative = 0;
      for (let i = 0; i < this.le.length; i++) {
        cumulative += s.counts[i]!;
        out.push(prefix, this.le[i]!, "} ", formatValue(cumulative), "\n");
      }
      const braces = s.labels === "" ? "" : `{${s.labels}}`;
      out.push(`${this.name}_sum${braces} `, formatValue(s.sum), "\n", `${this.name}_count${braces} `, formatValue(s.count), "\n");
    }
  }
}

/** A gauge or counter whose samples are produced at scrape time. */
class Scraped implements Family {
  constructor(
    readonly name: string,
    private readonly help: string,
    private readonly type: "gauge" | "counter",
    private readonly labelNames: readonly string[],
    private readonly collect: Collect,
    private readonly maxSeries: number,
  ) {}

  render(out: string[]): void {
    header(out, this.name, this.help, this.type);
    const n = this.labelNames.length;
    let emitted = 0;
    let overflow: number | undefined;
    this.collect((values, value) => {
      if (values.length !== n) throw new Error(`metrics: ${this.name}: expected ${n} label values, got ${values.length}`);
      if (emitted >= this.maxSeries) {
        overflow = (overflow ?? 0) + value;
        return;
      }
      emitted++;
      const labels = labelPairs(this.labelNames, values);
      out.push(labels === "" ? this.name : `${this.name}{${labels}}`, " ", formatValue(value), "\n");
    });
    if (overflow !== undefined) {
      const labels = labelPairs(this.labelNames, this.labelNames.map(() => OVERFLOW_LABEL_VALUE));
      out.push(`${this.name}{${labels}} `, formatValue(overflow), "\n");
    }
  }
}

export class Registry {
  private readonly families: Family[] = [];
  private readonly names = new Set<string>();
  private readonly maxSeries: number;

  constructor(options: RegistryOptions = {}) {
    this.maxSeries = options.maxSeries ?? DEFAULT_MAX_SERIES;
  }

  counter(name: string, help: string, labelNames: readonly string[] = [], options?: MetricOptions): Counter {
    return this.add(new Counter(this.check(name, labelNames), help, labelNames, this.maxSeries, options));
  }

  histogram(name: string, help: string, labelNames: readonly string[], buckets: readonly number[], options?: MetricOptions): Histogram {
    return this.add(new Histogram(this.check(name, labelNames), help, labelNames, buckets, this.maxSeries, options));
  }

  /** A gauge whose samples `collect` reports at each scrape. */
  gauge(name: string, help: string, labelNames: readonly string[], collect: Collect): void {
    this.add(new Scraped(this.check(name, labelNames), help, "gauge", labelNames, collect, this.maxSeries));
  }

  /** A counter kept elsewhere (e.g. scheduler stats), read by `collect` at each scrape. */
  scrapedCounter(name: string, help: string, labelNames: readonly string[], collect: Collect): void {
    this.add(new Scraped(this.check(name, labelNames), help, "counter", labelNames, collect, this.maxSeries));
  }

  /** The whole exposition text, metrics in registration order. */
  render(): string {
    const out: string[] = [];
    for (const f of this.families) f.render(out);
    return out.join("");
  }

  private check(name: string, labelNames: readonly string[]): string {
    if (!METRIC_NAME.test(name)) throw new Error(`metrics: invalid metric name ${JSON.stringify(name)}`);
    if (this.names.has(name)) throw new Error(`metrics: ${name} registered twice`);
    const seen = new Set<string>();
    for (const l of labelNames) {
      if (!LABEL_NAME.test(l) || l.startsWith("__")) throw new Error(`metrics: ${name}: invalid label name ${JSON.stringify(l)}`);
      if (seen.has(l)) throw new Error(`metrics: ${name}: label ${l} given twice`);
      seen.add(l);
    }
    return name;
  }

  private add<F extends Family>(family: F): F {
    this.names.add(family.name);
    this.families.push(family);
    return family;
  }
}
