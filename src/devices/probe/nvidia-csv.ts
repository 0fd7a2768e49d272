/**
 * `nvidia-smi --query-gpu=<fields> --format=csv[,noheader]`: the one place nvidia-smi prints a
 * GPU's CUDA compute capability (`compute_cap`, drivers 510 and later).
 */
import type { Device } from '../model.ts';
import { isMissing, splitLines, unreadable } from './parse-util.ts';

export const COMPUTE_CAP_FIELDS = ['index', 'uuid', 'compute_cap'] as const;

/** Splits one CSV line as nvidia-smi writes it: comma + space separated, no quoting. */
function splitCsvLine(line: string): string[] {
  return line.split(',').map((c) => c.trim());
}

/**
 * Parses query-gpu CSV into one record per GPU, keyed by field name without its unit
 * (`memory.total [MiB]` → `memory.total`). Pass `fields` when the output has no header.
 */
export function parseNvidiaQueryGpuCsv(text: string, fields?: readonly string[]): Record<string, string>[] {
  const tool = 'nvidia-smi --query-gpu';
  const lines = splitLines(text).filter((l) => l.trim() !== '');
  if (lines.length === 0) throw unreadable(tool, 'empty output');
  const header = fields ? [...fields] : splitCsvLine(lines.shift()!).map((h) => h.replace(/\s*\[.*\]$/, ''));
  return lines.map((line, i) => {
    const cells = splitCsvLine(line);
    if (cells.length !== header.length) throw unreadable(tool, `row ${i + 1} has ${cells.length} values for ${header.length} fields`);
    return Object.fromEntries(header.map((h, j) => [h, cells[j]!]));
  });
}

/** Sets computeCapability on the devices named by the rows (by UUID, else by index). */
export function mergeComputeCapability(devices: Device[], rows: readonly Record<string, string>[]): void {
  for (const row of rows) {
    const cap = row.compute_cap;
    if (isMissing(cap) || !/^\d+\.\d+$/.test(cap)) continue;
    const device = devices.find((d) => d.vendor === 'nvidia' && d.uuid === row.uuid) ?? devices.find((d) => d.vendor === 'nvidia' && String(d.index) === row.index);
    if (device) device.computeCapability = cap;
  }
}
