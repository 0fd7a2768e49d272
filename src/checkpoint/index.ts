/**
 * Checkpoints, the pure part: content-defined chunking, content addresses, the manifest and its
 * canonical encoding, what a holder lacks, where replicas go, what to collect, where to fetch
 * from. Disk and network live in src/node (chunk-store.ts, ckpt-files.ts, ckpt-transfer.ts).
 */
export { Chunker, chunkSizes, checkChunkingParams, CHUNKING_ALGORITHM, DEFAULT_CHUNKING, MAX_CHUNK_BYTES, type ChunkingParams } from './chunker.ts';
export { ChunkIdSchema, ManifestIdSchema, CHUNK_ID_RE, isChunkId, matchesId, sha256Hex, type ChunkId, type ManifestId } from './hash.ts';
export {
  MANIFEST_FORMAT,
  MAX_MANIFEST_BYTES,
  ManifestSchema,
  ManifestBuilder,
  ChunkRefSchema,
  EntrySchema,
  addedChunks,
  canonicalJson,
  decodeManifest,
  encodeManifest,
  manifestChunks,
  manifestId,
  manifestIdOf,
  missingChunks,
  pathProblem,
  uniqueChunkBytes,
  type ChunkRef,
  type DirEntry,
  type Entry,
  type FileEntry,
  type Manifest,
  type SymlinkEntry,
} from './manifest.ts';
export { chooseReplicas, restoreOrder, type ReplicaCandidate, type ReplicaChoice, type ReplicaChoiceInput } from './replicas.ts';
export { chooseCheckpointsToDrop, chooseChunksToDelete, type CheckpointCollection, type CheckpointRecord } from './gc.ts';
export { planFetch, type FetchPlan, type HolderView } from './restore-plan.ts';
