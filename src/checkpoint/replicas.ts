/**
 * Which peers should hold a new checkpoint: R of them, in failure domains (zones) other than the
 * writer's where possible, one per zone before any zone gets a second, preferring peers that
 * already hold most of its bytes (they need least) and then peers with the most free disk.
 * A pure function of its input: the same candidates give the same holders on every peer.
 */
import { sha256Hex } from './hash.ts';

export interface ReplicaCandidate {
  peerId: string;
  /** Undefined when the peer has no zone label: treated as unknown, after known other zones. */
  zone: string | undefined;
  /** Free bytes on the peer's checkpoint disk; undefined when not known. */
  freeBytes: number | undefined;
  /** Bytes of this checkpoint's distinct chunks the peer already holds. */
  heldBytes: number;
}

export interface ReplicaChoiceInput {
  writer: { peerId: string; zone: string | undefined };
  candidates: readonly ReplicaCandidate[];
  /** How many holders besides the writer (R). */
  replicas: number;
  /** Bytes of the checkpoint's distinct chunks. */
  checkpointBytes: number;
  /** Free space a holder must keep after storing what it lacks. */
  reserveBytes?: number;
}

export interface ReplicaChoice {
  /** Chosen holders, best first. */
  holders: string[];
  /** Candidates left out before ranking, with the reason. */
  excluded: { peerId: string; reason: string }[];
  /** How many holders are missing to reach `replicas` (0 when satisfied). */
  shortfall: number;
}

type Tier = 0 | 1 | 2;

interface Ranked {
  c: ReplicaCandidate;
  tier: Tier;
  need: number;
}

function compareRanked(a: Ranked, b: Ranked): number {
  if (a.tier !== b.tier) return a.tier - b.tier;
  if (a.c.heldBytes !== b.c.heldBytes) return b.c.heldBytes - a.c.heldBytes;
  const fa = a.c.freeBytes ?? -1;
  const fb = b.c.freeBytes ?? -1;
  if (fa !== fb) return fb - fa;
  return a.c.peerId < b.c.peerId ? -1 : a.c.peerId > b.c.peerId ? 1 : 0;
}

/**
 * The order in which a lost host's job tries the holders of its latest checkpoint. The leader
 * places the job on the first holder that can take it, and only the first live holder restores
 * the checkpoint ahead of need while the leader waits out the lost host's lease: one peer does
 * that work (1 GiB: seconds of disk and CPU), not every holder at once. Ordered by a hash of job
 * and peer, so the jobs of one host spread over their holders. Pure: the same on every peer.
 */
export function restoreOrder(jobId: string, holders: readonly string[]): string[] {
  return [...new Set(holders)]
    .map((peerId) => ({ peerId, key: sha256Hex(new TextEncoder().encode(`${jobId}\n${peerId}`)) }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map((h) => h.peerId);
}

export function chooseReplicas(input: ReplicaChoiceInput): ReplicaChoice {
  const want = Math.max(0, Math.floor(input.replicas));
  const reserve = Math.max(0, input.reserveBytes ?? 0);
  const excluded: { peerId: string; reason: string }[] = [];
  const seen = new Set<string>();
  const ranked: Ranked[] = [];
  for (const c of input.candidates) {
    if (c.peerId === input.writer.peerId) continue;
    if (seen.has(c.peerId)) continue;
    seen.add(c.peerId);
    const need = Math.max(0, input.checkpointBytes - Math.max(0, c.heldBytes));
    if (c.freeBytes !== undefined && c.freeBytes - need < reserve) {
      excluded.push({ peerId: c.peerId, reason: `needs ${need} bytes, has ${c.freeBytes} free (reserve ${reserve})` });
      continue;
    }
    const tier: Tier = c.zone === undefined ? 1 : c.zone === input.writer.zone ? 2 : 0;
    ranked.push({ c, tier, need });
  }
  ranked.sort(compareRanked);

  const holders: string[] = [];
  const taken = new Set<string>();
  // First pass: the best peer of each zone other than the writer's, one zone at a time.
  const zonesUsed = new Set<string>();
  if (input.writer.zone !== undefined) zonesUsed.add(input.writer.zone);
  for (const r of ranked) {
    if (holders.length >= want) break;
    if (r.tier !== 0 || r.c.zone === undefined || zonesUsed.has(r.c.zone)) continue;
    zonesUsed.add(r.c.zone);
    holders.push(r.c.peerId);
    taken.add(r.c.peerId);
  }
  // Then the rest in rank order: more peers of other zones (each surely survives the loss of the
  // writer's zone), peers of unknown zone, peers of the writer's zone.
  for (const r of ranked) {
    if (holders.length >= want) break;
    if (taken.has(r.c.peerId)) continue;
    holders.push(r.c.peerId);
    taken.add(r.c.peerId);
  }
  return { holders, excluded, shortfall: Math.max(0, want - holders.length) };
}
