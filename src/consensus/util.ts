/** Small helpers shared by the Raft core's files. */
import type { Entry } from './types.ts';

/** The bytes an entry counts for against size limits: its payload. */
export function entrySize(e: Entry): number {
  return e.data.byteLength;
}

export function entriesSize(entries: readonly Entry[]): number {
  let total = 0;
  for (const e of entries) total += entrySize(e);
  return total;
}

/**
 * The longest prefix of `entries` whose payload fits in `maxBytes`, but always at least one
 * entry so that a single large entry still makes progress.
 */
export function limitSize(entries: Entry[], maxBytes: number | undefined): Entry[] {
  if (maxBytes === undefined || entries.length === 0) return entries;
  let size = entrySize(entries[0]!);
  let n = 1;
  for (; n < entries.length; n++) {
    size += entrySize(entries[n]!);
    if (size > maxBytes) break;
  }
  return n === entries.length ? entries : entries.slice(0, n);
}

/** A map key for an opaque byte string (read-index contexts). */
export function bytesKey(bytes: Uint8Array | undefined): string {
  if (bytes === undefined) return '';
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

/** Id order for deterministic iteration: numeric ids (as in tests) by value, others as strings. */
export function compareIds(a: string, b: string): number {
  if (a.length !== b.length && DIGITS.test(a) && DIGITS.test(b)) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

const DIGITS = /^[0-9]+$/;
