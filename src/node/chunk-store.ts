/**
 * Checkpoint chunks and manifests on disk, content-addressed.
 *
 *   <dir>/chunks/ab/abcdef…   a chunk, named by the SHA-256 of its bytes (fan-out on 2 hex digits)
 *   <dir>/manifests/<id>.json a manifest, named by the SHA-256 of its canonical bytes
 *   <dir>/tmp/                files being written (emptied at open)
 *   <dir>/quarantine/         chunks and manifests whose bytes no longer match their name
 *
 * Writes go to tmp/, are fsynced, renamed into place, and the directory is fsynced, so a crash
 * leaves a whole chunk or none. A batch of chunks is written and fsynced in parallel (libuv's
 * thread pool) before the renames, so durability costs one round of fsyncs per batch, not one
 * per chunk. Every read hashes the bytes: a chunk that does not match its name is moved to
 * quarantine/, dropped from the index and reported as corrupt, never returned. The in-memory
 * index (id → size) is rebuilt from the directory at open and is what `has` answers from.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { open, readFile, rename, rm, statfs, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CHUNK_ID_RE,
  MAX_MANIFEST_BYTES,
  decodeManifest,
  manifestChunks,
  manifestIdOf,
  sha256Hex,
  type ChunkId,
  type ChunkRef,
  type Manifest,
  type ManifestId,
} from '../checkpoint/index.ts';
import { FabricError, errorMessage, type Logger } from '../core/index.ts';

export type ChunkRead = { ok: true; data: Buffer } | { ok: false; reason: 'missing' | 'corrupt' };

/** A chunk's bytes: one buffer, or the pieces they arrived in from the network (written with writev). */
export type ChunkBytes = Uint8Array | readonly Uint8Array[];

function bytesOf(data: ChunkBytes): number {
  if (data instanceof Uint8Array) return data.length;
  let n = 0;
  for (const p of data) n += p.length;
  return n;
}

function hashOf(data: ChunkBytes): string {
  if (data instanceof Uint8Array) return sha256Hex(data);
  const h = createHash('sha256');
  for (const p of data) h.update(p);
  return h.digest('hex');
}

/** Writes `data` to a new file `path` and fsyncs it. */
async function writeDurable(path: string, data: ChunkBytes): Promise<void> {
  const fh = await open(path, 'wx', 0o600);
  try {
    const parts = data instanceof Uint8Array ? [data] : data;
    let total = 0;
    for (const p of parts) total += p.length;
    let written = 0;
    let rest: Uint8Array[] = [...parts];
    while (written < total) {
      const { bytesWritten } = await fh.writev(rest);
      written += bytesWritten;
      if (written < total) {
        // a short write: drop what went out and go on with the rest
        let skip = bytesWritten;
        const next: Uint8Array[] = [];
        for (const p of rest) {
          if (skip >= p.length) skip -= p.length;
          else {
            next.push(skip > 0 ? p.subarray(skip) : p);
            skip = 0;
          }
        }
        rest = next;
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface ChunkStoreStats {
  chunks: number;
  chunkBytes: number;
  manifests: number;
  quarantined: number;
}

export interface StoreGcResult {
  deletedChunks: number;
  deletedBytes: number;
  deletedManifests: number;
}

/** Chunks at most this many bytes in total are written and fsynced as one batch. */
const BATCH_BYTES = 32 * 1024 * 1024;

export class ChunkStore {
  readonly dir: string;
  readonly #log: Logger;
  readonly #chunks = new Map<ChunkId, number>();
  readonly #manifests = new Set<ManifestId>();
  /** Pin counts: chunks and manifests of transfers in flight, which GC must not take. */
  readonly #pins = new Map<ChunkId, number>();
  readonly #manifestPins = new Map<ManifestId, number>();
  #bytes = 0;
  #quarantined = 0;
  #tmpSeq = 0;
  /** Fan-out directories known to exist (made once, not per write). */
  readonly #fanDirs = new Set<string>();
  readonly #tmpPrefix = `${process.pid}-${randomBytes(4).toString('hex')}`;

  private constructor(dir: string, log: Logger) {
    this.dir = dir;
    this.#log = log;
  }

  /** Opens (creating when absent) the store under `dir` and indexes what it holds. */
  static open(dir: string, log: Logger): ChunkStore {
    const store = new ChunkStore(dir, log.child({ module: 'chunk-store' }));
    for (const sub of ['chunks', 'manifests', 'tmp', 'quarantine']) mkdirSync(join(dir, sub), { recursive: true, mode: 0o700 });
    rmSync(join(dir, 'tmp'), { recursive: true, force: true });
    mkdirSync(join(dir, 'tmp'), { mode: 0o700 });
    store.#scan();
    return store;
  }

  #scan(): void {
    const chunksDir = join(this.dir, 'chunks');
    for (const fan of readdirSync(chunksDir)) {
      if (!/^[0-9a-f]{2}$/.test(fan)) continue;
      for (const name of readdirSync(join(chunksDir, fan))) {
        if (!CHUNK_ID_RE.test(name) || !name.startsWith(fan)) continue;
        try {
          const st = statSync(join(chunksDir, fan, name));
          if (!st.isFile()) continue;
          this.#chunks.set(name, st.size);
          this.#bytes += st.size;
        } catch {
          // removed while scanning
        }
      }
    }
    for (const name of readdirSync(join(this.dir, 'manifests'))) {
      const m = /^([0-9a-f]{64})\.json$/.exec(name);
      if (m) this.#manifests.add(m[1]!);
    }
    this.#quarantined = readdirSync(join(this.dir, 'quarantine')).length;
    this.#log.debug({ chunks: this.#chunks.size, bytes: this.#bytes, manifests: this.#manifests.size }, 'chunk store opened');
  }

  chunkPath(id: ChunkId): string {
    return join(this.dir, 'chunks', id.slice(0, 2), id);
  }

  #manifestPath(id: ManifestId): string {
    return join(this.dir, 'manifests', `${id}.json`);
  }

  #tmpPath(): string {
    return join(this.dir, 'tmp', `${this.#tmpPrefix}-${++this.#tmpSeq}`);
  }

  has(id: ChunkId): boolean {
    return this.#chunks.has(id);
  }

  sizeOf(id: ChunkId): number | undefined {
    return this.#chunks.get(id);
  }

  chunkIds(): ChunkId[] {
    return [...this.#chunks.keys()];
  }

  stats(): ChunkStoreStats {
    return { chunks: this.#chunks.size, chunkBytes: this.#bytes, manifests: this.#manifests.size, quarantined: this.#quarantined };
  }

  /** Free bytes on the store's filesystem (for replica choice and push admission). */
  async freeBytes(): Promise<number> {
    const st = await statfs(this.dir);
    return Number(st.bavail) * Number(st.bsize);
  }

  /** Reads a chunk and checks it against its id. A corrupt chunk is quarantined and reported, never returned. */
  async read(id: ChunkId): Promise<ChunkRead> {
    if (!CHUNK_ID_RE.test(id)) return { ok: false, reason: 'missing' };
    let data: Buffer;
    try {
      data = await readFile(this.chunkPath(id));
    } catch (err) {
      if (this.#chunks.has(id)) {
        this.#log.warn({ chunk: id, err: errorMessage(err) }, 'indexed chunk cannot be read; dropped from the index');
        this.#forget(id);
      }
      return { ok: false, reason: 'missing' };
    }
    if (sha256Hex(data) !== id) {
      await this.#quarantineChunk(id, `bytes hash to something else (${data.length} bytes)`);
      return { ok: false, reason: 'corrupt' };
    }
    if (!this.#chunks.has(id)) {
      this.#chunks.set(id, data.length);
      this.#bytes += data.length;
    }
    return { ok: true, data };
  }

  /** Like `read`, but throws NOT_FOUND or CORRUPT_STORAGE (with `details.chunkId`). */
  async get(id: ChunkId): Promise<Buffer> {
    const r = await this.read(id);
    if (r.ok) return r.data;
    if (r.reason === 'missing') throw new FabricError('NOT_FOUND', `chunk ${id} is not held`, { details: { chunkId: id } });
    throw new FabricError('CORRUPT_STORAGE', `chunk ${id} is corrupt on disk (quarantined)`, { details: { chunkId: id } });
  }

  /**
   * Stores chunks durably. Each chunk's bytes are checked against its id unless the caller has
   * just hashed them itself (`verified`); a mismatch throws BAD_INPUT before anything is written.
   * Returns how many chunks were new.
   */
  async putMany(items: readonly { id: ChunkId; data: ChunkBytes }[], opts: { verified?: boolean } = {}): Promise<number> {
    for (const { id, data } of items) {
      if (!CHUNK_ID_RE.test(id)) throw new FabricError('BAD_INPUT', `not a chunk id: ${JSON.stringify(id).slice(0, 80)}`);
      if (opts.verified !== true && hashOf(data) !== id) throw new FabricError('BAD_INPUT', `chunk bytes do not match id ${id}`, { details: { chunkId: id } });
    }
    let added = 0;
    let batch: { id: ChunkId; data: ChunkBytes }[] = [];
    let batchBytes = 0;
    const seen = new Set<ChunkId>();
    for (const item of items) {
      if (this.#chunks.has(item.id) || seen.has(item.id)) continue;
      seen.add(item.id);
      batch.push(item);
      batchBytes += bytesOf(item.data);
      if (batchBytes >= BATCH_BYTES) {
        added += await this.#writeBatch(batch);
        batch = [];
        batchBytes = 0;
      }
    }
    if (batch.length > 0) added += await this.#writeBatch(batch);
    return added;
  }

  async put(id: ChunkId, data: Uint8Array, opts: { verified?: boolean } = {}): Promise<boolean> {
    return (await this.putMany([{ id, data }], opts)) === 1;
  }

  async #writeBatch(batch: readonly { id: ChunkId; data: ChunkBytes }[]): Promise<number> {
    const tmps = batch.map(() => this.#tmpPath());
    try {
      // write + fsync every file in parallel, then rename each into place
      await Promise.all(batch.map((item, i) => writeDurable(tmps[i]!, item.data)));
      const dirs = new Set<string>();
      for (let i = 0; i < batch.length; i++) {
        const { id, data } = batch[i]!;
        const size = bytesOf(data);
        const dir = join(this.dir, 'chunks', id.slice(0, 2));
        if (!this.#fanDirs.has(dir)) {
          mkdirSync(dir, { recursive: true, mode: 0o700 });
          this.#fanDirs.add(dir);
        }
        dirs.add(dir);
        await rename(tmps[i]!, this.chunkPath(id));
        if (!this.#chunks.has(id)) {
          this.#chunks.set(id, size);
          this.#bytes += size;
        }
      }
      await Promise.all([...dirs].map((d) => fsyncDirAsync(d)));
      return batch.length;
    } catch (err) {
      this.#fanDirs.clear(); // in case a directory went away under us
      await Promise.all(tmps.map((t) => rm(t, { force: true })));
      throw new FabricError('INTERNAL', `cannot store chunks: ${errorMessage(err)}`, { cause: err });
    }
  }

  async #quarantineChunk(id: ChunkId, why: string): Promise<void> {
    this.#log.warn({ chunk: id, why }, 'corrupt chunk quarantined');
    this.#forget(id);
    try {
      await rename(this.chunkPath(id), join(this.dir, 'quarantine', `${id}.${this.#tmpPrefix}-${++this.#tmpSeq}`));
      this.#quarantined++;
    } catch (err) {
      // already gone (a concurrent read quarantined it): nothing more to do
      this.#log.debug({ chunk: id, err: errorMessage(err) }, 'quarantine rename failed');
    }
  }

  #forget(id: ChunkId): void {
    const size = this.#chunks.get(id);
    if (size === undefined) return;
    this.#chunks.delete(id);
    this.#bytes -= size;
  }

  async delete(id: ChunkId): Promise<boolean> {
    if (!CHUNK_ID_RE.test(id)) return false;
    const had = this.#chunks.has(id);
    this.#forget(id);
    try {
      await unlink(this.chunkPath(id));
      return true;
    } catch {
      return had;
    }
  }

  /** Re-reads every chunk of `manifest` (or of the whole store) and quarantines the corrupt ones; returns them. */
  async scrub(manifest?: Manifest): Promise<{ checked: number; corrupt: ChunkId[]; missing: ChunkId[] }> {
    const ids = manifest === undefined ? this.chunkIds() : [...manifestChunks(manifest).keys()];
    const corrupt: ChunkId[] = [];
    const missing: ChunkId[] = [];
    for (const id of ids) {
      const r = await this.read(id);
      if (!r.ok) (r.reason === 'corrupt' ? corrupt : missing).push(id);
    }
    return { checked: ids.length, corrupt, missing };
  }

  /** Distinct chunks of `manifest` the index does not hold. */
  missing(manifest: Manifest): ChunkRef[] {
    const out: ChunkRef[] = [];
    for (const [id, size] of manifestChunks(manifest)) if (!this.#chunks.has(id)) out.push([id, size]);
    return out;
  }

  /** Bytes of `manifest`'s distinct chunks the index holds. */
  heldBytes(manifest: Manifest): number {
    let sum = 0;
    for (const [id, size] of manifestChunks(manifest)) if (this.#chunks.has(id)) sum += size;
    return sum;
  }

  // ---- pins ----------------------------------------------------------------------------------

  /** Keeps the chunks `ids` (and the manifest `manifestId`) from GC until the returned function is called. */
  pin(ids: Iterable<ChunkId>, manifestId?: ManifestId): () => void {
    const list = [...ids];
    for (const id of list) this.#pins.set(id, (this.#pins.get(id) ?? 0) + 1);
    if (manifestId !== undefined) this.#manifestPins.set(manifestId, (this.#manifestPins.get(manifestId) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const id of list) unpin(this.#pins, id);
      if (manifestId !== undefined) unpin(this.#manifestPins, manifestId);
    };
  }

  pinned(): ReadonlySet<ChunkId> {
    return new Set(this.#pins.keys());
  }

  // ---- manifests -----------------------------------------------------------------------------

  hasManifest(id: ManifestId): boolean {
    return this.#manifests.has(id);
  }

  manifestIds(): ManifestId[] {
    return [...this.#manifests];
  }

  /** Stores manifest bytes (checked: canonical, valid, and hashing to `expectedId` when given); returns the id. */
  async putManifest(bytes: Uint8Array, expectedId?: ManifestId): Promise<ManifestId> {
    decodeManifest(bytes, expectedId); // throws unless valid, canonical and matching
    const id = expectedId ?? manifestIdOf(bytes);
    if (this.#manifests.has(id)) return id;
    const tmp = this.#tmpPath();
    try {
      await writeFile(tmp, bytes, { mode: 0o600, flush: true });
      await rename(tmp, this.#manifestPath(id));
      await fsyncDirAsync(join(this.dir, 'manifests'));
    } catch (err) {
      await rm(tmp, { force: true });
      throw new FabricError('INTERNAL', `cannot store manifest ${id}: ${errorMessage(err)}`, { cause: err });
    }
    this.#manifests.add(id);
    return id;
  }

  /** The manifest's bytes, checked against its id; a corrupt file is quarantined (NOT_FOUND / CORRUPT_STORAGE). */
  async getManifestBytes(id: ManifestId): Promise<Uint8Array> {
    if (!CHUNK_ID_RE.test(id)) throw new FabricError('NOT_FOUND', `no manifest ${JSON.stringify(id).slice(0, 80)}`);
    let bytes: Buffer;
    try {
      const st = statSync(this.#manifestPath(id));
      if (st.size > MAX_MANIFEST_BYTES) throw new Error(`manifest file is ${st.size} bytes`);
      bytes = await readFile(this.#manifestPath(id));
    } catch (err) {
      this.#manifests.delete(id);
      throw new FabricError('NOT_FOUND', `manifest ${id} is not held (${errorMessage(err)})`, { details: { manifestId: id } });
    }
    if (manifestIdOf(bytes) !== id) {
      this.#log.warn({ manifest: id }, 'corrupt manifest quarantined');
      this.#manifests.delete(id);
      await rename(this.#manifestPath(id), join(this.dir, 'quarantine', `${id}.json.${this.#tmpPrefix}-${++this.#tmpSeq}`)).catch(() => {});
      this.#quarantined++;
      throw new FabricError('CORRUPT_STORAGE', `manifest ${id} is corrupt on disk (quarantined)`, { details: { manifestId: id } });
    }
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  async getManifest(id: ManifestId): Promise<Manifest> {
    return decodeManifest(await this.getManifestBytes(id), id);
  }

  async deleteManifest(id: ManifestId): Promise<boolean> {
    if (!CHUNK_ID_RE.test(id)) return false;
    const had = this.#manifests.delete(id);
    await rm(this.#manifestPath(id), { force: true });
    return had;
  }

  /**
   * Deletes every manifest not in `keep` and every chunk that no kept manifest refers to, except
   * pinned manifests and chunks (transfers in flight) and `protect`. Kept manifests that cannot be read keep
   * nothing alive: their chunks would be unreadable as a checkpoint anyway.
   */
  async gc(keep: Iterable<ManifestId>, protect: ReadonlySet<ChunkId> = new Set()): Promise<StoreGcResult> {
    const keepSet = new Set(keep);
    const live = new Set<ChunkId>();
    let deletedManifests = 0;
    for (const id of this.manifestIds()) {
      // A pinned manifest (a restore or an incoming push in flight) stays, and so do its chunks.
      if (!keepSet.has(id) && !this.#manifestPins.has(id)) {
        if (await this.deleteManifest(id)) deletedManifests++;
        continue;
      }
      try {
        for (const chunk of manifestChunks(await this.getManifest(id)).keys()) live.add(chunk);
      } catch (err) {
        this.#log.warn({ manifest: id, err: errorMessage(err) }, 'kept manifest unreadable during gc');
      }
    }
    let deletedChunks = 0;
    let deletedBytes = 0;
    for (const [id, size] of [...this.#chunks]) {
      if (live.has(id) || protect.has(id) || this.#pins.has(id)) continue;
      await this.delete(id);
      deletedChunks++;
      deletedBytes += size;
    }
    if (deletedChunks + deletedManifests > 0) this.#log.info({ deletedChunks, deletedBytes, deletedManifests }, 'checkpoint gc');
    return { deletedChunks, deletedBytes, deletedManifests };
  }
}

function unpin(pins: Map<string, number>, id: string): void {
  const n = (pins.get(id) ?? 1) - 1;
  if (n <= 0) pins.delete(id);
  else pins.set(id, n);
}

async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
