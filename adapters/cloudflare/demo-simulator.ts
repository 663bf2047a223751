import { createSimulator, type Simulator } from "../../src/simulator/index.ts";

/**
 * The simulator inside the Worker, for the demo config wrangler.toml ships: a backend URL on
 * `<name>.sluice-simulator.invalid` (a name under `.invalid`, which never resolves: RFC 6761) is
 * answered by an in-isolate simulator named <name> instead of the network, so `wrangler dev`
 * (and a `wrangler deploy` before any real config is set) serves a working gateway in front of
 * two simulated backends, as `npm start` does on Node. A Worker cannot reach a simulator on the
 * developer's machine once deployed, and fetching its own URL loops through the edge; this needs
 * neither. Any other URL goes to the global `fetch`.
 */
export const DEMO_SIMULATOR_DOMAIN = "sluice-simulator.invalid";

/** Pace between streamed chunks, as the Node demo's simulators. */
const DEMO_PACE_MS = 30;

const simulators = new Map<string, Simulator>();

function simulatorFor(url: URL): Simulator | undefined {
  const host = url.hostname.toLowerCase();
  if (!host.endsWith(`.${DEMO_SIMULATOR_DOMAIN}`)) return undefined;
  const name = host.slice(0, -DEMO_SIMULATOR_DOMAIN.length - 1);
  if (!/^[a-z0-9-]{1,63}$/.test(name)) return undefined;
  let sim = simulators.get(name);
  if (!sim) {
    sim = createSimulator({ name, paceMs: DEMO_PACE_MS });
    simulators.set(name, sim);
  }
  return sim;
}

/** The Worker's upstream `fetch`: the in-isolate simulators for their demo hosts, else the global fetch. */
export function fetchWithDemoSimulators(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
  const url = new URL(input instanceof Request ? input.url : String(input));
  const sim = simulatorFor(url);
  if (!sim) return fetch(input, init);
  // A simulated reset (SimulatedReset) rejects, as a connection failure would.
  return sim.fetch(new Request(input, init));
}
