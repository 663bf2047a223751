import type { FuzzRequest } from "./arbitraries.ts";
const KNOWN_METHODS = new Set(["GET","POST","PUT","DELETE","PATCH","HEAD","OPTIONS","PROPFIND","PURGE","MKCOL","SEARCH","M-SEARCH","REPORT","LINK","UNLINK","NOTIFY"]);
const skip = new Set((process.env.FUZZ_KNOWN ?? "").split(",").filter(Boolean));
export function known(reqs: FuzzRequest[]): boolean {
  return reqs.some((r) => {
    const m = r.method.toUpperCase();
    if (skip.has("trace") && m === "TRACE") return true;
    if (skip.has("method") && !KNOWN_METHODS.has(m) && m !== "TRACE") return true;
    if (skip.has("backslash") && r.target.split("?")[0]!.includes("\\")) return true;
    if (skip.has("host") && r.headers.some(([n]) => n.toLowerCase() === "host")) return true;
    if (skip.has("star") && r.target === "*") return true;
    if (skip.has("latin1") && /[\u0080-\u00ff]/.test(r.target)) return true;
    return false;
  });
}
