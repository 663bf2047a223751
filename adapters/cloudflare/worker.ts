import { ConfigError, parseConfigText } from "../../src/config/load.ts";
import { createGateway, type Gateway } from "../../src/gateway.ts";
import { errorResponse } from "../../src/http/errors.ts";

export interface Env {
  /** The config JSON (a var, or a secret holding it); other string bindings feed ${ENV} interpolation. */
  SLUICE_CONFIG?: string;
  [binding: string]: unknown;
}

let current: { source: string; gateway: Gateway } | undefined;

function stringBindings(env: Env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (typeof v === "string") out[k] = v;
  return out;
}

/**
 * One gateway per isolate, rebuilt only when the config binding changes, so backend state
 * (cooldowns, breakers, latency) is shared by every request the isolate serves.
 */
function gatewayFor(env: Env): Gateway {
  const source = env.SLUICE_CONFIG ?? "";
  if (current?.source !== source) {
    if (!source) throw new ConfigError(["SLUICE_CONFIG: not set (bind the config JSON as a var or secret)"]);
    current = { source, gateway: createGateway({ config: parseConfigText(source, stringBindings(env), "SLUICE_CONFIG") }) };
  }
  return current.gateway;
}

export default {
  fetch(request: Request, env: Env, ctx: unknown): Response | Promise<Response> {
    let gateway: Gateway;
    try {
      gateway = gatewayFor(env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      console.error(err.message);
      return errorResponse({ status: 503, code: "invalid_config", message: err.message });
    }
    return gateway.fetch(request, env, ctx as never);
  },
};
