/**
 * Small helpers shared by the vendor-tool parsers: number and unit parsing, PCI bus id
 * normalization, and the error every parser throws for output it cannot read.
 */
import { FabricError } from '../../core/index.ts';

/** The one error a parser throws: names the tool command and what could not be read. */
export function unreadable(tool: string, what: string): FabricError {
  return new FabricError('DISCOVERY_FAILED', `${tool}: ${what}`, { details: { tool } });
}

/** Values the vendor tools print when a field does not apply or cannot be read. */
export function isMissing(value: string | undefined): value is undefined {
  if (value === undefined) return true;
  const v = value.trim();
  return v === '' || /^(n\/a|\[n\/a\]|none|not supported|unknown|\[unknown error\])$/i.test(v);
}

/** `81559 MiB` → 81559; `4 GiB` → 4096; anything else → undefined. */
export function parseMiB(value: string | undefined): number | undefined {
  if (isMissing(value)) return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|KB|MB|GB)?\s*$/i.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = (m[2] ?? 'MiB').toLowerCase();
  if (unit === 'kib' || unit === 'kb') return Math.round(n / 1024);
  if (unit === 'gib' || unit === 'gb') return Math.round(n * 1024);
  return Math.round(n);
}

/** `37 %` / `37` → 37, clamped to 0..100; N/A → undefined. */
export function parsePercent(value: string | undefined): number | undefined {
  if (isMissing(value)) return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(value);
  if (!m) return undefined;
  return Math.min(100, Math.max(0, Number(m[1])));
}

/** A plain non-negative decimal integer, else undefined. */
export function parseNonNegativeInt(value: string | undefined): number | undefined {
  if (isMissing(value)) return undefined;
  const v = value.trim();
  if (!/^\d+$/.test(v)) return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * PCI bus id as `0000:18:00.0`: lower case, 4-digit domain. nvidia-smi prints an 8-digit domain
 * (`00000000:18:00.0`), rocm-smi a 4-digit one in upper case (`0000:1E:00.0`).
 */
export function normalizePciBusId(value: string | undefined): string | undefined {
  if (isMissing(value)) return undefined;
  const m = /^\s*(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])\s*$/.exec(value);
  if (!m) return undefined;
  const domain = parseInt(m[1] ?? '0', 16);
  // Domains above 0xffff exist on some hypervisors; keep all their digits rather than lose any.
  const domainText = domain > 0xffff ? domain.toString(16) : domain.toString(16).padStart(4, '0');
  return `${domainText}:${m[2]!.toLowerCase().padStart(2, '0')}:${m[3]!.toLowerCase().padStart(2, '0')}.${m[4]}`;
}

/** Drops ANSI colour/underline escapes (nvidia-smi underlines the topo header on a terminal). */
export function stripAnsi(text: string): string {
  return text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}

/** Splits text into lines without carriage returns (Windows captures end lines with CRLF). */
export function splitLines(text: string): string[] {
  return text.split(/\r?\n/);
}

/** First line of a tool's stderr/stdout, shortened, for warning messages. */
export function firstLine(text: string, max = 160): string {
  const line = splitLines(text.trim())[0]?.trim() ?? '';
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}
