/** A priority reference from config or a client: a level name or an integer level. */
export function resolvePriority(value: string | number, levels: Record<string, number>): number | undefined {
  if (typeof value === "number") return Number.isInteger(value) ? value : undefined;
  const trimmed = value.trim().toLowerCase();
  if (trimmed in levels) return levels[trimmed];
  return /^-?\d+$/.test(trimmed) ? Number(trimmed) : undefined;
}
