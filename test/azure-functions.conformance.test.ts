import { gatewayConformance } from "./conformance/gateway-suite.ts";
import { startFunctionsGateway } from "./harness/azure-functions.ts";

gatewayConformance("azure-functions", startFunctionsGateway);
