/**
 * Which devices of a peer a request may use at all (vendor, models, selector, memory, MIG
 * profile), ignoring what is free. Devices of one attribute class pass or fail together and peers
 * with identical device sets share one answer, so a constraint is evaluated once per class rather
 * than once per device: the same trick as Nomad's computed node classes.
 */
import type { ClusterState, PeerState } from '../cluster.ts';
import { modelMatches, type DeviceAttributes } from '../selector.ts';
import { MILLI_PER_GPU, type DeviceConstraint } from '../spec.ts';

/** Why a device does not qualify: the first test it fails, in this order. */
export type DeviceMiss = 'vendor' | 'model' | 'selector' | 'memory' | 'profile';

export interface DeviceNeed {
  constraint: DeviceConstraint;
  /** Thousandths of each GPU (1000 whole). */
  milli: number;
  mig: string | null;
  minMemoryMiB: number;
}

export interface Eligible {
  /** Eligible GPU slots, or null when every GPU of the peer is eligible. */
  gpuSlots: Int32Array | null;
  gpuCount: number;
  migSlots: Int32Array;
  /** For explain: how many devices failed each test (each counted at its first failure). */
  misses: Readonly<Partial<Record<DeviceMiss, number>>>;
}

export function needKey(need: DeviceNeed): string {
  const c = need.constraint;
  return `${c.vendor ?? ''}|${c.models?.join('\u0001') ?? ''}|${c.selectorText ?? ''}|${need.milli}|${need.mig ?? ''}|${need.minMemoryMiB}`;
}

function deviceMiss(attributes: DeviceAttributes, memoryMiB: number, need: DeviceNeed): DeviceMiss | null {
  const c = need.constraint;
  if (c.vendor !== null && attributes.vendor !== c.vendor) return 'vendor';
  if (c.models !== null && !c.models.some((pattern) => modelMatches(attributes.model, pattern))) return 'model';
  if (c.selector !== null && !c.selector(attributes)) return 'selector';
  if (memoryMiB < need.minMemoryMiB) return 'memory';
  return null;
}

/** One need's answers, indexed by device class (small dense integers): an array lookup per peer. */
export class EligibleTable {
  readonly #need: DeviceNeed;
  readonly #byClass: (Eligible | undefined)[] = [];

  constructor(need: DeviceNeed) {
    this.#need = need;
  }

  get(peer: PeerState): Eligible {
    let eligible = this.#byClass[peer.deviceClassId];
    if (eligible === undefined) {
      eligible = compute(peer, this.#need);
      this.#byClass[peer.deviceClassId] = eligible;
    }
    return eligible;
  }
}

/** Answers eligibility questions for one cluster's device classes; cheap to keep across cycles. */
export class EligibilityCache {
  readonly #byNeed = new Map<string, EligibleTable>();
  /** Bumped by clear(): holders of tables compare it to know theirs are stale. */
  generation = 0;

  /** The answers for one need (keep it for a cycle: each peer is then one array lookup). */
  table(need: DeviceNeed, key = needKey(need)): EligibleTable {
    let table = this.#byNeed.get(key);
    if (table === undefined) {
      table = new EligibleTable(need);
      this.#byNeed.set(key, table);
    }
    return table;
  }

  /** The eligible devices of `peer` for `need` (cached by the peer's device class). */
  of(peer: PeerState, need: DeviceNeed, key = needKey(need)): Eligible {
    return this.table(need, key).get(peer);
  }

  /** Forgets everything (a cluster with new device classes). */
  clear(): void {
    this.#byNeed.clear();
    this.generation++;
  }
}

function compute(peer: PeerState, need: DeviceNeed): Eligible {
  const misses: Partial<Record<DeviceMiss, number>> = {};
  const miss = (m: DeviceMiss): void => void (misses[m] = (misses[m] ?? 0) + 1);
  const gpuSlots: number[] = [];
  const migSlots: number[] = [];
  if (need.mig !== null) {
    peer.migs.forEach((mig, slot) => {
      if (mig.profile !== need.mig) return miss('profile');
      const m = deviceMiss(mig.attributes, mig.memoryMiB, need);
      if (m !== null) return miss(m);
      migSlots.push(slot);
    });
    for (let i = 0; i < peer.gpus.length; i++) miss('profile');
  } else {
    for (const gpu of peer.gpus) {
      // A share's memory is its fraction of the device's.
      const memory = need.milli >= MILLI_PER_GPU ? gpu.memoryMiB : Math.floor((gpu.memoryMiB * need.milli) / MILLI_PER_GPU);
      const m = deviceMiss(gpu.attributes, memory, need);
      if (m !== null) miss(m);
      else gpuSlots.push(gpu.slot);
    }
    for (let i = 0; i < peer.migs.length; i++) miss('profile');
  }
  const all = gpuSlots.length === peer.gpus.length;
  return { gpuSlots: all ? null : Int32Array.from(gpuSlots), gpuCount: gpuSlots.length, migSlots: Int32Array.from(migSlots), misses };
}

/** The slot numbers an Eligible covers (materializing the "all" case). */
export function eligibleGpuSlots(peer: PeerState, eligible: Eligible): ArrayLike<number> {
  if (eligible.gpuSlots !== null) return eligible.gpuSlots;
  const all = new Int32Array(peer.gpus.length);
  for (let i = 0; i < all.length; i++) all[i] = i;
  return all;
}

/** Cluster-wide: does any device class satisfy the need at all (for submit-time refusal)? */
export function anyEligible(cluster: ClusterState, cache: EligibilityCache, need: DeviceNeed): boolean {
  const key = needKey(need);
  return cluster.peers.some((peer) => {
    const e = cache.of(peer, need, key);
    return e.gpuCount > 0 || e.migSlots.length > 0;
  });
}
