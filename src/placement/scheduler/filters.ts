/**
 * Feasibility filters: does one member of a job fit one peer? Each filter is one small test with
 * a reason code, run in a fixed order: first the static ones (labels, price, device classes, host
 * size), whose answer no change of load alters, then the ones about what is free now, then the
 * job-level holds (reservations, quota). A peer counts under the first filter that removes it,
 * which is what `fabric explain` reports ("980 lack 40 GiB free GPU memory, 200 wrong model").
 *
 * The codes are small integers so the hot loop over thousands of peers only counts.
 */
import type { PeerState } from '../cluster.ts';
import { formatMiB } from '../quantity.ts';
import { describeRequirement, labelMatches, MILLI_PER_GPU, type MemberDemand, type PlacementRequest } from '../spec.ts';
import type { StatusCode } from '../plan.ts';
import { needKey, type DeviceMiss, type DeviceNeed, type Eligible, type EligibilityCache, type EligibleTable } from './eligibility.ts';
import { islandCapacity, largestFreeIsland } from './topology.ts';

export const Reason = {
  OK: 0,
  NOT_SCHEDULABLE: 1,
  SPOT: 2,
  PRICE: 3,
  AFFINITY: 4,
  ANTI_AFFINITY: 5,
  DEVICES: 6,
  CPU_TOTAL: 7,
  MEMORY_TOTAL: 8,
  NVLINK_TOTAL: 9,
  RESERVED: 10,
  CPU_FREE: 11,
  MEMORY_FREE: 12,
  GPU_FREE: 13,
  NVLINK_FREE: 14,
  QUOTA: 15,
} as const;
export type ReasonCode = (typeof Reason)[keyof typeof Reason];
export const REASON_COUNT = 16;

/** Which filter each code belongs to (the plugin names explain shows). */
export const FILTER_OF: readonly string[] = [
  'ok',
  'PeerReady',
  'SpotTolerance',
  'MaxPrice',
  'PeerAffinity',
  'PeerAntiAffinity',
  'DeviceClass',
  'HostResources',
  'HostResources',
  'Interconnect',
  'Reservation',
  'HostResources',
  'HostResources',
  'DeviceFit',
  'Interconnect',
  'TenantQuota',
];

export function statusOfReason(code: ReasonCode): StatusCode {
  if (code === Reason.OK) return 'Success';
  if (code === Reason.RESERVED || code === Reason.QUOTA) return 'Wait';
  if (code >= Reason.CPU_FREE) return 'Unschedulable';
  return 'UnschedulableAndUnresolvable';
}

/** Reasons that freeing capacity on the peer (preemption) can cure. */
export function curableByPreemption(code: number): boolean {
  return code === Reason.CPU_FREE || code === Reason.MEMORY_FREE || code === Reason.GPU_FREE || code === Reason.NVLINK_FREE;
}

/** Everything a filter pass needs, computed once per scheduling cycle (Kubernetes' PreFilter state). */
export interface FilterCycle {
  request: PlacementRequest;
  member: MemberDemand;
  need: DeviceNeed | null;
  needKey: string;
  eligibility: EligibilityCache;
  /** The need's eligibility answers (null for a CPU-only member). */
  table: EligibleTable | null;
  hasPeerConstraints: boolean;
  /** Peers held for other jobs: peer id → job id. */
  reserved: ReadonlyMap<string, string> | null;
  /** Why the tenant may not take more now, or null. */
  quotaProblem: string | null;
}

/** A FilterCycle for one member shape (Kubernetes' PreFilter). */
export function makeFilterCycle(
  request: PlacementRequest,
  member: MemberDemand,
  eligibility: EligibilityCache,
  reserved: ReadonlyMap<string, string> | null,
  quotaProblem: string | null,
): FilterCycle {
  const need = needOf(request, member);
  const key = need === null ? '' : memoizedNeedKey(request, member, need);
  return {
    request,
    member,
    need,
    needKey: key,
    eligibility,
    table: need === null ? null : eligibility.table(need, key),
    hasPeerConstraints: hasPeerConstraints(request),
    reserved,
    quotaProblem,
  };
}

// Keys of a request's member shapes, computed once per (request, member): the leader plans the
// same queued request many times, and building these strings every cycle shows in a profile.
const needKeys = new WeakMap<MemberDemand, { request: PlacementRequest; key: string }>();
const staticKeys = new WeakMap<MemberDemand, { request: PlacementRequest; key: string }>();

function memoizedNeedKey(request: PlacementRequest, member: MemberDemand, need: DeviceNeed): string {
  const hit = needKeys.get(member);
  if (hit !== undefined && hit.request === request) return hit.key;
  const key = needKey(need);
  needKeys.set(member, { request, key });
  return key;
}

/** Everything a static verdict depends on besides the peer (a cache key). */
export function staticKeyOf(cycle: FilterCycle): string {
  const m = cycle.member;
  const hit = staticKeys.get(m);
  if (hit !== undefined && hit.request === cycle.request) return hit.key;
  const p = cycle.request.peer;
  const peerPart = cycle.hasPeerConstraints ? JSON.stringify([p.spotTolerant, p.maxPricePerGpuHour, p.required, p.forbidden]) : '';
  const key = `${m.gpus}|${m.milli}|${m.mig ?? ''}|${m.nvlink ? 1 : 0}|${m.cpuMilli}|${m.memoryMiB}|${cycle.needKey}|${peerPart}`;
  staticKeys.set(m, { request: cycle.request, key });
  return key;
}

export function needOf(request: PlacementRequest, member: MemberDemand): DeviceNeed | null {
  if (member.gpus === 0) return null;
  return { constraint: request.device, milli: member.milli, mig: member.mig, minMemoryMiB: member.minMemoryMiB };
}

export function hasPeerConstraints(request: PlacementRequest): boolean {
  const p = request.peer;
  return !p.spotTolerant || p.maxPricePerGpuHour !== null || p.required.length > 0 || p.forbidden.length > 0;
}

/** Static peer tests (no device or load involved). */
function peerConstraintReason(cycle: FilterCycle, peer: PeerState): ReasonCode {
  const p = cycle.request.peer;
  if (peer.spot && !p.spotTolerant) return Reason.SPOT;
  // A peer without a price (own hardware) passes any price limit.
  if (p.maxPricePerGpuHour !== null && peer.pricePerGpuHour !== null && peer.pricePerGpuHour > p.maxPricePerGpuHour) return Reason.PRICE;
  for (const req of p.required) if (!labelMatches(peer.labels, req)) return Reason.AFFINITY;
  for (const req of p.forbidden) if (labelMatches(peer.labels, req)) return Reason.ANTI_AFFINITY;
  return Reason.OK;
}

/** Free eligible whole GPUs, stopping once `enough` are found. */
function countWholeFree(peer: PeerState, eligible: Eligible, enough: number): number {
  if (eligible.gpuSlots === null) return peer.wholeFree;
  let n = 0;
  const slots = eligible.gpuSlots;
  for (let i = 0; i < slots.length && n < enough; i++) if (peer.free[slots[i]!] === MILLI_PER_GPU) n++;
  return n;
}

function hasShare(peer: PeerState, eligible: Eligible, milli: number): boolean {
  if (eligible.gpuSlots === null) {
    for (let i = 0; i < peer.free.length; i++) if (peer.free[i]! >= milli) return true;
    return false;
  }
  const slots = eligible.gpuSlots;
  for (let i = 0; i < slots.length; i++) if (peer.free[slots[i]!]! >= milli) return true;
  return false;
}

function countMigFree(peer: PeerState, eligible: Eligible): number {
  let n = 0;
  const slots = eligible.migSlots;
  for (let i = 0; i < slots.length; i++) if (peer.migFree[slots[i]!] === 1) n++;
  return n;
}

/** Static tests only: would the member fit this peer if it were empty? */
export function staticReason(cycle: FilterCycle, peer: PeerState): ReasonCode {
  if (!peer.schedulable) return Reason.NOT_SCHEDULABLE;
  if (cycle.hasPeerConstraints) {
    const reason = peerConstraintReason(cycle, peer);
    if (reason !== Reason.OK) return reason;
  }
  const member = cycle.member;
  if (member.gpus > 0) {
    const eligible = cycle.table!.get(peer);
    const available = member.mig !== null ? eligible.migSlots.length : eligible.gpuCount;
    if (available < member.gpus) return Reason.DEVICES;
    if (member.nvlink && member.gpus > 1 && islandCapacity(peer, eligible) < member.gpus) return Reason.NVLINK_TOTAL;
  }
  if (peer.cpuTotal < member.cpuMilli) return Reason.CPU_TOTAL;
  if (peer.memoryTotal < member.memoryMiB) return Reason.MEMORY_TOTAL;
  return Reason.OK;
}

/** Tests about what is free now (after the static ones passed). */
export function loadReason(cycle: FilterCycle, peer: PeerState): ReasonCode {
  const member = cycle.member;
  if (peer.cpuFree < member.cpuMilli) return Reason.CPU_FREE;
  if (peer.memoryFree < member.memoryMiB) return Reason.MEMORY_FREE;
  if (member.gpus > 0) {
    const eligible = cycle.table!.get(peer);
    if (member.mig !== null) {
      if (countMigFree(peer, eligible) < member.gpus) return Reason.GPU_FREE;
    } else if (member.milli >= MILLI_PER_GPU) {
      if (countWholeFree(peer, eligible, member.gpus) < member.gpus) return Reason.GPU_FREE;
      if (member.nvlink && member.gpus > 1 && largestFreeIsland(peer, eligible) < member.gpus) return Reason.NVLINK_FREE;
    } else if (!hasShare(peer, eligible, member.milli)) {
      return Reason.GPU_FREE;
    }
  }
  return Reason.OK;
}

/** The whole filter chain for one peer: the first reason that removes it, or OK. */
export function filterPeer(cycle: FilterCycle, peer: PeerState): ReasonCode {
  const fixed = staticReason(cycle, peer);
  if (fixed !== Reason.OK) return fixed;
  return dynamicReason(cycle, peer);
}

/** The filters after the static ones: reservations, what is free now, quota. */
export function dynamicReason(cycle: FilterCycle, peer: PeerState): ReasonCode {
  if (cycle.reserved !== null) {
    const holder = cycle.reserved.get(peer.id);
    if (holder !== undefined && holder !== cycle.request.jobId) return Reason.RESERVED;
  }
  const load = loadReason(cycle, peer);
  if (load !== Reason.OK) return load;
  if (cycle.quotaProblem !== null) return Reason.QUOTA;
  return Reason.OK;
}

// ---- describing reasons ----

const MISS_TEXT: Readonly<Record<DeviceMiss, string>> = {
  vendor: 'wrong vendor',
  model: 'wrong model',
  selector: 'selector does not match',
  memory: 'too little GPU memory',
  profile: 'no MIG instance of the profile',
};

/** Why a peer has too few qualifying devices, from its eligibility record. */
export function describeDeviceMiss(peer: PeerState, eligible: Eligible, member: MemberDemand): string {
  if (peer.gpus.length === 0 && peer.migs.length === 0) return 'no GPUs';
  const available = member.mig !== null ? eligible.migSlots.length : eligible.gpuCount;
  if (available > 0) {
    const what = member.mig !== null ? `MIG ${member.mig} instances` : 'matching GPUs';
    return `only ${available} ${what} (${member.gpus} per peer needed)`;
  }
  if (member.mig !== null && peer.migs.length === 0) return `no MIG instances (MIG ${member.mig} asked)`;
  if (member.mig === null && peer.gpus.length === 0) return 'GPUs in MIG mode (only MIG slices can be granted)';
  let worst: DeviceMiss | null = null;
  let worstCount = -1;
  for (const [miss, count] of Object.entries(eligible.misses) as [DeviceMiss, number][]) {
    if (miss === 'profile' && member.mig === null) continue;
    if (count > worstCount) {
      worst = miss;
      worstCount = count;
    }
  }
  if (worst === 'memory' && member.minMemoryMiB > 0) {
    return member.milli < MILLI_PER_GPU
      ? `GPUs with less than ${formatMiB(member.minMemoryMiB)} in a ${member.milli / 10}% share`
      : `GPUs with less than ${formatMiB(member.minMemoryMiB)}`;
  }
  if (worst === 'profile') return `no MIG ${member.mig} instance`;
  return worst === null ? 'no matching GPUs' : MISS_TEXT[worst];
}

/** The text of a (non-device) reason for a request, as explain prints it after a count. */
export function describeReason(code: ReasonCode, request: PlacementRequest, member: MemberDemand): string {
  const cores = (milli: number): string => `${milli / 1000} CPU core${milli === 1000 ? '' : 's'}`;
  switch (code) {
    case Reason.OK:
      return 'fit';
    case Reason.NOT_SCHEDULABLE:
      return 'not taking new work (suspected, leaving or draining)';
    case Reason.SPOT:
      return 'spot peers (job is not spot-tolerant)';
    case Reason.PRICE:
      return `cost more than ${request.peer.maxPricePerGpuHour} per GPU-hour`;
    case Reason.AFFINITY:
      return `fail affinity (${request.peer.required.map(describeRequirement).join(', ')})`;
    case Reason.ANTI_AFFINITY:
      return `match anti-affinity (${request.peer.forbidden.map(describeRequirement).join(', ')})`;
    case Reason.DEVICES:
      return 'lack matching devices';
    case Reason.CPU_TOTAL:
      return `have fewer than ${cores(member.cpuMilli)}`;
    case Reason.MEMORY_TOTAL:
      return `have less than ${formatMiB(member.memoryMiB)} host memory`;
    case Reason.NVLINK_TOTAL:
      return `have no NVLink island of ${member.gpus} matching GPUs`;
    case Reason.RESERVED:
      return 'reserved for a waiting higher-priority job';
    case Reason.CPU_FREE:
      return `lack ${cores(member.cpuMilli)} free`;
    case Reason.MEMORY_FREE:
      return `lack ${formatMiB(member.memoryMiB)} free host memory`;
    case Reason.GPU_FREE: {
      const memory = member.minMemoryMiB > 0 ? ` with ${formatMiB(member.minMemoryMiB)}` : '';
      if (member.mig !== null) return `lack a free MIG ${member.mig} instance`;
      if (member.milli < MILLI_PER_GPU) {
        return member.minMemoryMiB > 0 ? `lack ${formatMiB(member.minMemoryMiB)} free GPU memory (${member.milli / 10}% of a GPU)` : `lack ${member.milli / 10}% of a GPU free`;
      }
      return `lack ${member.gpus} free GPU${member.gpus === 1 ? '' : 's'}${memory}`;
    }
    case Reason.NVLINK_FREE:
      return `lack ${member.gpus} free GPUs in one NVLink island`;
    case Reason.QUOTA:
      return 'held back by tenant quota';
  }
  return 'unknown';
}
