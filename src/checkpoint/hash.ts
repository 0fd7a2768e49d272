/**
 * Content addresses: a chunk's id is the SHA-256 of its bytes, in lowercase hex; a manifest's id
 * is the SHA-256 of its canonical encoding. Hashing is a pure function of the bytes, so it is
 * taken from `node:crypto` directly (OpenSSL, with the CPU's SHA extensions where present)
 * rather than through a port: the module rules keep the network, the disk and the clock behind
 * ports, not computation.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';

export const CHUNK_ID_RE = /^[0-9a-f]{64}$/;
export const ChunkIdSchema = z.string().regex(CHUNK_ID_RE, 'a chunk id is 64 lowercase hex digits (SHA-256)');
export type ChunkId = string;

/** Manifest ids are content addresses too. */
export const ManifestIdSchema = ChunkIdSchema;
export type ManifestId = string;

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Whether `data` is the content of `id`. */
export function matchesId(id: string, data: Uint8Array): boolean {
  return sha256Hex(data) === id;
}

export function isChunkId(value: string): boolean {
  return CHUNK_ID_RE.test(value);
}
