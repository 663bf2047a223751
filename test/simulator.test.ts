import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { loadFixtures, type RunningSimulator, startSimulator } from "../adapters/node/simulator-server.ts";
import { HAVE_SHARED_FIXTURES, needsFixtures } from "./harness/shared-fixtures.ts";

let sim: RunningSimulator;

beforeAll(async () => {
  sim = await startSimulator({ name: "sim-a", port: 0 });
});
afterAll(async () => {
  await sim?.close();
});
beforeEach(() => sim.sim.reset());

const chatBody = (extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hello world, simulator" }], ...extra });

function post(path: string, body: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(sim.url + path, { method: "POST", headers: { "content-type": "application/json", ...headers }, body, ...(signal ? { signal } : {}) });
}

/** SSE `data:` payloads of a complete stream body. */
function dataLines(text: string): string[] {
  return text
    .split("\n\n")
    .filter(Boolean)
    .map((event) => event.split("\n").find((l) => l.startsWith("data: "))!.slice("data: ".length));
}

async function until(check: () => boolean, ms = 3_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("simulator over HTTP", () => {
  it("answers a JSON chat completion with consistent usage", async () => {
    const res = await post("/v1/chat/completions", chatBody());
    expect(res.status).toBe(200);
    expect(res.headers.get("x-sim-backend")).toBe("sim-a");
    expect(res.headers.get("x-request-id")).toBeTruthy();
    const json = await res.json();
    expect(json.object).toBe("chat.completion");
    expect(json.model).toBe("gpt-4o");
    const content: string = json.choices[0].message.content;
    // "hello world, simulator" is 22 chars → ceil(22 / 4) = 6 prompt tokens; 8 words by default.
    expect(json.usage).toEqual({ prompt_tokens: 6, completion_tokens: 8, total_tokens: 14 });
    expect(content.split(" ")).toHaveLength(8);
    expect(sim.sim.stats().completed).toBe(1);
  });

  it("streams an Azure chat completion with a usage chunk and [DONE]", async () => {
    const res = await post(
      "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21",
      chatBody({ stream: true, stream_options: { include_usage: true } }),
      { "x-sim-fault": JSON.stringify({ chunks: 3 }) },
    );
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const data = dataLines(await res.text());
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks[0].prompt_filter_results).toEqual([{ prompt_index: 0, content_filter_results: {} }]);
    expect(chunks[1].choices[0].delta.role).toBe("assistant");
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    expect(text.trim().split(" ")).toHaveLength(3);
    expect(chunks.at(-2).choices[0].finish_reason).toBe("stop");
    expect(chunks.at(-1)).toMatchObject({ choices: [], model: "my-gpt", usage: { completion_tokens: 3 } });
  });

  it.skipIf(!HAVE_SHARED_FIXTURES)(needsFixtures("serves a recorded fixture byte for byte, one event per chunk"), async () => {
    const fixtures = await loadFixtures();
    const name = "aoai2.txt";
    const onDisk = await readFile(new URL("../../shared/fixtures/recorded/aoai2.txt", import.meta.url));
    expect(Buffer.from(fixtures[name] ?? []).equals(onDisk), "the loaded fixture is the file's bytes").toBe(true);
    const res = await post("/v1/chat/completions", chatBody({ stream: true }), { "x-sim-fixture": name });
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const got = new Uint8Array(await res.arrayBuffer());
    expect(Buffer.from(got).equals(onDisk)).toBe(true);
  });

  it("answers a scripted 429 with retry-after-ms, then recovers", async () => {
    await fetch(`${sim.url}/_sim/script`, {
      method: "POST",
      body: JSON.stringify({ next: [{ status: 429, headers: { "retry-after-ms": "2000" } }] }),
    });
    const first = await post("/v1/chat/completions", chatBody());
    expect(first.status).toBe(429);
    expect(first.headers.get("retry-after-ms")).toBe("2000");
    expect((await first.json()).error.code).toBe("429");
    const second = await post("/v1/chat/completions", chatBody());
    expect(second.status).toBe(200);
    await second.arrayBuffer();
  });

  it("marks requeue 429s with S7PREQUEUE", async () => {
    sim.sim.script([{ requeue: true }]);
    const res = await post("/v1/chat/completions", chatBody());
    expect(res.status).toBe(429);
    expect(res.headers.get("s7prequeue")).toBe("true");
    await res.arrayBuffer();
  });

  it("resets before headers: the client sees a network error", async () => {
    await expect(post("/v1/chat/completions", chatBody(), { "x-sim-fault": '{"reset":"before-headers"}' })).rejects.toThrow(TypeError);
    expect(sim.sim.stats().received).toBe(1);
  });

  it("resets after N chunks: headers and N events arrive, then the body fails", async () => {
    sim.sim.script([{ reset: 2, chunks: 10 }]);
    const res = await post("/v1/chat/completions", chatBody({ stream: true }));
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    let failed = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
    } catch {
      failed = true;
    }
    expect(failed).toBe(true);
    expect(dataLines(text)).toHaveLength(2);
    expect(text).not.toContain("[DONE]");
  });

  it("counts received requests, but not control calls", async () => {
    await (await post("/v1/embeddings", JSON.stringify({ model: "e", input: ["a", "b"] }))).json();
    await (await post("/v1/messages", JSON.stringify({ model: "claude", max_tokens: 5, messages: [{ role: "user", content: "hi" }] }))).json();
    await (await fetch(`${sim.url}/_sim/stats`)).json();
    const stats = await (await fetch(`${sim.url}/_sim/stats`)).json();
    expect(stats.received).toBe(2);
    expect(stats.requests.map((r: { path: string }) => r.path)).toEqual(["/v1/embeddings", "/v1/messages"]);
    expect(stats.requests[0].headers["content-type"]).toBe("application/json");
  });

  it("counts a body cancelled by a disconnecting client", async () => {
    const abort = new AbortController();
    const res = await post("/v1/chat/completions", chatBody({ stream: true }), { "x-sim-fault": '{"chunks":100,"paceMs":20}' }, abort.signal);
    const reader = res.body!.getReader();
    await reader.read();
    await until(() => sim.sim.stats().open === 1);
    abort.abort();
    await until(() => sim.sim.stats().cancelled === 1);
    expect(sim.sim.stats()).toMatchObject({ open: 0, completed: 0, cancelled: 1 });
  });

  it("refuses over the tokens-per-minute limit with retry headers", async () => {
    const limited = await startSimulator({ name: "tpm", tpm: 20 });
    try {
      const okSentAt = Date.now();
      const ok = await fetch(`${limited.url}/v1/chat/completions`, { method: "POST", body: chatBody() });
      expect(ok.status).toBe(200);
      await ok.arrayBuffer();
      const refused = await fetch(`${limited.url}/v1/chat/completions`, { method: "POST", body: chatBody() });
      expect(refused.status).toBe(429);
      // A sliding one-minute window: room again when the first request's tokens age out, a minute after it.
      const retryMs = Number(refused.headers.get("retry-after-ms"));
      expect(retryMs).toBeLessThanOrEqual(60_000);
      expect(retryMs).toBeGreaterThanOrEqual(60_000 - (Date.now() - okSentAt) - 5);
      expect(refused.headers.get("retry-after")).toBe("60");
      expect(refused.headers.get("x-ratelimit-remaining-tokens")).toBe("6");
      await refused.arrayBuffer();
    } finally {
      await limited.close();
    }
  });
});
