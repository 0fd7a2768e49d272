/**
 * The checkpoint service the daemon holds: the chunk store, the `/fabric/ckpt/1` protocol, and
 * the flows built on them.
 *
 *   commit      a job's checkpoint directory → chunks + manifest in the local store
 *   checkpoint  commit, choose R holders (other zones first, those holding most, most free disk),
 *               replicate to them, and say who holds it: what the Raft `checkpoint.commit` records
 *   restore     manifest + missing chunks from several holders in parallel → a directory
 *   heal        re-verify a local copy and fetch its corrupt or missing chunks from other holders
 *   gc          drop local manifests no longer kept and chunks no kept manifest uses
 *
 * Raft is not touched here: the daemon proposes `checkpoint.commit` with what `checkpoint`
 * returns, and decides which manifests to keep (`chooseCheckpointsToDrop` over committed state).
 */
import type { Libp2p } from '@libp2p/interface';
import { join } from 'node:path';
import { chooseReplicas, uniqueChunkBytes, type ChunkingParams, type Manifest, type ManifestId, type ReplicaChoice } from '../checkpoint/index.ts';
import { FabricError, errorMessage, isFabricError, type Logger } from '../core/index.ts';
import { ChunkStore, type ChunkStoreStats, type StoreGcResult } from './chunk-store.ts';
import { commitDirectory, materializeCheckpoint, type CheckpointMeta, type CommitProgress, type CommitResult } from './ckpt-files.ts';
import { CkptTransfer, type FetchResult, type ReplicateProgress, type ReplicateResult } from './ckpt-transfer.ts';

export interface CheckpointServiceOptions {
  host: Libp2p;
  /** The store lives in `<dir>` (the daemon passes `<data-dir>/checkpoints`). */
  dir: string;
  log: Logger;
  chunking?: ChunkingParams;
  /** Refuse offers from peers (fencing: a stale epoch, an unknown job); undefined accepts. */
  admitOffer?: (peer: string, manifest: Manifest, manifestId: ManifestId) => string | undefined | Promise<string | undefined>;
  /** Local manifests this recent (committed or received) are never collected (default 10 min). */
  protectRecentMs?: number;
  streamsPerPeer?: number;
  windowBytes?: number;
  reserveBytes?: number;
  idleTimeoutMs?: number;
  /** Memory all inbound checkpoint streams together may hold (default 512 MiB). */
  inboundBufferBytes?: number;
  /** Bulk channels for chunk data: listen address and port (ckpt-transfer.ts); undefined: libp2p only. */
  bulk?: { host: string; port: number };
}

export interface PeerPlace {
  peerId: string;
  zone: string | undefined;
}

export interface CheckpointRequest extends CheckpointMeta {
  dir: string;
  /** This peer (the writer) and its zone. */
  writer: PeerPlace;
  /** Live peers that may hold a replica, with their zones. */
  candidates: readonly PeerPlace[];
  /** R: holders wanted besides the writer (default 2). */
  replicas?: number;
  signal?: AbortSignal;
  onCommitProgress?: (p: CommitProgress) => void;
  onReplicateProgress?: (p: ReplicateProgress) => void;
}

export interface CheckpointOutcome {
  commit: CommitResult;
  choice: ReplicaChoice;
  replication: ReplicateResult;
  /** The writer and every replica that acknowledged the whole checkpoint. */
  holders: string[];
  /** Whether R replicas (besides the writer) hold it: only then may it be recorded in Raft. */
  replicated: boolean;
  /** For the Raft command: the checkpoint's size in bytes (its files). */
  sizeBytes: number;
}

export interface RestoreOutcome {
  manifest: Manifest;
  fetch: FetchResult;
  files: number;
  bytes: number;
}

export class CheckpointService {
  readonly store: ChunkStore;
  readonly transfer: CkptTransfer;
  readonly #log: Logger;
  readonly #opts: CheckpointServiceOptions;
  readonly #recent = new Map<ManifestId, number>();

  constructor(opts: CheckpointServiceOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ module: 'checkpoints' });
    this.store = ChunkStore.open(opts.dir, opts.log);
    this.transfer = new CkptTransfer({
      host: opts.host,
      store: this.store,
      log: opts.log,
      admitOffer: async (peer, manifest, id) => {
        const verdict = await opts.admitOffer?.(peer, manifest, id);
        if (verdict === undefined) this.#recent.set(id, Date.now());
        return verdict;
      },
      ...(opts.streamsPerPeer !== undefined ? { streamsPerPeer: opts.streamsPerPeer } : {}),
      ...(opts.windowBytes !== undefined ? { windowBytes: opts.windowBytes } : {}),
      ...(opts.reserveBytes !== undefined ? { reserveBytes: opts.reserveBytes } : {}),
      ...(opts.idleTimeoutMs !== undefined ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
      ...(opts.inboundBufferBytes !== undefined ? { inboundBufferBytes: opts.inboundBufferBytes } : {}),
      ...(opts.bulk !== undefined ? { bulk: opts.bulk } : {}),
    });
  }

  /** Where the daemon keeps it: `<data-dir>/checkpoints`. */
  static dirIn(dataDir: string): string {
    return join(dataDir, 'checkpoints');
  }

  async start(): Promise<void> {
    await this.transfer.start();
  }

  async stop(): Promise<void> {
    await this.transfer.stop();
  }

  stats(): ChunkStoreStats {
    return this.store.stats();
  }

  /** Cuts `dir` into chunks and stores them and the manifest locally. */
  async commit(dir: string, meta: CheckpointMeta, opts: { signal?: AbortSignal; onProgress?: (p: CommitProgress) => void } = {}): Promise<CommitResult> {
    const result = await commitDirectory(this.store, dir, meta, {
      ...(this.#opts.chunking !== undefined ? { chunking: this.#opts.chunking } : {}),
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
      ...(opts.onProgress !== undefined ? { onProgress: opts.onProgress } : {}),
    });
    this.#recent.set(result.manifestId, Date.now());
    this.#log.info(
      { job: meta.jobId, step: meta.step, manifest: result.manifestId, bytes: result.totalBytes, chunks: result.chunks, newBytes: result.newBytes },
      'checkpoint committed locally',
    );
    return result;
  }

  async replicate(manifestId: ManifestId, peers: readonly string[], opts: { signal?: AbortSignal; onProgress?: (p: ReplicateProgress) => void } = {}): Promise<ReplicateResult> {
    return this.transfer.replicate(manifestId, peers, opts);
  }

  /**
   * The whole write path short of Raft: commit `dir`, survey the candidates, choose R holders
   * (chooseReplicas), replicate to them, and, if some fail, to the next best candidates.
   */
  async checkpoint(req: CheckpointRequest): Promise<CheckpointOutcome> {
    const replicas = req.replicas ?? 2;
    const commit = await this.commit(req.dir, { jobId: req.jobId, step: req.step, epoch: req.epoch }, {
      ...(req.signal !== undefined ? { signal: req.signal } : {}),
      ...(req.onCommitProgress !== undefined ? { onProgress: req.onCommitProgress } : {}),
    });
    const zones = new Map(req.candidates.map((c) => [c.peerId, c.zone]));
    const others = req.candidates.map((c) => c.peerId).filter((p) => p !== req.writer.peerId);
    const survey = await this.transfer.survey(others, commit.manifest, req.signal);
    const reachable = survey.filter((s) => s.error === undefined);
    const choice = chooseReplicas({
      writer: req.writer,
      candidates: reachable.map((s) => ({ peerId: s.peerId, zone: zones.get(s.peerId), freeBytes: s.freeBytes ?? undefined, heldBytes: s.heldBytes })),
      replicas: reachable.length,
      checkpointBytes: uniqueChunkBytes(commit.manifest),
      ...(this.#opts.reserveBytes !== undefined ? { reserveBytes: this.#opts.reserveBytes } : {}),
    });
    // `choice.holders` ranks every usable candidate: the first R are the targets, the rest spares.
    const ranked = choice.holders;
    const holders: string[] = [];
    let replication: ReplicateResult | undefined;
    let next = 0;
    while (holders.length < replicas && next < ranked.length) {
      const batch = ranked.slice(next, next + (replicas - holders.length));
      next += batch.length;
      const r = await this.transfer.replicate(commit.manifestId, batch, {
        ...(req.signal !== undefined ? { signal: req.signal } : {}),
        ...(req.onReplicateProgress !== undefined ? { onProgress: req.onReplicateProgress } : {}),
      });
      holders.push(...r.holders);
      replication = replication === undefined ? r : { ...r, peers: [...replication.peers, ...r.peers], holders: [...replication.holders, ...r.holders] };
    }
    replication ??= { manifestId: commit.manifestId, checkpointBytes: uniqueChunkBytes(commit.manifest), peers: [], holders: [] };
    const finalChoice: ReplicaChoice = { holders: ranked.slice(0, replicas), excluded: choice.excluded, shortfall: Math.max(0, replicas - ranked.length) };
    const replicated = holders.length >= replicas;
    if (!replicated) this.#log.warn({ manifest: commit.manifestId, holders, wanted: replicas }, 'checkpoint has fewer replicas than wanted');
    return { commit, choice: finalChoice, replication, holders: [req.writer.peerId, ...holders], replicated, sizeBytes: commit.totalBytes };
  }

  /**
   * Restores checkpoint `manifestId` into `target` (absent or an empty directory): the manifest
   * and every chunk not held locally come from `holders`, in parallel, verified; a chunk that
   * turns out corrupt on the local disk while writing is fetched again (up to 3 rounds).
   */
  async restore(
    manifestId: ManifestId,
    holders: readonly string[],
    target: string,
    opts: { signal?: AbortSignal; onProgress?: (p: { fetchedBytes: number; totalBytes: number }) => void; durable?: boolean } = {},
  ): Promise<RestoreOutcome> {
    const manifest = await this.transfer.fetchManifest(manifestId, holders, opts.signal);
    const release = this.store.pin([], manifestId);
    const fetchTotal: FetchResult = { fetchedChunks: 0, fetchedBytes: 0, perHolder: {}, failed: [], failures: [] };
    try {
      for (let round = 0; ; round++) {
        const f = await this.transfer.fetchChunks(this.store.missing(manifest), holders, opts);
        fetchTotal.fetchedChunks += f.fetchedChunks;
        fetchTotal.fetchedBytes += f.fetchedBytes;
        for (const [p, b] of Object.entries(f.perHolder)) fetchTotal.perHolder[p] = (fetchTotal.perHolder[p] ?? 0) + b;
        fetchTotal.failures.push(...f.failures);
        if (f.failed.length > 0) {
          throw new FabricError('NOT_FOUND', `restore of ${manifestId}: ${f.failed.length} chunk(s) could not be fetched from ${holders.join(', ') || 'no holders'}`, {
            details: { manifestId, failed: f.failed.slice(0, 16) },
          });
        }
        try {
          const w = await materializeCheckpoint(this.store, manifest, target, { ...(opts.signal !== undefined ? { signal: opts.signal } : {}), ...(opts.durable !== undefined ? { durable: opts.durable } : {}) });
          this.#log.info({ manifest: manifestId, target, files: w.files, bytes: w.bytes, fetched: fetchTotal.fetchedBytes }, 'checkpoint restored');
          return { manifest, fetch: fetchTotal, files: w.files, bytes: w.bytes };
        } catch (err) {
          // A chunk found corrupt (quarantined) or gone while writing: fetch it again.
          if (round < 2 && (isFabricError(err, 'CORRUPT_STORAGE') || isFabricError(err, 'NOT_FOUND'))) {
            this.#log.warn({ manifest: manifestId, err: errorMessage(err) }, 'restore hit a bad local chunk; fetching again');
            continue;
          }
          throw err;
        }
      }
    } finally {
      release();
    }
  }

  /** Re-reads the local copy of `manifestId`, quarantines corrupt chunks, and fetches them (and missing ones) from `holders`. */
  async heal(manifestId: ManifestId, holders: readonly string[], signal?: AbortSignal): Promise<{ corrupt: string[]; missing: string[]; fetch: FetchResult }> {
    const manifest = await this.transfer.fetchManifest(manifestId, holders, signal);
    const scrub = await this.store.scrub(manifest);
    const fetch = await this.transfer.fetchChunks(this.store.missing(manifest), holders, signal !== undefined ? { signal } : {});
    if (scrub.corrupt.length + scrub.missing.length > 0) {
      this.#log.warn({ manifest: manifestId, corrupt: scrub.corrupt.length, missing: scrub.missing.length, refetched: fetch.fetchedChunks, failed: fetch.failed.length }, 'checkpoint healed');
    }
    return { corrupt: scrub.corrupt, missing: scrub.missing, fetch };
  }

  /**
   * Deletes local manifests not in `keep` (except those committed or received in the last
   * `protectRecentMs`) and every chunk that no remaining manifest uses.
   */
  async gc(keep: Iterable<ManifestId>): Promise<StoreGcResult> {
    const protectMs = this.#opts.protectRecentMs ?? 10 * 60_000;
    const now = Date.now();
    const keepSet = new Set(keep);
    for (const [id, at] of [...this.#recent]) {
      if (now - at <= protectMs) keepSet.add(id);
      else this.#recent.delete(id);
    }
    return this.store.gc(keepSet);
  }
}
