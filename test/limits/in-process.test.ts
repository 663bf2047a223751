import { InProcessRateLimiter } from "../../src/governance/limits.ts";
import { limiterConformance } from "./limiter-suite.ts";

limiterConformance("in-process", async () => ({ limiter: new InProcessRateLimiter(), close: async () => undefined }));
