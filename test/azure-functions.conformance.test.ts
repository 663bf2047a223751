import { gatewayConformance } from "./conformance/gateway-suite.ts";
import { startFunctionsGateway } from "./harness/azure-functions.ts";

// The Functions stream proxy never tells the handler that a client left (adapters/azure-functions/handler.ts).
gatewayConformance("azure-functions", startFunctionsGateway, { seesClientLeave: false });
