/**
 * Human quantities in job specs: memory sizes (`40GiB`, `80GB`, `512MiB`, a bare number of MiB)
 * and model sizes (`7B`, `70b`, `1.5T`, `350M`, a bare number of parameters).
 *
 * Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal units (KB/kB, MB, GB, TB) are powers
 * of 1000, as vendors print them ("80GB" on an H100 is 80 × 10⁹ bytes ≈ 74.5 GiB, while nvidia-smi
 * reports 81,559 MiB). Everything inside placement is whole MiB, rounded up so that a request is
 * never silently shrunk.
 */

const BYTES_PER_MIB = 1024 * 1024;

const MEMORY_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  kib: 1024,
  mib: BYTES_PER_MIB,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  // Kubernetes-style suffixes without the trailing "B".
  ki: 1024,
  mi: BYTES_PER_MIB,
  gi: 1024 ** 3,
  ti: 1024 ** 4,
  k: 1e3,
  m: 1e6,
  g: 1e9,
  t: 1e12,
};

const MEMORY_RE = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/;

/**
 * A memory size in whole MiB (rounded up), or an error message. A bare number (or numeric
 * string without unit) is taken as MiB.
 */
export function parseMemoryMiB(value: string | number): number | string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) return 'must be a non-negative number of MiB';
    return Math.ceil(value);
  }
  const match = MEMORY_RE.exec(value);
  if (match === null) return `"${value}" is not a size such as 40GiB, 80GB or 512MiB`;
  const amount = Number(match[1]);
  const unit = match[2]!.toLowerCase();
  if (unit === '') return Math.ceil(amount);
  const factor = MEMORY_UNITS[unit];
  if (factor === undefined) return `unknown unit "${match[2]}" (use KiB, MiB, GiB, TiB, KB, MB, GB or TB)`;
  return Math.ceil((amount * factor) / BYTES_PER_MIB);
}

const PARAM_UNITS: Readonly<Record<string, number>> = { '': 1, k: 1e3, m: 1e6, b: 1e9, g: 1e9, t: 1e12 };
const PARAMS_RE = /^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgGtT]?)\s*$/;

/** A parameter count from `7B`, `1.5t`, `350M` or a plain number, or an error message. */
export function parseParamCount(value: string | number): number | string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value <= 0) return 'must be a positive number of parameters';
    return value;
  }
  const match = PARAMS_RE.exec(value);
  if (match === null) return `"${value}" is not a parameter count such as 7B, 70B or 350M`;
  const count = Number(match[1]) * PARAM_UNITS[match[2]!.toLowerCase()]!;
  return count > 0 ? count : 'must be a positive number of parameters';
}

/** `81559` → `79.6 GiB`: sizes as `fabric explain` prints them. */
export function formatMiB(mib: number): string {
  if (mib >= 1024) {
    const gib = mib / 1024;
    return `${Number.isInteger(gib) ? gib : gib.toFixed(1)} GiB`;
  }
  return `${mib} MiB`;
}

/** Whole-number formatting with thousands separators, independent of the host locale. */
export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
