/**
 * ClusterState: the scheduler's working model of the fabric, built from a Snapshot. Per peer it
 * keeps what is free (thousandths of each GPU, MIG instances, host CPU and memory) in flat typed
 * arrays so that filters and scores over thousands of peers stay cheap, and it records which job
 * holds what so that plans can be applied, jobs released, and victims chosen for preemption.
 *
 * Devices are accounted by UUID, as the replicated state does: a GPU's grants never sum past 1000
 * thousandths; a MIG-enabled GPU is never handed out whole or shared, only its instances (each
 * granted whole); a MIG instance is granted with its parent's UUID.
 *
 * Every peer state gets a `version` from one counter shared by all clusters in the process, bumped
 * on every change, so a version number names exactly one state of one peer: score caches keyed
 * by version stay valid exactly as long as the peer does not change, even across clones and
 * snapshots. (A counter is state, not time or randomness: runs stay deterministic.)
 */
import { FabricError } from '../core/index.ts';
import { LINK_RANK, type Device, type Link } from '../devices/model.ts';
import type { DeviceAttributes } from './selector.ts';
import { MILLI_PER_GPU } from './spec.ts';
import type { AllocationView, GrantView, PeerView, Snapshot, TenantQuota } from './snapshot.ts';

/** Link rank between two GPUs of one host: 0 NVLink/XGMI … 5 across NUMA nodes; 6 unknown. */
export const RANK_UNKNOWN = 6;

/** GPU models that support MIG (NVIDIA: A100, A30, H100, H200, H20, B200, GB200, GH200). */
const MIG_CAPABLE = /\b(a100|a30|h100|h200|h20|h800|b200|b100|gb200|gh200)\b/i;

export interface GpuSlot {
  uuid: string;
  /** Position on the peer's `gpus` list. */
  slot: number;
  /** The device's index on its host. */
  deviceIndex: number;
  memoryMiB: number;
  attributes: DeviceAttributes;
  /** Interned (attributes) class: devices of one class pass or fail a device constraint together. */
  classId: number;
}

export interface MigSlot {
  uuid: string;
  parentUuid: string;
  profile: string;
  memoryMiB: number;
  attributes: DeviceAttributes;
  classId: number;
}

/** What one job holds on one peer. */
export interface Holding {
  jobId: string;
  grants: GrantView[];
  cpuMilli: number;
  memoryMiB: number;
}

/** A job that holds devices, with what the scheduler needs to weigh it as a victim. */
export interface JobHolding {
  jobId: string;
  epoch: number;
  tenant: string;
  priority: number;
  preemptible: boolean;
  placedAt: number;
  /** Peer ids, in the order placed. */
  peerIds: string[];
  /** Thousandths of a GPU held over all peers. */
  milli: number;
  cpuMilli: number;
  memoryMiB: number;
}

export interface TenantState {
  name: string;
  maxGpus: number | null;
  maxGpuHours: number | null;
  gpuHoursUsed: number;
  heldMilli: number;
  heldCpuMilli: number;
  heldMemoryMiB: number;
}

/** A grant with the peer-local slot it resolves to. */
export type ResolvedGrant = { kind: 'gpu'; slot: number; milli: number } | { kind: 'mig'; slot: number };

export class PeerState {
  readonly id: string;
  readonly index: number;
  readonly labels: Readonly<Record<string, string>>;
  readonly zone: string | null;
  readonly region: string | null;
  readonly cloud: string | null;
  readonly pricePerGpuHour: number | null;
  readonly spot: boolean;
  readonly schedulable: boolean;
  readonly cpuTotal: number;
  readonly memoryTotal: number;
  /** GPUs that can be granted whole or shared (not MIG-enabled). */
  readonly gpus: readonly GpuSlot[];
  /** MIG instances with a UUID. */
  readonly migs: readonly MigSlot[];
  /** gpus.length² link ranks. */
  readonly rank: Uint8Array;
  /** NVLink/XGMI-connected component of each GPU. */
  readonly island: Int32Array;
  /** Number of distinct islands (1: every GPU reaches every other over NVLink). */
  readonly islandCount: number;
  /** The rank every pair of GPUs shares, or -1 when pairs differ (then set choice matters). */
  readonly uniformRank: number;
  /** Interned list of the GPUs' classes: peers of one class have identical device sets. */
  readonly deviceClassId: number;
  readonly gpuSlotByUuid: ReadonlyMap<string, number>;
  readonly migSlotByUuid: ReadonlyMap<string, number>;
  /** Devices the peer reports that placement cannot hand out, with why (for explain). */
  readonly unusable: readonly string[];

  cpuFree: number;
  memoryFree: number;
  /** Free thousandths per GPU slot. */
  readonly free: Int32Array;
  readonly migFree: Uint8Array;
  /** GPUs with all 1000 thousandths free. */
  wholeFree = 0;
  freeMilliTotal = 0;
  version = nextVersion();
  readonly holdings = new Map<string, Holding>();

  constructor(view: PeerView, index: number, classes: Interner) {
    this.id = view.peerId;
    this.index = index;
    this.labels = view.labels;
    this.zone = view.zone;
    this.region = view.region;
    this.cloud = view.cloud;
    this.pricePerGpuHour = view.pricePerGpuHour;
    this.spot = view.spot;
    this.schedulable = view.schedulable;
    this.cpuTotal = view.cpuMilli;
    this.memoryTotal = view.memoryMiB;
    this.cpuFree = view.cpuMilli;
    this.memoryFree = view.memoryMiB;

    const linked = devicesWithFastLinks(view.links);
    const gpus: GpuSlot[] = [];
    const migs: MigSlot[] = [];
    const unusable: string[] = [];
    for (const device of view.devices) {
      const attributes = attributesOf(device, view, linked.has(device.index));
      if (device.migEnabled) {
        for (const instance of device.migInstances) {
          if (instance.uuid === '') {
            unusable.push(`MIG ${instance.profile} on ${device.uuid} has no UUID (nvidia-smi -L did not list it)`);
            continue;
          }
          const migAttributes = { ...attributes, memoryMiB: instance.memoryMiB };
          migs.push({
            uuid: instance.uuid,
            parentUuid: device.uuid,
            profile: instance.profile,
            memoryMiB: instance.memoryMiB,
            attributes: migAttributes,
            classId: classes.id(`mig|${instance.profile}|${classKey(migAttributes)}`),
          });
        }
        if (device.migInstances.length === 0) unusable.push(`${device.uuid} is in MIG mode with no instances`);
        continue;
      }
      gpus.push({ uuid: device.uuid, slot: gpus.length, deviceIndex: device.index, memoryMiB: device.memoryMiB, attributes, classId: classes.id(`gpu|${classKey(attributes)}`) });
    }
    this.gpus = gpus;
    this.migs = migs;
    this.unusable = unusable;
    this.free = new Int32Array(gpus.length).fill(MILLI_PER_GPU);
    this.migFree = new Uint8Array(migs.length).fill(1);
    this.wholeFree = gpus.length;
    this.freeMilliTotal = gpus.length * MILLI_PER_GPU;
    this.gpuSlotByUuid = new Map(gpus.map((gpu) => [gpu.uuid, gpu.slot]));
    this.migSlotByUuid = new Map(migs.map((mig, i) => [mig.uuid, i]));
    this.rank = rankMatrix(gpus, view.devices, view.links);
    this.island = islandsOf(gpus.length, this.rank);
    this.islandCount = gpus.length === 0 ? 0 : Math.max(...this.island) + 1;
    this.uniformRank = uniformRankOf(gpus.length, this.rank);
    this.deviceClassId = classes.id(`peer|${gpus.map((g) => g.classId).join(',')}|${migs.map((m) => m.classId).join(',')}`);
  }

  /** Most thousandths free on any one GPU. */
  maxFree(): number {
    let max = 0;
    for (let i = 0; i < this.free.length; i++) if (this.free[i]! > max) max = this.free[i]!;
    return max;
  }

  /** Resolves a grant to this peer's slots, or says why it does not fit the peer's devices. */
  resolve(grant: GrantView): ResolvedGrant | string {
    if (grant.parentUuid !== null) {
      const slot = this.migSlotByUuid.get(grant.uuid);
      if (slot === undefined) return `peer ${this.id} has no MIG instance ${grant.uuid}`;
      if (this.migs[slot]!.parentUuid !== grant.parentUuid) return `MIG instance ${grant.uuid} is not on GPU ${grant.parentUuid}`;
      if (grant.milli !== MILLI_PER_GPU) return `MIG instance ${grant.uuid} is granted whole, not ${grant.milli}/1000`;
      return { kind: 'mig', slot };
    }
    const slot = this.gpuSlotByUuid.get(grant.uuid);
    if (slot === undefined) {
      if (this.migs.some((mig) => mig.parentUuid === grant.uuid)) return `GPU ${grant.uuid} on peer ${this.id} is in MIG mode: only its instances can be granted`;
      return `peer ${this.id} has no GPU ${grant.uuid}`;
    }
    if (!Number.isInteger(grant.milli) || grant.milli < 1 || grant.milli > MILLI_PER_GPU) return `grant of ${grant.milli}/1000 of ${grant.uuid}`;
    return { kind: 'gpu', slot, milli: grant.milli };
  }

  /** Why these grants (plus host demand) do not fit what is free now; null when they fit. */
  fitProblem(grants: readonly GrantView[], cpuMilli: number, memoryMiB: number): string | null {
    if (cpuMilli > this.cpuFree) return `peer ${this.id} has ${this.cpuFree / 1000} CPU cores free, ${cpuMilli / 1000} asked`;
    if (memoryMiB > this.memoryFree) return `peer ${this.id} has ${this.memoryFree} MiB host memory free, ${memoryMiB} asked`;
    const asked = new Map<number, number>();
    const migsAsked = new Set<number>();
    for (const grant of grants) {
      const resolved = this.resolve(grant);
      if (typeof resolved === 'string') return resolved;
      if (resolved.kind === 'mig') {
        if (migsAsked.has(resolved.slot) || this.migFree[resolved.slot] === 0) return `MIG instance ${grant.uuid} on peer ${this.id} is taken`;
        migsAsked.add(resolved.slot);
      } else {
        const total = (asked.get(resolved.slot) ?? 0) + resolved.milli;
        if (total > this.free[resolved.slot]!) {
          return `GPU ${grant.uuid} on peer ${this.id} has ${this.free[resolved.slot]}/1000 free, ${total} asked`;
        }
        asked.set(resolved.slot, total);
      }
    }
    return null;
  }

  /** Takes grants (already checked with fitProblem). */
  take(holding: Holding, version: number): void {
    if (this.holdings.has(holding.jobId)) throw new FabricError('INTERNAL', `job ${holding.jobId} already holds devices on ${this.id}`);
    for (const grant of holding.grants) {
      const resolved = this.resolve(grant);
      if (typeof resolved === 'string') throw new FabricError('INTERNAL', resolved);
      if (resolved.kind === 'mig') this.migFree[resolved.slot] = 0;
      else adjustFree(this, resolved.slot, -resolved.milli);
    }
    this.cpuFree -= holding.cpuMilli;
    this.memoryFree -= holding.memoryMiB;
    this.holdings.set(holding.jobId, holding);
    this.version = version;
  }

  /** Gives back what a job holds here. */
  give(jobId: string, version: number): Holding | undefined {
    const holding = this.holdings.get(jobId);
    if (holding === undefined) return undefined;
    for (const grant of holding.grants) {
      const resolved = this.resolve(grant);
      if (typeof resolved === 'string') continue;
      if (resolved.kind === 'mig') this.migFree[resolved.slot] = 1;
      else adjustFree(this, resolved.slot, resolved.milli);
    }
    this.cpuFree += holding.cpuMilli;
    this.memoryFree += holding.memoryMiB;
    this.holdings.delete(jobId);
    this.version = version;
    return holding;
  }

  /** A copy with the same free capacity and holdings (static parts shared). */
  clone(): PeerState {
    const copy = Object.create(PeerState.prototype) as PeerState;
    Object.assign(copy, this);
    const mutable = copy as unknown as { free: Int32Array; migFree: Uint8Array; holdings: Map<string, Holding> };
    mutable.free = this.free.slice();
    mutable.migFree = this.migFree.slice();
    mutable.holdings = new Map(this.holdings);
    return copy;
  }
}

/** Changes one GPU's free thousandths and the peer's running totals. */
function adjustFree(peer: PeerState, slot: number, delta: number): void {
  const before = peer.free[slot]!;
  const after = before + delta;
  peer.free[slot] = after;
  peer.freeMilliTotal += delta;
  if (before === MILLI_PER_GPU) peer.wholeFree--;
  if (after === MILLI_PER_GPU) peer.wholeFree++;
}

let versionCounter = 0;
/** A version number no peer state has had (for trial copies changed outside a ClusterState). */
export function nextVersion(): number {
  return ++versionCounter;
}

/** Interns strings to small integers (device classes). */
export class Interner {
  readonly #ids = new Map<string, number>();
  id(key: string): number {
    let id = this.#ids.get(key);
    if (id === undefined) {
      id = this.#ids.size;
      this.#ids.set(key, id);
    }
    return id;
  }
  get size(): number {
    return this.#ids.size;
  }
}

function classKey(a: DeviceAttributes): string {
  const labels = Object.keys(a.labels)
    .sort()
    .map((k) => `${k}=${a.labels[k]}`)
    .join(',');
  return [a.vendor, a.model, a.memoryMiB, a.computeCapability, a.architecture, a.interconnect, a.migCapable, a.migEnabled, a.numaNode, a.zone, a.region, a.cloud, a.spot, labels].join('|');
}

function devicesWithFastLinks(links: readonly Link[]): Set<number> {
  const linked = new Set<number>();
  for (const link of links) {
    if (LINK_RANK[link.kind] === 0) {
      linked.add(link.a);
      linked.add(link.b);
    }
  }
  return linked;
}

function attributesOf(device: Device, view: PeerView, fastLinked: boolean): DeviceAttributes {
  return {
    vendor: device.vendor,
    model: device.model,
    memoryMiB: device.memoryMiB,
    computeCapability: device.computeCapability,
    architecture: device.architecture,
    interconnect: fastLinked ? (device.vendor === 'amd' ? 'xgmi' : 'nvlink') : 'pcie',
    migCapable: device.migEnabled || MIG_CAPABLE.test(device.model),
    migEnabled: device.migEnabled,
    numaNode: device.numaNode,
    zone: view.zone ?? undefined,
    region: view.region ?? undefined,
    cloud: view.cloud ?? undefined,
    spot: view.spot,
    labels: view.labels,
  };
}

/** Pairwise link ranks between GPU slots, from the link matrix and, failing it, NUMA nodes. */
function rankMatrix(gpus: readonly GpuSlot[], devices: readonly Device[], links: readonly Link[]): Uint8Array {
  const n = gpus.length;
  const rank = new Uint8Array(n * n).fill(RANK_UNKNOWN);
  const slotOfIndex = new Map(gpus.map((gpu) => [gpu.deviceIndex, gpu.slot]));
  for (let i = 0; i < n; i++) rank[i * n + i] = 0;
  for (const link of links) {
    const a = slotOfIndex.get(link.a);
    const b = slotOfIndex.get(link.b);
    if (a === undefined || b === undefined) continue;
    const r = LINK_RANK[link.kind];
    if (r < rank[a * n + b]!) {
      rank[a * n + b] = r;
      rank[b * n + a] = r;
    }
  }
  const numa = new Map(devices.map((d) => [d.index, d.numaNode]));
  for (let a = 0; a < n; a++) {
    for (let b = a + 1; b < n; b++) {
      if (rank[a * n + b] !== RANK_UNKNOWN) continue;
      const na = numa.get(gpus[a]!.deviceIndex);
      const nb = numa.get(gpus[b]!.deviceIndex);
      if (na === undefined || nb === undefined) continue;
      const r = na === nb ? LINK_RANK.node : LINK_RANK.sys;
      rank[a * n + b] = r;
      rank[b * n + a] = r;
    }
  }
  return rank;
}

function uniformRankOf(n: number, rank: Uint8Array): number {
  if (n < 2) return 0;
  const first = rank[1]!;
  for (let a = 0; a < n; a++) for (let b = a + 1; b < n; b++) if (rank[a * n + b] !== first) return -1;
  return first;
}

function islandsOf(n: number, rank: Uint8Array): Int32Array {
  const island = new Int32Array(n).fill(-1);
  let next = 0;
  for (let start = 0; start < n; start++) {
    if (island[start] !== -1) continue;
    const stack = [start];
    island[start] = next;
    while (stack.length > 0) {
      const a = stack.pop()!;
      for (let b = 0; b < n; b++) {
        if (island[b] === -1 && rank[a * n + b] === 0) {
          island[b] = next;
          stack.push(b);
        }
      }
    }
    next++;
  }
  return island;
}

export interface PlacedMember {
  peerId: string;
  grants: GrantView[];
  cpuMilli: number;
  memoryMiB: number;
}

export interface JobMeta {
  jobId: string;
  epoch: number;
  tenant: string;
  priority: number;
  preemptible: boolean;
  placedAt: number;
}

export class ClusterState {
  readonly peers: PeerState[];
  readonly peerById: Map<string, PeerState>;
  readonly jobs = new Map<string, JobHolding>();
  readonly tenants = new Map<string, TenantState>();
  /** Device classes: peers built from one snapshot share the numbering. */
  readonly classes: Interner;
  now: number;

  private constructor(peers: PeerState[], classes: Interner, now: number) {
    this.peers = peers;
    this.peerById = new Map(peers.map((peer) => [peer.id, peer]));
    this.classes = classes;
    this.now = now;
  }

  /**
   * Builds the working state. Allocations on peers the snapshot does not list, or naming devices
   * a peer no longer reports, still count for their tenant but hold nothing on a peer: they are
   * reported in `orphans` for the caller to log.
   */
  static fromSnapshot(snapshot: Snapshot): ClusterState {
    const classes = new Interner();
    const seen = new Set<string>();
    const peers: PeerState[] = [];
    for (const view of snapshot.peers) {
      if (seen.has(view.peerId)) throw new FabricError('BAD_INPUT', `snapshot lists peer ${view.peerId} twice`);
      seen.add(view.peerId);
      peers.push(new PeerState(view, peers.length, classes));
    }
    const cluster = new ClusterState(peers, classes, snapshot.now);
    for (const tenant of snapshot.tenants) cluster.#tenant(tenant.name, tenant);
    const byJob = new Map<string, AllocationView[]>();
    for (const allocation of snapshot.allocations) {
      const list = byJob.get(allocation.jobId);
      if (list === undefined) byJob.set(allocation.jobId, [allocation]);
      else list.push(allocation);
    }
    for (const [jobId, allocations] of byJob) {
      const first = allocations[0]!;
      cluster.#record(
        { jobId, epoch: first.epoch, tenant: first.tenant, priority: first.priority, preemptible: first.preemptible, placedAt: first.placedAt },
        allocations.map((a) => ({ peerId: a.peerId, grants: [...a.devices], cpuMilli: a.cpuMilli, memoryMiB: a.memoryMiB })),
        false,
      );
    }
    return cluster;
  }

  /** Committed allocations that did not fit their peer as reported (inventory changed under them). */
  readonly orphans: string[] = [];

  #tenant(name: string, quota?: TenantQuota): TenantState {
    let tenant = this.tenants.get(name);
    if (tenant === undefined) {
      tenant = { name, maxGpus: null, maxGpuHours: null, gpuHoursUsed: 0, heldMilli: 0, heldCpuMilli: 0, heldMemoryMiB: 0 };
      this.tenants.set(name, tenant);
    }
    if (quota !== undefined) {
      tenant.maxGpus = quota.maxGpus;
      tenant.maxGpuHours = quota.maxGpuHours;
      tenant.gpuHoursUsed = quota.gpuHoursUsed;
    }
    return tenant;
  }

  tenant(name: string): TenantState {
    return this.#tenant(name);
  }

  #record(meta: JobMeta, members: readonly PlacedMember[], strict: boolean): void {
    if (this.jobs.has(meta.jobId)) throw new FabricError('INTERNAL', `job ${meta.jobId} already holds devices`);
    let milli = 0;
    let cpuMilli = 0;
    let memoryMiB = 0;
    const peerIds: string[] = [];
    for (const member of members) {
      const peer = this.peerById.get(member.peerId);
      const memberMilli = member.grants.reduce((sum, g) => sum + g.milli, 0);
      milli += memberMilli;
      cpuMilli += member.cpuMilli;
      memoryMiB += member.memoryMiB;
      peerIds.push(member.peerId);
      if (peer === undefined) {
        if (strict) throw new FabricError('INTERNAL', `no peer ${member.peerId}`);
        this.orphans.push(`job ${meta.jobId} holds devices on peer ${member.peerId}, which is not in the snapshot`);
        continue;
      }
      const problem = peer.fitProblem(member.grants, member.cpuMilli, member.memoryMiB);
      if (problem !== null) {
        if (strict) throw new FabricError('INTERNAL', `placing job ${meta.jobId}: ${problem}`);
        this.orphans.push(`job ${meta.jobId}: ${problem}`);
        // Take what still resolves, so that nothing it holds is handed out twice.
        const usable = member.grants.filter((grant) => typeof peer.resolve(grant) !== 'string');
        const safe = usable.filter((grant) => peer.fitProblem([grant], 0, 0) === null);
        peer.take({ jobId: meta.jobId, grants: safe, cpuMilli: Math.min(member.cpuMilli, Math.max(0, peer.cpuFree)), memoryMiB: Math.min(member.memoryMiB, Math.max(0, peer.memoryFree)) }, nextVersion());
        continue;
      }
      peer.take({ jobId: meta.jobId, grants: member.grants, cpuMilli: member.cpuMilli, memoryMiB: member.memoryMiB }, nextVersion());
    }
    this.jobs.set(meta.jobId, { ...meta, peerIds, milli, cpuMilli, memoryMiB });
    const tenant = this.#tenant(meta.tenant);
    tenant.heldMilli += milli;
    tenant.heldCpuMilli += cpuMilli;
    tenant.heldMemoryMiB += memoryMiB;
  }

  /** Applies a placement; throws INTERNAL if it does not fit (callers check first). */
  place(meta: JobMeta, members: readonly PlacedMember[]): void {
    this.#record(meta, members, true);
  }

  /** Releases everything a job holds; returns what it held. */
  release(jobId: string): JobHolding | undefined {
    const job = this.jobs.get(jobId);
    if (job === undefined) return undefined;
    for (const peerId of job.peerIds) this.peerById.get(peerId)?.give(jobId, nextVersion());
    this.jobs.delete(jobId);
    const tenant = this.#tenant(job.tenant);
    tenant.heldMilli -= job.milli;
    tenant.heldCpuMilli -= job.cpuMilli;
    tenant.heldMemoryMiB -= job.memoryMiB;
    return job;
  }

  /** An independent copy (for planning a queue or trying preemptions). */
  clone(): ClusterState {
    const peers = this.peers.map((peer) => peer.clone());
    const copy = new ClusterState(peers, this.classes, this.now);
    for (const [id, job] of this.jobs) copy.jobs.set(id, { ...job, peerIds: [...job.peerIds] });
    for (const [name, tenant] of this.tenants) copy.tenants.set(name, { ...tenant });
    copy.orphans.push(...this.orphans);
    return copy;
  }

  /** Totals of the schedulable fabric, for fair-share denominators. */
  totals(): { gpuMilli: number; cpuMilli: number; memoryMiB: number } {
    let gpuMilli = 0;
    let cpuMilli = 0;
    let memoryMiB = 0;
    for (const peer of this.peers) {
      gpuMilli += (peer.gpus.length + peer.migs.length) * MILLI_PER_GPU;
      cpuMilli += peer.cpuTotal;
      memoryMiB += peer.memoryTotal;
    }
    return { gpuMilli, cpuMilli, memoryMiB };
  }
}
