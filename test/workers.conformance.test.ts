import { gatewayConformance } from "./conformance/gateway-suite.ts";
import { startWorkersGateway } from "./harness/workers.ts";

gatewayConformance("workerd (miniflare)", startWorkersGateway);
