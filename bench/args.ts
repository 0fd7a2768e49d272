/** Command-line parsing shared by the benchmarks. */

/** A whole-number flag within [min, max]; throws naming the flag, the range and what was given. */
export function intFlag(name: string, raw: string, min: number, max: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  return n;
}
