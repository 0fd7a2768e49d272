/**
 * Which whole GPUs of a peer a multi-GPU member gets. Ranks between GPUs come from the link matrix
 * (cluster.ts): 0 NVLink/XGMI, 1 one PCIe switch, 2 several switches, 3 host bridge, 4 one NUMA
 * node, 5 across NUMA nodes, 6 unknown. A set is better when its worst pair is faster (one NVLink
 * island beats one PCIe switch beats one NUMA node), then when its pairs are faster on the whole,
 * then when it leaves the largest NVLink island of free GPUs behind for the next job, as NCCL's
 * ring and tree both run at the speed of their slowest link.
 */
import { MILLI_PER_GPU } from '../spec.ts';
import type { PeerState } from '../cluster.ts';
import { eligibleGpuSlots, type Eligible } from './eligibility.ts';

export interface GpuChoice {
  slots: number[];
  /** Slowest link rank between any two chosen GPUs (0 for one GPU). */
  worstRank: number;
  /** Sum of the ranks over all chosen pairs. */
  rankSum: number;
  /** Free GPUs left in the largest NVLink island after the choice. */
  islandLeft: number;
}

function wholeFreeSlots(peer: PeerState, eligible: Eligible): number[] {
  const slots = eligibleGpuSlots(peer, eligible);
  const out: number[] = [];
  for (let i = 0; i < slots.length; i++) if (peer.free[slots[i]!] === MILLI_PER_GPU) out.push(slots[i]!);
  return out;
}

function largestIsland(peer: PeerState, candidates: readonly number[], taken: ReadonlySet<number>): number {
  const counts = new Map<number, number>();
  let best = 0;
  for (const slot of candidates) {
    if (taken.has(slot)) continue;
    const island = peer.island[slot]!;
    const n = (counts.get(island) ?? 0) + 1;
    counts.set(island, n);
    if (n > best) best = n;
  }
  return best;
}

/** The largest number of free eligible GPUs within one NVLink island. */
export function largestFreeIsland(peer: PeerState, eligible: Eligible): number {
  if (peer.islandCount === 1) {
    if (eligible.gpuSlots === null) return peer.wholeFree;
    let n = 0;
    for (const slot of eligible.gpuSlots) if (peer.free[slot] === MILLI_PER_GPU) n++;
    return n;
  }
  return largestIsland(peer, wholeFreeSlots(peer, eligible), new Set());
}

/** Whether `k` eligible GPUs of one island exist on the peer when nothing is allocated. */
export function islandCapacity(peer: PeerState, eligible: Eligible): number {
  if (peer.islandCount === 1) return eligible.gpuCount;
  const slots = eligibleGpuSlots(peer, eligible);
  const counts = new Map<number, number>();
  let best = 0;
  for (let i = 0; i < slots.length; i++) {
    const island = peer.island[slots[i]!]!;
    const n = (counts.get(island) ?? 0) + 1;
    counts.set(island, n);
    best = Math.max(best, n);
  }
  return best;
}

function better(a: GpuChoice, b: GpuChoice): boolean {
  if (a.worstRank !== b.worstRank) return a.worstRank < b.worstRank;
  if (a.rankSum !== b.rankSum) return a.rankSum < b.rankSum;
  return a.islandLeft > b.islandLeft;
}

/**
 * The best `k` free whole GPUs among the eligible ones, or null when there are not `k` (or, with
 * `nvlink`, not `k` in one island). Greedy from every seed: add the GPU whose worst link to the
 * set is fastest; exact for the common all-to-all NVSwitch and two-island layouts, and O(k·n²).
 */
export function chooseWholeGpus(peer: PeerState, eligible: Eligible, k: number, nvlink: boolean): GpuChoice | null {
  if (k === 0) return { slots: [], worstRank: 0, rankSum: 0, islandLeft: 0 };
  const candidates = wholeFreeSlots(peer, eligible);
  if (candidates.length < k) return null;
  if (peer.uniformRank >= 0) {
    // Every pair is linked alike (an NVSwitch host): any k are as good; take the first.
    if (nvlink && peer.uniformRank > 0) return null;
    const slots = candidates.slice(0, k);
    const pairs = (k * (k - 1)) / 2;
    return { slots, worstRank: peer.uniformRank, rankSum: pairs * peer.uniformRank, islandLeft: peer.uniformRank === 0 ? candidates.length - k : 1 };
  }
  const n = peer.gpus.length;
  const rank = peer.rank;
  let best: GpuChoice | null = null;
  if (k === 1) {
    // One GPU: take it from the smallest island that has a free one, keeping big islands whole.
    const islandSize = new Map<number, number>();
    for (const slot of candidates) islandSize.set(peer.island[slot]!, (islandSize.get(peer.island[slot]!) ?? 0) + 1);
    let chosen = candidates[0]!;
    for (const slot of candidates) {
      if (islandSize.get(peer.island[slot]!)! < islandSize.get(peer.island[chosen]!)!) chosen = slot;
    }
    return { slots: [chosen], worstRank: 0, rankSum: 0, islandLeft: largestIsland(peer, candidates, new Set([chosen])) };
  }
  for (const seed of candidates) {
    const set = [seed];
    const inSet = new Set(set);
    let worst = 0;
    let sum = 0;
    while (set.length < k) {
      let pick = -1;
      let pickWorst = Infinity;
      let pickSum = Infinity;
      for (const c of candidates) {
        if (inSet.has(c)) continue;
        let w = 0;
        let s = 0;
        for (const m of set) {
          const r = rank[c * n + m]!;
          if (r > w) w = r;
          s += r;
        }
        if (w < pickWorst || (w === pickWorst && s < pickSum)) {
          pick = c;
          pickWorst = w;
          pickSum = s;
        }
      }
      set.push(pick);
      inSet.add(pick);
      worst = Math.max(worst, pickWorst);
      sum += pickSum;
    }
    if (nvlink && worst > 0) continue;
    const choice: GpuChoice = { slots: [...set].sort((a, b) => a - b), worstRank: worst, rankSum: sum, islandLeft: largestIsland(peer, candidates, inSet) };
    if (best === null || better(choice, best)) best = choice;
  }
  return best;
}

/** A 0–100 figure of a choice's link quality (100: all pairs NVLink). */
export function topologyQuality(choice: GpuChoice): number {
  const pairs = (choice.slots.length * (choice.slots.length - 1)) / 2;
  if (pairs === 0) return 100;
  return Math.max(0, 100 - 12 * choice.worstRank - (8 * choice.rankSum) / pairs);
}
