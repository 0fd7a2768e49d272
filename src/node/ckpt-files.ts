/**
 * Checkpoint directories ⇄ the chunk store.
 *
 * `commitDirectory` walks a job's checkpoint directory (files, directories, relative symlinks;
 * anything else is refused), cuts every file into content-defined chunks as it reads it, hashes
 * them, and stores the chunks the store does not hold yet, while it reads on. A file that
 * changes while it is read (size or mtime) fails the commit: the job must not write into a
 * checkpoint it is committing. The manifest is stored last.
 *
 * `materializeCheckpoint` writes a manifest's files into a fresh directory next to the target,
 * from chunks verified on read, fsyncs them, sets modes, and renames the directory into place,
 * so the target is either absent or complete. Nothing is ever written through a symlink.
 */
import { randomBytes } from 'node:crypto';
import { lstatSync, readdirSync, readlinkSync, rmSync, statSync, mkdirSync, renameSync, rmdirSync, type Stats } from 'node:fs';
import { chmod, mkdir, open, symlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import {
  Chunker,
  DEFAULT_CHUNKING,
  ManifestBuilder,
  encodeManifest,
  manifestChunks,
  manifestIdOf,
  sha256Hex,
  type ChunkId,
  type ChunkRef,
  type ChunkingParams,
  type Manifest,
  type ManifestId,
} from '../checkpoint/index.ts';
import { FabricError, errorMessage } from '../core/index.ts';
import { fsyncDir } from './files.ts';
import type { ChunkStore } from './chunk-store.ts';

export interface CheckpointMeta {
  jobId: string;
  step: number;
  epoch: number;
}

export interface CommitProgress {
  bytesRead: number;
  totalBytes: number;
}

export interface CommitOptions {
  chunking?: ChunkingParams;
  onProgress?: (p: CommitProgress) => void;
  signal?: AbortSignal;
  /** Read size per file read (default 8 MiB). */
  readBlockBytes?: number;
}

export interface CommitResult {
  manifest: Manifest;
  manifestId: ManifestId;
  manifestBytes: Uint8Array;
  /** Sum of the file sizes. */
  totalBytes: number;
  /** Distinct chunks in the checkpoint. */
  chunks: number;
  /** Chunks (and their bytes) the store did not hold before. */
  newChunks: number;
  newBytes: number;
}

interface WalkItem {
  rel: string;
  abs: string;
  st: Stats;
}

/** The tree under `root`, parents before children, sorted; refuses special files. */
function walk(root: string): WalkItem[] {
  const out: WalkItem[] = [];
  const visit = (relDir: string): void => {
    const absDir = relDir === '' ? root : join(root, relDir);
    const names = readdirSync(absDir).sort();
    for (const name of names) {
      const rel = relDir === '' ? name : `${relDir}/${name}`;
      const abs = join(absDir, name);
      const st = lstatSync(abs);
      if (st.isDirectory()) {
        out.push({ rel, abs, st });
        visit(rel);
      } else if (st.isFile() || st.isSymbolicLink()) {
        out.push({ rel, abs, st });
      } else {
        throw new FabricError('BAD_INPUT', `checkpoint ${root} holds ${rel}, which is neither a file, a directory nor a symlink`);
      }
    }
  };
  let rootSt: Stats;
  try {
    rootSt = statSync(root);
  } catch (err) {
    throw new FabricError('NOT_FOUND', `checkpoint directory ${root} cannot be read: ${errorMessage(err)}`, { cause: err });
  }
  if (!rootSt.isDirectory()) throw new FabricError('BAD_INPUT', `checkpoint ${root} is not a directory`);
  visit('');
  return out;
}

/** Cuts, hashes and stores the checkpoint in `dir`; returns its manifest (stored too). */
export async function commitDirectory(store: ChunkStore, dir: string, meta: CheckpointMeta, opts: CommitOptions = {}): Promise<CommitResult> {
  const chunking = opts.chunking ?? DEFAULT_CHUNKING;
  const items = walk(dir);
  let totalBytes = 0;
  for (const it of items) if (it.st.isFile()) totalBytes += it.st.size;

  const builder = new ManifestBuilder();
  const block = Buffer.allocUnsafe(opts.readBlockBytes ?? 8 * 1024 * 1024);
  let bytesRead = 0;
  let newChunks = 0;
  let newBytes = 0;
  // Chunks waiting to be written, and the write in flight: hashing the next bytes overlaps it.
  let batch: { id: ChunkId; data: Uint8Array }[] = [];
  let batchBytes = 0;
  const queued = new Set<ChunkId>();
  // New chunks belong to no stored manifest until the end: pinned so that a gc meanwhile keeps them.
  const releases: (() => void)[] = [];
  let inflight: Promise<number> = Promise.resolve(0);
  const flush = async (): Promise<void> => {
    const toWrite = batch;
    batch = [];
    batchBytes = 0;
    await inflight;
    inflight = store.putMany(toWrite, { verified: true });
    // a failure surfaces at the next await of `inflight`; keep it from being unhandled meanwhile
    inflight.catch(() => {});
  };
  const take = (chunks: Uint8Array[], refs: ChunkRef[]): void => {
    for (const c of chunks) {
      const id = sha256Hex(c);
      refs.push([id, c.length]);
      if (queued.has(id)) continue;
      queued.add(id);
      releases.push(store.pin([id]));
      if (store.has(id)) continue;
      newChunks++;
      newBytes += c.length;
      batch.push({ id, data: c });
      batchBytes += c.length;
    }
  };

  try {
    for (const it of items) {
      opts.signal?.throwIfAborted();
      if (it.st.isDirectory()) {
        builder.addDir(it.rel, it.st.mode);
      } else if (it.st.isSymbolicLink()) {
        builder.addSymlink(it.rel, readlinkSync(it.abs));
      } else {
        const chunker = new Chunker(chunking);
        const refs: ChunkRef[] = [];
        let fh: FileHandle;
        try {
          fh = await open(it.abs, 'r');
        } catch (err) {
          throw new FabricError('BAD_INPUT', `cannot read ${it.abs}: ${errorMessage(err)}`, { cause: err });
        }
        try {
          const before = await fh.stat();
          let pos = 0;
          for (;;) {
            const { bytesRead: n } = await fh.read(block, 0, block.length, pos);
            if (n === 0) break;
            pos += n;
            bytesRead += n;
            take(chunker.push(block.subarray(0, n)), refs);
            if (batchBytes >= 32 * 1024 * 1024) await flush();
            opts.onProgress?.({ bytesRead, totalBytes });
            opts.signal?.throwIfAborted();
          }
          take(chunker.finish(), refs);
          const after = await fh.stat();
          if (after.size !== before.size || after.mtimeMs !== before.mtimeMs || pos !== after.size) {
            throw new FabricError('BAD_INPUT', `${it.abs} changed while the checkpoint was being committed`);
          }
        } finally {
          await fh.close();
        }
        builder.addFile(it.rel, it.st.mode, refs);
      }
    }
    await flush();
    await inflight;

    const manifest = builder.build({ ...meta, chunking });
    const manifestBytes = encodeManifest(manifest);
    const manifestId = manifestIdOf(manifestBytes);
    await store.putManifest(manifestBytes, manifestId);
    return { manifest, manifestId, manifestBytes, totalBytes, chunks: manifestChunks(manifest).size, newChunks, newBytes };
  } finally {
    for (const release of releases) release();
  }
}

export interface MaterializeOptions {
  signal?: AbortSignal;
  onProgress?: (p: { bytesWritten: number; totalBytes: number }) => void;
  /**
   * fsync the files and directories (default true). A job's restore directory is a scratch copy
   * of replicated chunks, rebuilt from them should the host crash: it need not reach the disk
   * before the job starts, and an fsync of 1 GiB costs seconds of restart time.
   */
  durable?: boolean;
}

/**
 * Writes `manifest` as the directory `target` (which must not exist, or be an empty directory).
 * Every chunk is read from `store` and verified; a missing or corrupt one fails the restore with
 * NOT_FOUND / CORRUPT_STORAGE carrying `details.chunkId`, and nothing is left at `target`.
 */
export async function materializeCheckpoint(store: ChunkStore, manifest: Manifest, target: string, opts: MaterializeOptions = {}): Promise<{ files: number; bytes: number }> {
  const durable = opts.durable ?? true;
  let targetExists = false;
  try {
    const st = lstatSync(target);
    if (!st.isDirectory() || readdirSync(target).length > 0) {
      throw new FabricError('BAD_INPUT', `restore target ${target} exists and is not an empty directory`);
    }
    targetExists = true;
  } catch (err) {
    if (err instanceof FabricError) throw err;
  }
  mkdirSync(dirname(target), { recursive: true });
  const work = join(dirname(target), `.${basename(target)}.restoring-${randomBytes(4).toString('hex')}`);
  mkdirSync(work, { mode: 0o700 });
  let files = 0;
  let bytes = 0;
  try {
    const dirModes: { path: string; mode: number }[] = [];
    for (const e of manifest.entries) {
      opts.signal?.throwIfAborted();
      // entries are sorted and validated (no "..", no path under a symlink or a file)
      const abs = join(work, ...e.path.split('/'));
      if (e.type === 'dir') {
        await mkdir(abs, { recursive: true, mode: 0o700 });
        dirModes.push({ path: abs, mode: e.mode });
      } else if (e.type === 'symlink') {
        await mkdir(dirname(abs), { recursive: true, mode: 0o700 });
        await symlink(e.target, abs);
      } else {
        await mkdir(dirname(abs), { recursive: true, mode: 0o700 });
        // 'wx': create, fail if anything (a symlink included) is already there
        const fh = await open(abs, 'wx', 0o600);
        try {
          for (const [id] of e.chunks) {
            const data = await store.get(id);
            let off = 0;
            while (off < data.length) off += (await fh.write(data, off, data.length - off)).bytesWritten;
            bytes += data.length;
            opts.onProgress?.({ bytesWritten: bytes, totalBytes: manifest.totalBytes });
          }
          if (durable) await fh.sync();
        } finally {
          await fh.close();
        }
        await chmod(abs, e.mode);
        files++;
      }
    }
    // Directory modes last, deepest first: a read-only directory must not stop its children.
    for (const d of dirModes.reverse()) await chmod(d.path, d.mode);
    if (durable) fsyncDir(work);
    if (targetExists) rmdirSync(target);
    renameSync(work, target);
    if (durable) fsyncDir(dirname(target));
  } catch (err) {
    rmSync(work, { recursive: true, force: true });
    throw err;
  }
  return { files, bytes };
}
