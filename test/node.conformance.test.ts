import { gatewayConformance } from "./conformance/gateway-suite.ts";
import { startNodeGateway } from "./harness/node.ts";

gatewayConformance("node", startNodeGateway);
