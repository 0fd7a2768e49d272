/**
 * Restore planning: which chunk to fetch from which holder. Chunks are spread so that every
 * holder serves about the same number of bytes (largest chunks first, each to the least loaded
 * holder that has it), so a restore fetches from all holders in parallel. Each chunk also gets
 * its other holders, least loaded first, to fall back to when a fetch fails or the bytes do not
 * match their hash. Deterministic: ties go to the holder listed first.
 */
import type { ChunkId } from './hash.ts';
import type { ChunkRef } from './manifest.ts';

export interface HolderView {
  peerId: string;
  /** Whether the holder has the chunk (from a have? query, or "all" for a recorded full replica). */
  has(id: ChunkId): boolean;
}

export interface FetchPlan {
  /** Per holder, the chunks to ask it for, in order. */
  assignments: Map<string, ChunkRef[]>;
  /** Per chunk, the other holders to try, in order. */
  fallbacks: Map<ChunkId, string[]>;
  /** Chunks no holder has. */
  unavailable: ChunkRef[];
  /** Bytes assigned per holder. */
  load: Map<string, number>;
}

export function planFetch(needed: readonly ChunkRef[], holders: readonly HolderView[]): FetchPlan {
  const order = new Map<string, number>();
  const unique: HolderView[] = [];
  for (const h of holders) {
    if (order.has(h.peerId)) continue;
    order.set(h.peerId, unique.length);
    unique.push(h);
  }
  const load = new Map<string, number>(unique.map((h) => [h.peerId, 0]));
  const assignments = new Map<string, ChunkRef[]>(unique.map((h) => [h.peerId, []]));
  const fallbacks = new Map<ChunkId, string[]>();
  const unavailable: ChunkRef[] = [];

  const seen = new Set<ChunkId>();
  const chunks = needed.filter(([id]) => (seen.has(id) ? false : (seen.add(id), true)));
  // Largest first: the greedy balance is then within one chunk of even.
  const sorted = chunks.map((c, i) => ({ c, i })).sort((a, b) => b.c[1] - a.c[1] || a.i - b.i);
  for (const { c } of sorted) {
    const [id, size] = c;
    const candidates = unique.filter((h) => h.has(id)).map((h) => h.peerId);
    if (candidates.length === 0) {
      unavailable.push(c);
      continue;
    }
    candidates.sort((a, b) => load.get(a)! - load.get(b)! || order.get(a)! - order.get(b)!);
    const [first, ...rest] = candidates;
    assignments.get(first!)!.push(c);
    load.set(first!, load.get(first!)! + size);
    fallbacks.set(id, rest);
  }
  // Each holder's list back in manifest order (files restore front to back).
  const position = new Map<ChunkId, number>(chunks.map(([id], i) => [id, i]));
  for (const list of assignments.values()) list.sort((a, b) => position.get(a[0])! - position.get(b[0])!);
  for (const [peer, list] of [...assignments]) if (list.length === 0) assignments.delete(peer);
  return { assignments, fallbacks, unavailable, load };
}
