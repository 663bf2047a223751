import { type IRequest, Router } from "itty-router";
import * as answers from "./answers.ts";
import { type Exchange, jsonResponse, parseJsonObject } from "./exchange.ts";
import { errorBody, scriptSchema } from "./faults.ts";
import { intake } from "./intake.ts";
import type { Fault } from "./types.ts";
import { z } from "zod";

type Handler = (request: IRequest, ex: Exchange) => Response | Promise<Response | undefined> | undefined;

/**
 * Route order matters: control endpoints answer before `intake` counts anything, and
 * `intake` answers faults and fixtures before a generator runs.
 */
export function createRouter() {
  const router = Router<IRequest, [Exchange]>();
  const post = (paths: string[], handler: Handler) => paths.forEach((p) => router.post(p, handler));

  router
    .get("/_sim/stats", (_req, ex) => jsonResponse(ex, 200, ex.state.stats()))
    .post("/_sim/reset", (_req, ex) => {
      ex.state.reset();
      return jsonResponse(ex, 200, { ok: true });
    })
    .post("/_sim/script", script)
    .all("/_sim/*", (_req, ex) => jsonResponse(ex, 404, errorBody(404, `unknown control endpoint ${ex.url.pathname}`, "simulator_error")))
    .all("*", intake);

  post(["/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions", "/openai/deployments/:deployment/chat/completions"], answers.chat);
  post(["/v1/completions", "/completions", "/openai/v1/completions", "/openai/deployments/:deployment/completions"], answers.completions);
  post(["/v1/embeddings", "/embeddings", "/openai/v1/embeddings", "/openai/deployments/:deployment/embeddings"], answers.embeddings);
  post(["/v1/responses", "/responses", "/openai/v1/responses", "/openai/responses"], answers.responses);
  post(["/v1/messages"], answers.messages);
  router.all("*", answers.other);
  return router;
}

async function script(request: IRequest, ex: Exchange): Promise<Response> {
  const json = parseJsonObject(await request.text());
  const parsed = scriptSchema.safeParse(json);
  if (!parsed.success) {
    return jsonResponse(ex, 400, errorBody(400, `invalid script: ${z.prettifyError(parsed.error)}`, "simulator_error"));
  }
  const { next, always } = parsed.data;
  if (next) ex.state.queue.push(...(next as Fault[]));
  if (always !== undefined) ex.state.always = always as Fault | null;
  return jsonResponse(ex, 200, { ok: true, queued: ex.state.queue.length, always: ex.state.always });
}
