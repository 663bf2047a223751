import { describe, expect, it } from "vitest";
import type { UsageEvent } from "../../src/metering/events.ts";
import {
  GatewayMetrics,
  LATENCY_BUCKETS,
  type MetricsEvent,
  type MetricsState,
  TOKEN_BUCKETS,
  declaredModels,
  genAiOperationName,
  priorityNamer,
} from "../../src/metrics/gateway-metrics.ts";
import { parseConfig } from "../../src/config/load.ts";
import { PROMETHEUS_CONTENT_TYPE, Registry, escapeLabelValue } from "../../src/metrics/registry.ts";
import { rng } from "../harness/rng.ts";

// ---------------------------------------------------------------------------------------------
// A strict parser for the text exposition format 0.0.4 (what the tests read back).

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  name: string;
  help: string;
  type: string;
  samples: Sample[];
}

const SAMPLE_LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;

function parseValue(v: string): number {
  if (v === "+Inf") return Number.POSITIVE_INFINITY;
  if (v === "-Inf") return Number.NEGATIVE_INFINITY;
  if (v === "NaN") return Number.NaN;
  if (!/^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/.test(v)) throw new Error(`bad value ${v}`);
  return Number(v);
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(text.slice(i));
    if (!m) throw new Error(`bad label at ${JSON.stringify(text.slice(i))}`);
    const name = m[1]!;
    i += m[0].length;
    let value = "";
    for (;;) {
      const c = text[i];
      if (c === undefined) throw new Error("unterminated label value");
      if (c === '"') {
        i++;
        break;
      }
      if (c === "\n") throw new Error("raw newline in label value");
      if (c === "\\") {
        const e = text[i + 1];
        if (e === "\\") value += "\\";
        else if (e === '"') value += '"';
        else if (e === "n") value += "\n";
        else throw new Error(`bad escape \\${e}`);
        i += 2;
        continue;
      }
      value += c;
      i++;
    }
    if (name in labels) throw new Error(`label ${name} twice`);
    labels[name] = value;
    if (text[i] === ",") i++;
    else if (i !== text.length) throw new Error(`expected , at ${i}`);
  }
  return labels;
}

/** The family a sample belongs to (histogram samples carry _bucket/_sum/_count). */
function familyOf(sample: string, families: Map<string, Family>): Family | undefined {
  const direct = families.get(sample);
  if (direct) return direct;
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (sample.endsWith(suffix)) {
      const f = families.get(sample.slice(0, -suffix.length));
      if (f?.type === "histogram") return f;
    }
  }
  return undefined;
}

function parse(text: string): Map<string, Family> {
  expect(text.endsWith("\n")).toBe(true);
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) {
      const [, name, help] = /^# HELP (\S+) (.*)$/.exec(line)!;
      if (families.has(name!)) throw new Error(`HELP ${name} twice`);
      families.set(name!, { name: name!, help: help!.replace(/\\n/g, "\n").replace(/\\\\/g, "\\"), type: "untyped", samples: [] });
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const [, name, type] = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line)!;
      const f = families.get(name!);
      if (!f || f.samples.length > 0) throw new Error(`TYPE ${name} without HELP or after samples`);
      f.type = type!;
      continue;
    }
    const m = SAMPLE_LINE.exec(line);
    if (!m) throw new Error(`bad line ${JSON.stringify(line)}`);
    const f = familyOf(m[1]!, families);
    if (!f) throw new Error(`sample ${m[1]} without HELP/TYPE`);
    const key = line.slice(0, line.lastIndexOf(" "));
    if (seen.has(key)) throw new Error(`duplicate series ${key}`);
    seen.add(key);
    f.samples.push({ name: m[1]!, labels: m[2] ? parseLabels(m[2]) : {}, value: parseValue(m[3]!) });
  }
  return families;
}

const matches = (labels: Record<string, string>, want: Record<string, string>): boolean =>
  Object.keys(want).length === Object.keys(labels).length && Object.entries(want).every(([k, v]) => labels[k] === v);

/** The value of exactly one series (all labels given), or undefined. */
function value(fams: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  const f = familyOf(name, fams);
  const hits = (f?.samples ?? []).filter((s) => s.name === name && matches(s.labels, labels));
  expect(hits.length).toBeLessThanOrEqual(1);
  return hits[0]?.value;
}

function series(fams: Map<string, Family>, name: string): Sample[] {
  return (familyOf(name, fams)?.samples ?? []).filter((s) => s.name === name);
}

interface ParsedHistogram {
  labels: Record<string, string>;
  buckets: Array<[number, number]>;
  sum: number;
  count: number;
}

/** Histogram series, checking that buckets are cumulative, end in +Inf and agree with _count. */
function histograms(fams: Map<string, Family>, name: string): ParsedHistogram[] {
  const f = fams.get(name);
  expect(f?.type).toBe("histogram");
  const byKey = new Map<string, ParsedHistogram>();
  const keyOf = (l: Record<string, string>) => JSON.stringify(Object.entries(l).filter(([k]) => k !== "le").sort());
  for (const s of f!.samples) {
    const key = keyOf(s.labels);
    let h = byKey.get(key);
    if (!h) {
      const { le: _le, ...rest } = s.labels;
      h = { labels: rest, buckets: [], sum: Number.NaN, count: Number.NaN };
      byKey.set(key, h);
    }
    if (s.name === `${name}_bucket`) h.buckets.push([parseValue(s.labels.le!), s.value]);
    else if (s.name === `${name}_sum`) h.sum = s.value;
    else if (s.name === `${name}_count`) h.count = s.value;
  }
  for (const h of byKey.values()) {
    expect(h.buckets.length).toBeGreaterThan(1);
    expect(h.buckets.at(-1)![0]).toBe(Number.POSITIVE_INFINITY);
    for (let i = 1; i < h.buckets.length; i++) {
      expect(h.buckets[i]![0]).toBeGreaterThan(h.buckets[i - 1]![0]);
      expect(h.buckets[i]![1]).toBeGreaterThanOrEqual(h.buckets[i - 1]![1]);
    }
    expect(h.buckets.at(-1)![1]).toBe(h.count);
    expect(Number.isFinite(h.sum)).toBe(true);
  }
  return [...byKey.values()];
}

function histogram(fams: Map<string, Family>, name: string, labels: Record<string, string>): ParsedHistogram | undefined {
  return histograms(fams, name).find((h) => matches(h.labels, labels));
}

/** Cumulative count at bound `le`. */
const at = (h: ParsedHistogram, le: number) => h.buckets.find(([b]) => b === le)![1];

// ---------------------------------------------------------------------------------------------

let seq = 0;
function event(over: Partial<MetricsEvent> = {}): MetricsEvent {
  const base: UsageEvent = {
    time: "2026-01-01T00:00:00.000Z",
    requestId: `r${++seq}`,
    caller: "team-a",
    app: null,
    priority: 2,
    model: "gpt-4o",
    operation: null,
    backend: "ptu",
    status: 200,
    attempts: 1,
    queueMs: 0,
    ttfbMs: 250,
    totalMs: 1500,
    promptTokens: 10,
    completionTokens: 20,
    totalTokens: 30,
    cachedTokens: null,
    cacheCreationTokens: null,
    reasoningTokens: null,
    usageSource: "provider",
    stream: false,
    async: false,
    truncated: false,
  };
  return { ...base, ...over };
}

const EMPTY: MetricsState = { backends: [], queue: { waiting: 0, levels: [] } };


describe("GatewayMetrics: request counters", () => {
  it("counts requests per backend, status and priority; attempts and failovers", () => {
    const m = new GatewayMetrics();
    m.emit(event());
    m.emit(event());
    m.emit(event({ backend: "payg", attempts: 3 }));
    m.emit(event({ backend: null, status: 404, attempts: 0, ttfbMs: null, promptTokens: null, completionTokens: null, totalTokens: null, usageSource: null }));
    m.emit(event({ backend: "", status: 429, attempts: 0, priority: 1 }));
    m.emit(event({ backend: "ptu", status: 503, attempts: 2, priority: 3 }));
    const f = parse(m.render(EMPTY));

    expect(f.get("sluice_requests_total")!.type).toBe("counter");
    expect(value(f, "sluice_requests_total", { backend: "ptu", status: "200", priority: "2" })).toBe(2);
    expect(value(f, "sluice_requests_total", { backend: "payg", status: "200", priority: "2" })).toBe(1);
    expect(value(f, "sluice_requests_total", { backend: "none", status: "404", priority: "2" })).toBe(1);
    expect(value(f, "sluice_requests_total", { backend: "none", status: "429", priority: "1" })).toBe(1);
    expect(value(f, "sluice_requests_total", { backend: "ptu", status: "503", priority: "3" })).toBe(1);
    expect(series(f, "sluice_requests_total")).toHaveLength(5);
    expect(series(f, "sluice_requests_total").reduce((s, x) => s + x.value, 0)).toBe(6);

    expect(value(f, "sluice_attempts_total")).toBe(1 + 1 + 3 + 0 + 0 + 2);
    expect(value(f, "sluice_failovers_total")).toBe(2 + 1);
  });

  it("exposes unlabelled counters at 0 before any request", () => {
    const f = parse(new GatewayMetrics().render(EMPTY));
    expect(value(f, "sluice_attempts_total")).toBe(0);
    expect(value(f, "sluice_failovers_total")).toBe(0);
    expect(series(f, "sluice_requests_total")).toHaveLength(0);
    expect(f.get("sluice_requests_total")!.help.length).toBeGreaterThan(0);
  });

  it("names priority levels when given a namer", () => {
    const m = new GatewayMetrics({ priorityLabel: priorityNamer({ high: 1, urgent: 1, normal: 2, low: 3 }) });
    m.emit(event({ priority: 1 }));
    m.emit(event({ priority: 7, queueMs: 40 }));
    const f = parse(m.render({ backends: [], queue: { waiting: 4, levels: [{ level: 3, waiting: 4, dispatched: 9, waitedMs: 1200 }] } }));
    expect(value(f, "sluice_requests_total", { backend: "ptu", status: "200", priority: "high" })).toBe(1);
    // A level no config names is `other`: clients may send any integer.
    expect(value(f, "sluice_requests_total", { backend: "ptu", status: "200", priority: "other" })).toBe(1);
    expect(series(f, "sluice_requests_total").map((x) => x.labels.priority)).not.toContain("7");
    expect(value(f, "sluice_queue_depth", { priority: "low" })).toBe(4);
    expect(histogram(f, "sluice_queue_wait_seconds", { priority: "other" })!.count).toBe(1);
  });
});

describe("GatewayMetrics: histograms", () => {
  it("are cumulative, upper-inclusive and agree with _count and _sum", () => {
    const m = new GatewayMetrics();
    const ttfbs = [3, 5, 250, 250, 900, 4000, 200_000];
    for (const t of ttfbs) m.emit(event({ ttfbMs: t, totalMs: t + 1000 }));
    m.emit(event({ ttfbMs: null, totalMs: 30 }));
    const f = parse(m.render(EMPTY));

    const ttfb = histogram(f, "sluice_time_to_first_byte_seconds", { backend: "ptu" })!;
    expect(ttfb.buckets.map(([le]) => le)).toEqual([...LATENCY_BUCKETS, Number.POSITIVE_INFINITY]);
    expect(ttfb.count).toBe(ttfbs.length);
    expect(ttfb.sum).toBeCloseTo(ttfbs.reduce((a, b) => a + b, 0) / 1000, 9);
    expect(at(ttfb, 0.005)).toBe(2); // 3 ms and exactly 5 ms
    expect(at(ttfb, 0.1)).toBe(2);
    expect(at(ttfb, 0.25)).toBe(4); // 250 ms lands in le=0.25
    expect(at(ttfb, 1)).toBe(5);
    expect(at(ttfb, 5)).toBe(6);
    expect(at(ttfb, 120)).toBe(6); // 200 s only in +Inf
    expect(at(ttfb, Number.POSITIVE_INFINITY)).toBe(7);

    const dur = histogram(f, "sluice_request_duration_seconds", { backend: "ptu", status: "200" })!;
    expect(dur.count).toBe(8);
    expect(dur.sum).toBeCloseTo((ttfbs.reduce((a, b) => a + b, 0) + 1000 * ttfbs.length + 30) / 1000, 9);
    expect(at(dur, 0.05)).toBe(1);

    // Every histogram in the output is well formed.
    for (const fam of f.values()) if (fam.type === "histogram") histograms(f, fam.name);
  });

  it("records queue wait per priority only for requests that went through the scheduler", () => {
    const m = new GatewayMetrics();
    m.emit(event({ queueMs: 0 }));
    m.emit(event({ queueMs: 1200 }));
    m.emit(event({ queueMs: 0, attempts: 0, backend: null, status: 404 }));
    m.emit(event({ queueMs: 130_000, attempts: 0, backend: null, status: 412, priority: 3 }));
    const f = parse(m.render(EMPTY));
    const normal = histogram(f, "sluice_queue_wait_seconds", { priority: "2" })!;
    expect(normal.count).toBe(2);
    expect(normal.sum).toBeCloseTo(1.2, 9);
    expect(at(normal, 0.005)).toBe(1);
    expect(at(normal, 2.5)).toBe(2);
    const low = histogram(f, "sluice_queue_wait_seconds", { priority: "3" })!;
    expect([low.count, at(low, 120), low.sum]).toEqual([1, 0, 130]);
  });

  it("exports the GenAI semantic-convention histograms", () => {
    const m = new GatewayMetrics();
    m.emit(event({ operation: "chat/completions", promptTokens: 100, completionTokens: 3 }));
    m.emit(event({ operation: "embeddings", promptTokens: 5000, completionTokens: 0 }));
    m.emit(event({ status: 429, backend: null, attempts: 0, ttfbMs: null, promptTokens: null, completionTokens: null, usageSource: null }));
    m.emit(event({ status: 500, ttfbMs: 80, model: null, promptTokens: null, completionTokens: null, usageSource: null }));
    const f = parse(m.render(EMPTY));

    const chat = histogram(f, "gen_ai_client_operation_duration_seconds", { gen_ai_request_model: "gpt-4o", gen_ai_operation_name: "chat" })!;
    expect(chat.count).toBe(1);
    expect(histogram(f, "gen_ai_client_operation_duration_seconds", { gen_ai_request_model: "gpt-4o", gen_ai_operation_name: "embeddings" })!.count).toBe(1);
    // Unknown operation and model: those labels are left out; failures carry error_type.
    expect(histogram(f, "gen_ai_client_operation_duration_seconds", { gen_ai_request_model: "gpt-4o", error_type: "429" })!.count).toBe(1);
    expect(histogram(f, "gen_ai_client_operation_duration_seconds", { error_type: "500" })!.count).toBe(1);

    // Time to first token: successful responses only.
    const ttft = histogram(f, "gen_ai_server_time_to_first_token_seconds", { gen_ai_request_model: "gpt-4o" })!;
    expect(ttft.count).toBe(2);
    expect(histograms(f, "gen_ai_server_time_to_first_token_seconds")).toHaveLength(1);

    const input = histogram(f, "gen_ai_client_token_usage", { gen_ai_token_type: "input", gen_ai_request_model: "gpt-4o" })!;
    expect(input.buckets.map(([le]) => le)).toEqual([...TOKEN_BUCKETS, Number.POSITIVE_INFINITY]);
    expect([input.count, input.sum, at(input, 64), at(input, 256), at(input, 4096), at(input, 16384)]).toEqual([2, 5100, 0, 1, 1, 2]);
    const output = histogram(f, "gen_ai_client_token_usage", { gen_ai_token_type: "output", gen_ai_request_model: "gpt-4o" })!;
    expect([output.count, output.sum, at(output, 1), at(output, 4)]).toEqual([2, 3, 1, 2]);
  });

  it("maps operations to gen_ai.operation.name", () => {
    expect(genAiOperationName("chat/completions")).toBe("chat");
    expect(genAiOperationName("messages")).toBe("chat");
    expect(genAiOperationName("responses")).toBe("chat");
    expect(genAiOperationName("completions")).toBe("text_completion");
    expect(genAiOperationName("embeddings")).toBe("embeddings");
    expect(genAiOperationName("images/generations")).toBe("");
    expect(genAiOperationName(undefined)).toBe("");
    expect(genAiOperationName(null)).toBe("");
  });
});

describe("GatewayMetrics: tokens", () => {
  it("totals per caller equal the sum of the events', by type and usage source", () => {
    const m = new GatewayMetrics();
    const r = rng(42);
    const callers = ["team-a", "team-b", "svc:batch", "anonymous"];
    const models = ["gpt-4o", "gpt-4o-mini", "claude"];
    const backends = ["ptu", "payg"];
    const want = new Map<string, number>(); // caller|type|source → tokens
    const add = (k: string, n: number) => want.set(k, (want.get(k) ?? 0) + n);
    for (let i = 0; i < 2000; i++) {
      const caller = callers[Math.floor(r() * callers.length)]!;
      const known = r() > 0.1;
      const source = r() > 0.3 ? "provider" : "estimated";
      const e = event({
        caller,
        model: models[Math.floor(r() * models.length)]!,
        backend: backends[Math.floor(r() * backends.length)]!,
        promptTokens: known ? Math.floor(r() * 5000) : null,
        completionTokens: known ? Math.floor(r() * 800) : null,
        cachedTokens: known && r() > 0.5 ? Math.floor(r() * 1000) : null,
        reasoningTokens: known && r() > 0.7 ? Math.floor(r() * 300) : null,
        usageSource: known ? source : null,
      });
      m.emit(e);
      if (e.promptTokens != null) add(`${caller}|input|${source}`, e.promptTokens);
      if (e.completionTokens != null) add(`${caller}|output|${source}`, e.completionTokens);
      if (e.cachedTokens != null) add(`${caller}|cached|${source}`, e.cachedTokens);
      if (e.reasoningTokens != null) add(`${caller}|reasoning|${source}`, e.reasoningTokens);
    }
    const f = parse(m.render(EMPTY));
    const got = new Map<string, number>();
    for (const s of series(f, "sluice_tokens_total")) {
      expect(Object.keys(s.labels).sort()).toEqual(["backend", "caller", "model", "type", "usage_source"]);
      const k = `${s.labels.caller}|${s.labels.type}|${s.labels.usage_source}`;
      got.set(k, (got.get(k) ?? 0) + s.value);
    }
    expect(Object.fromEntries([...got].sort())).toEqual(Object.fromEntries([...want].sort()));
  });

  it("records nothing for unknown usage (never 0 for unknown)", () => {
    const m = new GatewayMetrics();
    m.emit(event({ promptTokens: null, completionTokens: null, totalTokens: null, usageSource: null }));
    const f = parse(m.render(EMPTY));
    expect(series(f, "sluice_tokens_total")).toHaveLength(0);
    expect(series(f, "gen_ai_client_token_usage_count")).toHaveLength(0);
  });

  it("labels cached and reasoning tokens only when present", () => {
    const m = new GatewayMetrics();
    m.emit(event({ cachedTokens: 7, reasoningTokens: 0, usageSource: "estimated", backend: null }));
    const f = parse(m.render(EMPTY));
    const l = { caller: "team-a", model: "gpt-4o", backend: "none", usage_source: "estimated" };
    expect(value(f, "sluice_tokens_total", { ...l, type: "input" })).toBe(10);
    expect(value(f, "sluice_tokens_total", { ...l, type: "output" })).toBe(20);
    expect(value(f, "sluice_tokens_total", { ...l, type: "cached" })).toBe(7);
    expect(value(f, "sluice_tokens_total", { ...l, type: "reasoning" })).toBe(0);
  });
});

describe("label escaping", () => {
  it("escapes backslash, double quote and newline and parses back to the original", () => {
    const odd = ['a"b', "back\\slash", "two\nlines", '\\"\n', "ünïcødé ✓", "{}=,", "trailing\\"];
    const m = new GatewayMetrics();
    for (const caller of odd) m.emit(event({ caller, model: `m-${caller}` }));
    const text = m.render(EMPTY);
    expect(text).toContain('caller="a\\"b"');
    expect(text).toContain('caller="back\\\\slash"');
    expect(text).toContain('caller="two\\nlines"');
    expect(text).toContain('caller="\\\\\\"\\n"');
    const f = parse(text);
    for (const caller of odd) {
      expect(value(f, "sluice_tokens_total", { caller, model: `m-${caller}`, backend: "ptu", type: "input", usage_source: "provider" })).toBe(10);
      expect(histogram(f, "gen_ai_client_token_usage", { gen_ai_token_type: "output", gen_ai_request_model: `m-${caller}` })!.sum).toBe(20);
    }
    expect(escapeLabelValue("plain")).toBe("plain");
  });

  it("escapes HELP text", () => {
    const r = new Registry();
    r.counter("x_total", "a \\ b\nc").inc();
    expect(r.render()).toBe("# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total 1\n");
  });
});

describe("label values come from the config", () => {
  const config = parseConfig({
    priorities: { levels: { high: 1, urgent: 1, normal: 2, low: 3 } },
    backends: [
      { name: "ptu", url: "http://127.0.0.1:9", models: ["gpt-4o", { name: "claude", deployment: "claude-prod" }] },
      { name: "any", url: "http://127.0.0.1:9", models: ["*"] },
    ],
  });
  const MODELS = new Set(["gpt-4o", "claude", "other"]);
  const PRIORITIES = new Set(["high", "normal", "low", "other"]);

  it("declared models are the backends' names, never `*` nor a deployment", () => {
    expect([...declaredModels(config.backends)].sort()).toEqual(["claude", "gpt-4o"]);
  });

  it("20,000 client-chosen priorities and models give a handful of series, totals kept", () => {
    const m = new GatewayMetrics();
    m.adopt(config);
    const N = 20_000;
    let prompt = 0;
    for (let i = 0; i < N; i++) {
      const model = i % 10 === 0 ? "gpt-4o" : i % 10 === 1 ? "claude" : `client-model-${i}`;
      m.emit(event({ priority: i % 7 === 0 ? 1 : 1000 + i, model, operation: "chat/completions", promptTokens: i, queueMs: 5 }));
      prompt += i;
    }
    const text = m.render({ backends: [], queue: { waiting: 0, levels: [] } });
    expect(text.length, "the exposition stays small").toBeLessThan(60_000);
    const f = parse(text);
    for (const [name, fam] of f) {
      for (const s of fam.samples) {
        if ("priority" in s.labels) expect(PRIORITIES, `${name} priority`).toContain(s.labels.priority);
        if ("model" in s.labels) expect(MODELS, `${name} model`).toContain(s.labels.model);
        if ("gen_ai_request_model" in s.labels) expect(MODELS, `${name} gen_ai_request_model`).toContain(s.labels.gen_ai_request_model);
      }
    }
    expect(series(f, "sluice_requests_total").map((x) => x.labels.priority).sort()).toEqual(["high", "other"]);
    expect(series(f, "sluice_requests_total").reduce((a, x) => a + x.value, 0)).toBe(N);
    expect(value(f, "sluice_tokens_total", { caller: "team-a", model: "gpt-4o", backend: "ptu", type: "input", usage_source: "provider" })).toBeGreaterThan(0);
    const input = series(f, "sluice_tokens_total").filter((x) => x.labels.type === "input");
    expect(input.map((x) => x.labels.model).sort()).toEqual(["claude", "gpt-4o", "other"]);
    expect(input.reduce((a, x) => a + x.value, 0)).toBe(prompt);
    expect(histograms(f, "gen_ai_client_token_usage").filter((h) => h.labels.gen_ai_token_type === "input").reduce((a, h) => a + h.count, 0)).toBe(N);
    expect(histogram(f, "sluice_queue_wait_seconds", { priority: "other" })!.count).toBeGreaterThan(N / 2);
  });

  it("a request with no model keeps the label out (unknown on tokens), it is not folded", () => {
    const m = new GatewayMetrics();
    m.adopt(config);
    m.emit(event({ model: null }));
    const f = parse(m.render(EMPTY));
    expect(value(f, "sluice_tokens_total", { caller: "team-a", model: "unknown", backend: "ptu", type: "input", usage_source: "provider" })).toBe(10);
    expect(histogram(f, "gen_ai_client_token_usage", { gen_ai_token_type: "input" })!.count).toBe(1);
  });

  it("queue gauges sum the levels no config names into one `other` series", () => {
    const m = new GatewayMetrics();
    m.adopt(config);
    const levels = [
      { level: 1, waiting: 2, dispatched: 3, waitedMs: 1000 },
      ...Array.from({ length: 500 }, (_, i) => ({ level: 100 + i, waiting: 1, dispatched: 2, waitedMs: 10 })),
    ];
    // parse() throws on a duplicate series.
    const f = parse(m.render({ backends: [], queue: { waiting: 502, levels } }));
    expect(series(f, "sluice_queue_depth")).toHaveLength(2);
    expect(value(f, "sluice_queue_depth", { priority: "high" })).toBe(2);
    expect(value(f, "sluice_queue_depth", { priority: "other" })).toBe(500);
    expect(value(f, "sluice_queue_dispatched_total", { priority: "other" })).toBe(1000);
    expect(value(f, "sluice_queue_waited_seconds_total", { priority: "other" })).toBeCloseTo(5, 6);
  });

  it("a new config version's names apply from its adoption; the series recorded stay", () => {
    const m = new GatewayMetrics();
    m.adopt(config);
    m.emit(event({ priority: 2, model: "gpt-4o" }));
    m.adopt(parseConfig({ priorities: { levels: { gold: 2 }, default: "gold" }, backends: [{ name: "ptu", url: "http://127.0.0.1:9", models: ["gpt-5"] }] }));
    m.emit(event({ priority: 2, model: "gpt-4o" }));
    m.emit(event({ priority: 2, model: "gpt-5" }));
    const f = parse(m.render(EMPTY));
    expect(value(f, "sluice_requests_total", { backend: "ptu", status: "200", priority: "normal" })).toBe(1);
    expect(value(f, "sluice_requests_total", { backend: "ptu", status: "200", priority: "gold" })).toBe(2);
    const models = series(f, "sluice_tokens_total").filter((x) => x.labels.type === "input").map((x) => x.labels.model).sort();
    expect(models).toEqual(["gpt-4o", "gpt-5", "other"]);
  });
});

describe("label cardinality bound", () => {
  it("folds callers and models beyond the bound into `other`, keeping totals", () => {
    const m = new GatewayMetrics({ maxSeries: 50 });
    let total = 0;
    for (let i = 0; i < 5000; i++) {
      m.emit(event({ caller: `attacker-${i}`, model: `model-${i}`, promptTokens: i, completionTokens: 1 }));
      total += i;
    }
    const f = parse(m.render(EMPTY));
    const tokens = series(f, "sluice_tokens_total");
    // 50 kept, then one folded series per (type, usage_source).
    expect(tokens.length).toBeLessThanOrEqual(52);
    const input = tokens.filter((s) => s.labels.type === "input");
    expect(input.reduce((s, x) => s + x.value, 0)).toBe(total);
    const folded = value(f, "sluice_tokens_total", { caller: "other", model: "other", backend: "other", type: "input", usage_source: "provider" })!;
    expect(folded).toBeGreaterThan(0);
    // GenAI histograms keep the token type and fold the model.
    const usage = histograms(f, "gen_ai_client_token_usage");
    expect(usage.length).toBeLessThanOrEqual(52);
    expect(usage.filter((h) => h.labels.gen_ai_token_type === "input").reduce((s, h) => s + h.count, 0)).toBe(5000);
    expect(histogram(f, "gen_ai_client_token_usage", { gen_ai_token_type: "output", gen_ai_request_model: "other" })!.count).toBeGreaterThan(0);
    // Requests: the first 50 priorities are kept, the rest fold entirely.
    const r2 = new GatewayMetrics({ maxSeries: 50 });
    for (let i = 0; i < 1000; i++) r2.emit(event({ priority: i }));
    const f2 = parse(r2.render(EMPTY));
    expect(series(f2, "sluice_requests_total")).toHaveLength(51);
    expect(value(f2, "sluice_requests_total", { backend: "other", status: "other", priority: "other" })).toBe(950);
  });

  it("holds at most 10,000 combinations per metric by default", () => {
    const r = new Registry();
    const c = r.counter("c_total", "c", ["caller"]);
    const h = r.histogram("h_seconds", "h", ["caller"], [1]);
    for (let i = 0; i < 25_000; i++) {
      c.inc([`caller-${i}`]);
      h.observe([`caller-${i}`], 0.5);
    }
    expect(c.seriesCount).toBe(10_001);
    expect(h.seriesCount).toBe(10_001);
    expect(c.value(["other"])).toBe(15_000);
    expect(c.value(["caller-9999"])).toBe(1);
    expect(c.value(["caller-10000"])).toBe(0);
    const f = parse(r.render());
    expect(value(f, "h_seconds_count", { caller: "other" })).toBe(15_000);
    expect(value(f, "h_seconds_bucket", { caller: "other", le: "1" })).toBe(15_000);
  });
});

describe("scrape-time gauges", () => {
  it("reports backend and queue state", () => {
    const m = new GatewayMetrics();
    const state: MetricsState = {
      backends: [
        { name: "ptu", inFlight: 2, breaker: "closed", coolingDown: false, ttfbMs: 320 },
        { name: "payg", inFlight: 0, breaker: "half-open", coolingDown: true },
        { name: "odd\"one", inFlight: 1, breaker: "open", coolingDown: false, ttfbMs: null },
      ],
      queue: {
        waiting: 5,
        levels: [
          { level: 1, waiting: 0, dispatched: 12, waitedMs: 0 },
          { level: 3, waiting: 5, dispatched: 40, waitedMs: 95_500 },
        ],
      },
    };
    const f = parse(m.render(state));
    expect(f.get("sluice_backend_in_flight")!.type).toBe("gauge");
    expect(value(f, "sluice_backend_in_flight", { backend: "ptu" })).toBe(2);
    expect(value(f, "sluice_backend_in_flight", { backend: "payg" })).toBe(0);
    expect(value(f, "sluice_backend_in_flight", { backend: 'odd"one' })).toBe(1);
    const breaker = (backend: string) =>
      Object.fromEntries(series(f, "sluice_backend_breaker_state").filter((s) => s.labels.backend === backend).map((s) => [s.labels.state, s.value]));
    expect(breaker("ptu")).toEqual({ closed: 1, open: 0, "half-open": 0 });
    expect(breaker("payg")).toEqual({ closed: 0, open: 0, "half-open": 1 });
    expect(breaker('odd"one')).toEqual({ closed: 0, open: 1, "half-open": 0 });
    expect(value(f, "sluice_backend_cooling_down", { backend: "ptu" })).toBe(0);
    expect(value(f, "sluice_backend_cooling_down", { backend: "payg" })).toBe(1);
    expect(value(f, "sluice_backend_ttfb_ewma_seconds", { backend: "ptu" })).toBe(0.32);
    expect(series(f, "sluice_backend_ttfb_ewma_seconds")).toHaveLength(1);
    expect(value(f, "sluice_queue_depth", { priority: "1" })).toBe(0);
    expect(value(f, "sluice_queue_depth", { priority: "3" })).toBe(5);
    expect(f.get("sluice_queue_dispatched_total")!.type).toBe("counter");
    expect(value(f, "sluice_queue_dispatched_total", { priority: "1" })).toBe(12);
    expect(value(f, "sluice_queue_dispatched_total", { priority: "3" })).toBe(40);
    expect(value(f, "sluice_queue_waited_seconds_total", { priority: "3" })).toBe(95.5);

    // State is per scrape: the next render shows the next state only.
    const f2 = parse(m.render(EMPTY));
    expect(series(f2, "sluice_backend_in_flight")).toHaveLength(0);
    expect(f2.get("sluice_backend_in_flight")!.type).toBe("gauge");
  });
});

describe("Registry", () => {
  it("rejects invalid or duplicate names", () => {
    const r = new Registry();
    r.counter("ok_total", "ok");
    expect(() => r.counter("ok_total", "again")).toThrow(/twice/);
    expect(() => r.counter("1bad", "x")).toThrow(/invalid metric name/);
    expect(() => r.counter("x_total", "x", ["bad-label"])).toThrow(/invalid label name/);
    expect(() => r.counter("y_total", "x", ["__reserved"])).toThrow(/invalid label name/);
    expect(() => r.histogram("h", "x", ["le"], [1])).toThrow(/reserved/);
    expect(() => r.counter("z_total", "x", ["a"]).inc([])).toThrow(/label values/);
  });

  it("ignores negative and NaN counter increments; renders special values", () => {
    const r = new Registry();
    const c = r.counter("c_total", "c");
    c.inc(undefined, 2);
    c.inc(undefined, -1);
    c.inc(undefined, Number.NaN);
    r.gauge("g", "g", ["k"], (sample) => {
      sample(["inf"], Number.POSITIVE_INFINITY);
      sample(["nan"], Number.NaN);
      sample([""], 3);
    });
    expect(r.render()).toBe(
      '# HELP c_total c\n# TYPE c_total counter\nc_total 2\n# HELP g g\n# TYPE g gauge\ng{k="inf"} +Inf\ng{k="nan"} NaN\ng 3\n',
    );
  });

  it("publishes the exposition content type", () => {
    expect(PROMETHEUS_CONTENT_TYPE).toBe("text/plain; version=0.0.4; charset=utf-8");
  });
});
