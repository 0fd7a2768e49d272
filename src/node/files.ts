/**
 * Durable small files: written to a temp file, fsynced, renamed over the target, and the
 * directory fsynced, so a crash leaves either the old or the new content, never a torn one.
 */
import { closeSync, fsyncSync, openSync, renameSync, writeSync, readFileSync, mkdirSync, chmodSync, statSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import type { z } from 'zod';
import { FabricError, errorMessage } from '../core/index.ts';

export function writeFileDurable(path: string, data: string | Uint8Array, mode = 0o600): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w', mode);
  try {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(tmp, mode); // openSync's mode is masked by umask; the secret files must be exactly 0600
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

export function fileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Reads a JSON file and checks it against its schema; a bad file is a clear error naming it. */
export function readJsonFile<T>(path: string, schema: z.ZodType<T>): T {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new FabricError('DATA_DIR_MISSING', `cannot read ${path}: ${errorMessage(err)}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FabricError('BAD_INPUT', `${path} is not valid JSON: ${errorMessage(err)}`, { cause: err });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new FabricError('BAD_INPUT', `${path} is not a valid fabric file: ${issues}`);
  }
  return parsed.data;
}

export function writeJsonFile(path: string, value: unknown, mode = 0o600): void {
  writeFileDurable(path, `${JSON.stringify(value, null, 2)}\n`, mode);
}
