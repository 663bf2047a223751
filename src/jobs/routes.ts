import type { Hono } from "hono";
import type { Authenticator } from "../governance/identity.ts";
import { errorResponse } from "../http/errors.ts";
import { JOBS_PATH, type JobService } from "./service.ts";

/**
 * The job resource, for the caller that created the job (not only operators): mounted before
 * the operator guard of the other `/_gateway/` endpoints. A job of another caller is 404.
 */
export function mountJobs(app: Hono, jobs: JobService | undefined, authenticator: Authenticator): void {
  const route = async (headers: Headers, act: (identity: Parameters<JobService["status"]>[1]) => Promise<Response>) => {
    if (!jobs) return errorResponse({ status: 404, code: "job_not_found", message: "this deployment has no job store" });
    const who = await authenticator.identify(headers);
    if (!who.ok) return errorResponse(who);
    return act(who.identity);
  };
  app.get(`${JOBS_PATH}/:id/result`, (c) => route(c.req.raw.headers, (who) => jobs!.result(c.req.param("id"), who)));
  app.get(`${JOBS_PATH}/:id`, (c) => route(c.req.raw.headers, (who) => jobs!.status(c.req.param("id"), who)));
  app.delete(`${JOBS_PATH}/:id`, (c) => route(c.req.raw.headers, (who) => jobs!.cancel(c.req.param("id"), who)));
}
