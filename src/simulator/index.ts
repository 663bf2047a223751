import { newExchange } from "./exchange.ts";
import { errorBody } from "./faults.ts";
import { createRouter } from "./router.ts";
import { SimState } from "./state.ts";
import { SimulatedReset } from "./stream.ts";
import type { Fault, HostHooks, Simulator, SimulatorOptions } from "./types.ts";

export type { Fault, HostHooks, ReceivedRequest, Simulator, SimulatorOptions, SimulatorStats } from "./types.ts";
export { SimulatedReset } from "./stream.ts";

/**
 * A fake OpenAI / Azure OpenAI / Anthropic backend with fault injection. Web-standard only,
 * so the same object serves behind node:http, in a Worker, or called in-process.
 */
export function createSimulator(options: SimulatorOptions): Simulator {
  const state = new SimState(options);
  const router = createRouter();
  return {
    name: state.name,
    async fetch(request: Request, hooks?: HostHooks): Promise<Response> {
      const ex = newExchange(state, request, hooks);
      try {
        return (await router.fetch(request, ex)) as Response;
      } catch (error) {
        // A simulated reset must reach the host as a failure; anything else is a simulator bug.
        if (error instanceof SimulatedReset) throw error;
        const message = error instanceof Error ? error.message : String(error);
        return new Response(errorBody(500, `simulator error: ${message}`, "simulator_error"), {
          status: 500,
          headers: { "content-type": "application/json", "x-sim-backend": state.name },
        });
      }
    },
    stats: () => state.stats(),
    script(next: Fault[]) {
      state.queue.push(...next);
    },
    setAlways(fault: Fault | null) {
      state.always = fault;
    },
    reset: () => state.reset(),
  };
}
