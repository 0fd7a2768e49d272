/**
 * Collection of old checkpoints: each job keeps its newest K checkpoints (by step, then by
 * commit order); the rest are dropped. A chunk is deleted only when no kept manifest refers to
 * it, so a chunk shared by an old and a new checkpoint stays.
 */
import type { ChunkId, ManifestId } from './hash.ts';
import { manifestChunks, type Manifest } from './manifest.ts';

export interface CheckpointRecord {
  jobId: string;
  manifestId: ManifestId;
  step: number;
  /** Commit order (a Raft index, or a local sequence): breaks ties between equal steps. */
  seq: number;
}

export interface CheckpointCollection {
  keep: CheckpointRecord[];
  drop: CheckpointRecord[];
}

function newestFirst(a: CheckpointRecord, b: CheckpointRecord): number {
  if (a.step !== b.step) return b.step - a.step;
  if (a.seq !== b.seq) return b.seq - a.seq;
  return a.manifestId < b.manifestId ? -1 : a.manifestId > b.manifestId ? 1 : 0;
}

/** Per job, the newest `keep` records stay and the others go. Output order: newest first, jobs by id. */
export function chooseCheckpointsToDrop(records: readonly CheckpointRecord[], keep: number): CheckpointCollection {
  const k = Math.max(0, Math.floor(keep));
  const byJob = new Map<string, CheckpointRecord[]>();
  for (const r of records) {
    let list = byJob.get(r.jobId);
    if (list === undefined) byJob.set(r.jobId, (list = []));
    list.push(r);
  }
  const out: CheckpointCollection = { keep: [], drop: [] };
  for (const jobId of [...byJob.keys()].sort()) {
    const list = byJob.get(jobId)!.sort(newestFirst);
    // The same manifest recorded twice counts once.
    const seen = new Set<ManifestId>();
    for (const r of list) {
      if (seen.has(r.manifestId)) continue;
      seen.add(r.manifestId);
      (seen.size <= k ? out.keep : out.drop).push(r);
    }
  }
  // A manifest kept by one record is never dropped through another (two jobs cannot share a
  // manifest, since the job id is part of it, but a caller's records may repeat).
  const kept = new Set(out.keep.map((r) => r.manifestId));
  out.drop = out.drop.filter((r) => !kept.has(r.manifestId));
  return out;
}

/**
 * Chunks that may be deleted from a store: those held that no kept manifest refers to and that
 * are not `protectedIds` (chunks of transfers in flight, of manifests not yet recorded).
 */
export function chooseChunksToDelete(
  held: Iterable<ChunkId>,
  keptManifests: Iterable<Manifest>,
  protectedIds: ReadonlySet<ChunkId> = new Set(),
): ChunkId[] {
  const live = new Set<ChunkId>();
  for (const m of keptManifests) for (const id of manifestChunks(m).keys()) live.add(id);
  const out: ChunkId[] = [];
  for (const id of held) if (!live.has(id) && !protectedIds.has(id)) out.push(id);
  return out.sort();
}
