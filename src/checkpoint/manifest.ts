/**
 * The checkpoint manifest: what a checkpoint directory held (files with their modes, sizes and
 * chunk lists, directories, relative symlinks), whose job and step it is, and the epoch of the
 * allocation that wrote it (the fencing token Raft checks).
 *
 * Encoding is canonical JSON (object keys sorted, no whitespace, integers only), so equal
 * manifests are equal bytes and the SHA-256 of those bytes is the manifest id. Decoding checks
 * the schema, that the bytes are exactly the canonical form, and, when asked, the id.
 *
 * The schema refuses anything a restore could be tricked with: absolute paths, `.` and `..`
 * segments, a path under a symlink or under a file, a symlink pointing out of the directory,
 * file sizes that do not add up.
 */
import { z } from 'zod';
import { FabricError } from '../core/index.ts';
import { CHUNKING_ALGORITHM, MAX_CHUNK_BYTES, type ChunkingParams } from './chunker.ts';
import { ChunkIdSchema, ManifestIdSchema, sha256Hex, type ChunkId, type ManifestId } from './hash.ts';

export const MANIFEST_FORMAT = 'fabric-checkpoint/1';
/** The largest manifest accepted (about 400,000 chunks, a 400 GiB checkpoint at 1 MiB chunks). */
export const MAX_MANIFEST_BYTES = 48 * 1024 * 1024;
export const MAX_ENTRIES = 1_000_000;
export const MAX_PATH_LENGTH = 4096;
const MAX_TOTAL_BYTES = Number.MAX_SAFE_INTEGER;

const RelPath = z
  .string()
  .min(1)
  .max(MAX_PATH_LENGTH)
  .refine((p) => pathProblem(p) === undefined, { message: 'not a safe relative path' });

/** [chunk id, size in bytes]. */
export const ChunkRefSchema = z.tuple([ChunkIdSchema, z.number().int().min(1).max(MAX_CHUNK_BYTES)]);
export type ChunkRef = z.infer<typeof ChunkRefSchema>;

const Mode = z.number().int().min(0).max(0o7777);

export const FileEntrySchema = z.strictObject({
  type: z.literal('file'),
  path: RelPath,
  mode: Mode,
  size: z.number().int().min(0).max(MAX_TOTAL_BYTES),
  chunks: z.array(ChunkRefSchema),
});
export const DirEntrySchema = z.strictObject({ type: z.literal('dir'), path: RelPath, mode: Mode });
export const SymlinkEntrySchema = z.strictObject({
  type: z.literal('symlink'),
  path: RelPath,
  target: z.string().min(1).max(MAX_PATH_LENGTH),
});
export const EntrySchema = z.discriminatedUnion('type', [FileEntrySchema, DirEntrySchema, SymlinkEntrySchema]);
export type FileEntry = z.infer<typeof FileEntrySchema>;
export type DirEntry = z.infer<typeof DirEntrySchema>;
export type SymlinkEntry = z.infer<typeof SymlinkEntrySchema>;
export type Entry = z.infer<typeof EntrySchema>;

export const ChunkingSchema = z.strictObject({
  algorithm: z.literal(CHUNKING_ALGORITHM),
  minSize: z.number().int().min(1),
  avgSize: z.number().int().min(1),
  maxSize: z.number().int().min(1).max(MAX_CHUNK_BYTES),
});

export const ManifestSchema = z
  .strictObject({
    format: z.literal(MANIFEST_FORMAT),
    jobId: z.string().min(1).max(256),
    step: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    epoch: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    chunking: ChunkingSchema,
    totalBytes: z.number().int().min(0).max(MAX_TOTAL_BYTES),
    entries: z.array(EntrySchema).max(MAX_ENTRIES),
  })
  .superRefine((m, ctx) => {
    for (const problem of manifestProblems(m)) ctx.addIssue({ code: 'custom', message: problem });
  });
export type Manifest = z.infer<typeof ManifestSchema>;

/** Why `p` is not a safe relative path, or undefined when it is. */
export function pathProblem(p: string): string | undefined {
  if (p.length === 0) return 'empty';
  if (p.includes('\0')) return 'contains NUL';
  if (p.startsWith('/')) return 'absolute';
  for (const seg of p.split('/')) {
    if (seg === '') return 'empty segment';
    if (seg === '.' || seg === '..') return `"${seg}" segment`;
    if (seg.length > 255) return 'segment longer than 255';
  }
  return undefined;
}

/** Resolves `target` relative to the directory of `linkPath`; undefined when it leaves the root. */
function resolveInside(linkPath: string, target: string): string | undefined {
  if (target.startsWith('/') || target.includes('\0')) return undefined;
  const parts = linkPath.split('/').slice(0, -1);
  for (const seg of target.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (parts.length === 0) return undefined;
      parts.pop();
    } else {
      parts.push(seg);
    }
  }
  return parts.join('/');
}

function manifestProblems(m: { entries: readonly Entry[]; totalBytes: number; chunking: ChunkingParams }): string[] {
  const problems: string[] = [];
  const c = m.chunking;
  if (!(c.minSize < c.avgSize && c.avgSize < c.maxSize)) problems.push('chunking: need minSize < avgSize < maxSize');
  const types = new Map<string, Entry['type']>();
  let prev: string | undefined;
  let total = 0;
  for (const e of m.entries) {
    if (prev !== undefined && !(prev < e.path)) {
      problems.push(`entries not sorted by path or duplicated at ${JSON.stringify(e.path)}`);
      break;
    }
    prev = e.path;
    types.set(e.path, e.type);
    if (e.type === 'file') {
      let sum = 0;
      for (const [, size] of e.chunks) sum += size;
      if (sum !== e.size) problems.push(`${e.path}: chunk sizes add up to ${sum}, not ${e.size}`);
      total += e.size;
    } else if (e.type === 'symlink' && resolveInside(e.path, e.target) === undefined) {
      problems.push(`${e.path}: symlink target ${JSON.stringify(e.target)} leaves the checkpoint`);
    }
  }
  if (problems.length > 0) return problems;
  if (total !== m.totalBytes) problems.push(`totalBytes is ${m.totalBytes}, files add up to ${total}`);
  // Every ancestor that is itself an entry must be a directory: nothing is written through a
  // symlink, and no file is also a directory.
  for (const e of m.entries) {
    let slash = e.path.indexOf('/');
    while (slash >= 0) {
      const ancestor = e.path.slice(0, slash);
      const t = types.get(ancestor);
      if (t !== undefined && t !== 'dir') {
        problems.push(`${e.path}: its ancestor ${ancestor} is a ${t}`);
        break;
      }
      slash = e.path.indexOf('/', slash + 1);
    }
    if (problems.length > 8) break;
  }
  return problems;
}

/** JSON with sorted object keys and no whitespace; only integers, strings, booleans, null, arrays and plain objects. */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isSafeInteger(value)) throw new FabricError('BAD_INPUT', `canonical JSON holds integers only, got ${value}`);
      return String(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
    }
    default:
      throw new FabricError('BAD_INPUT', `canonical JSON cannot hold a ${typeof value}`);
  }
}

function describe(error: z.ZodError): string {
  return error.issues
    .slice(0, 4)
    .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

/** Validates `m` and returns its canonical bytes. Throws BAD_INPUT when invalid. */
export function encodeManifest(m: Manifest): Uint8Array {
  const parsed = ManifestSchema.safeParse(m);
  if (!parsed.success) throw new FabricError('BAD_INPUT', `invalid manifest: ${describe(parsed.error)}`);
  const bytes = new TextEncoder().encode(canonicalJson(parsed.data));
  if (bytes.length > MAX_MANIFEST_BYTES) throw new FabricError('BAD_INPUT', `manifest is ${bytes.length} bytes, over the ${MAX_MANIFEST_BYTES}-byte limit`);
  return bytes;
}

export function manifestIdOf(bytes: Uint8Array): ManifestId {
  return sha256Hex(bytes);
}

export function manifestId(m: Manifest): ManifestId {
  return manifestIdOf(encodeManifest(m));
}

/**
 * Reads manifest bytes: JSON, schema, canonical form, and `expectedId` when given.
 * Throws BAD_INPUT (or CORRUPT_STORAGE when the id does not match) with the reason.
 */
export function decodeManifest(bytes: Uint8Array, expectedId?: ManifestId): Manifest {
  if (bytes.length > MAX_MANIFEST_BYTES) throw new FabricError('BAD_INPUT', `manifest is ${bytes.length} bytes, over the limit`);
  if (expectedId !== undefined) {
    const id = manifestIdOf(bytes);
    if (id !== expectedId) throw new FabricError('CORRUPT_STORAGE', `manifest bytes hash to ${id}, expected ${expectedId}`, { details: { manifestId: expectedId } });
  }
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FabricError('BAD_INPUT', `manifest is not JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw new FabricError('BAD_INPUT', `invalid manifest: ${describe(parsed.error)}`);
  if (canonicalJson(parsed.data) !== text) throw new FabricError('BAD_INPUT', 'manifest is not in canonical form');
  return parsed.data;
}

/** Builds a manifest from entries added in any order. */
export class ManifestBuilder {
  readonly #entries = new Map<string, Entry>();

  #add(e: Entry): void {
    const problem = pathProblem(e.path);
    if (problem !== undefined) throw new FabricError('BAD_INPUT', `checkpoint path ${JSON.stringify(e.path)}: ${problem}`);
    if (this.#entries.has(e.path)) throw new FabricError('BAD_INPUT', `checkpoint path ${JSON.stringify(e.path)} added twice`);
    this.#entries.set(e.path, e);
  }

  addDir(path: string, mode: number): void {
    this.#add({ type: 'dir', path, mode: mode & 0o7777 });
  }

  addFile(path: string, mode: number, chunks: readonly ChunkRef[]): void {
    let size = 0;
    for (const [, s] of chunks) size += s;
    this.#add({ type: 'file', path, mode: mode & 0o7777, size, chunks: chunks.map(([id, s]) => [id, s] as ChunkRef) });
  }

  addSymlink(path: string, target: string): void {
    this.#add({ type: 'symlink', path, target });
  }

  build(meta: { jobId: string; step: number; epoch: number; chunking: ChunkingParams }): Manifest {
    const entries = [...this.#entries.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    let totalBytes = 0;
    for (const e of entries) if (e.type === 'file') totalBytes += e.size;
    const candidate = {
      format: MANIFEST_FORMAT,
      jobId: meta.jobId,
      step: meta.step,
      epoch: meta.epoch,
      chunking: { algorithm: CHUNKING_ALGORITHM, minSize: meta.chunking.minSize, avgSize: meta.chunking.avgSize, maxSize: meta.chunking.maxSize },
      totalBytes,
      entries,
    };
    const parsed = ManifestSchema.safeParse(candidate);
    if (!parsed.success) throw new FabricError('BAD_INPUT', `invalid checkpoint: ${describe(parsed.error)}`);
    return parsed.data;
  }
}

/** The distinct chunks of a manifest with their sizes, in first-use order. */
export function manifestChunks(m: Manifest): Map<ChunkId, number> {
  const chunks = new Map<ChunkId, number>();
  for (const e of m.entries) {
    if (e.type !== 'file') continue;
    for (const [id, size] of e.chunks) if (!chunks.has(id)) chunks.set(id, size);
  }
  return chunks;
}

/** Bytes of the distinct chunks: what a holder stores for this manifest. */
export function uniqueChunkBytes(m: Manifest): number {
  let sum = 0;
  for (const size of manifestChunks(m).values()) sum += size;
  return sum;
}

/** The distinct chunks of `m` for which `has` is false (what a holder lacks), in first-use order. */
export function missingChunks(m: Manifest, has: (id: ChunkId) => boolean): ChunkRef[] {
  const out: ChunkRef[] = [];
  for (const [id, size] of manifestChunks(m)) if (!has(id)) out.push([id, size]);
  return out;
}

/** Chunks of `next` that `prev` does not have: what a new checkpoint adds to the last one. */
export function addedChunks(prev: Manifest | undefined, next: Manifest): ChunkRef[] {
  const old = prev === undefined ? new Map<ChunkId, number>() : manifestChunks(prev);
  return missingChunks(next, (id) => old.has(id));
}

export { ManifestIdSchema, ChunkIdSchema };
