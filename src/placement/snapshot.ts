/**
 * The scheduler's input: a snapshot of the fabric as plain data. Peers come from the gossiped
 * view (the node layer maps each NodeState with `peerViewOf`); allocations, jobs and tenants come
 * from the committed replicated state (`snapshotOf` maps the fsm's records).
 *
 * Placement does not import the gossip module (the module rules keep it pure and independent),
 * so `peerViewOf` takes the structural shape of a NodeState: a real NodeState fits it.
 */
import type { Device, Link } from '../devices/model.ts';
import type { Allocation, Job, TenantView } from './fsm/index.ts';
import { JobSpecSchema, MILLI_PER_GPU, resolveRequest } from './spec.ts';

export interface PeerView {
  peerId: string;
  /** Free-form labels plus the well-known `zone`, `region`, `cloud` and `spot` ("true"/"false"). */
  labels: Readonly<Record<string, string>>;
  zone: string | null;
  region: string | null;
  cloud: string | null;
  pricePerGpuHour: number | null;
  spot: boolean;
  /** Host CPU the fabric may hand out, in thousandths of a core, and host memory in MiB. */
  cpuMilli: number;
  memoryMiB: number;
  devices: readonly Device[];
  links: readonly Link[];
  /** False for a peer that must get no new work (suspected, leaving, draining). */
  schedulable: boolean;
}

export interface GrantView {
  uuid: string;
  milli: number;
  parentUuid: string | null;
}

/** One committed allocation (a job's part on one peer) with what the scheduler needs of its job. */
export interface AllocationView {
  jobId: string;
  epoch: number;
  tenant: string;
  peerId: string;
  priority: number;
  preemptible: boolean;
  devices: readonly GrantView[];
  cpuMilli: number;
  memoryMiB: number;
  placedAt: number;
}

export interface TenantQuota {
  name: string;
  /** Most GPUs held at once (shares count by their fraction); null: no limit. */
  maxGpus: number | null;
  maxGpuHours: number | null;
  /** GPU-hours consumed so far, live allocations included. */
  gpuHoursUsed: number;
}

export interface Snapshot {
  peers: readonly PeerView[];
  allocations: readonly AllocationView[];
  tenants: readonly TenantQuota[];
  /** The leader's clock (ms), for waiting times and GPU-hours. */
  now: number;
}

/** The parts of a gossiped NodeState that placement reads (a NodeState satisfies it). */
export interface NodeStateLike {
  peerId: string;
  labels: {
    zone?: string | undefined;
    region?: string | undefined;
    cloud?: string | undefined;
    pricePerGpuHour?: number | undefined;
    spot: boolean;
    extra: Readonly<Record<string, string>>;
  };
  inventory: {
    host: { cpuCores: number; memoryMiB: number };
    devices: readonly Device[];
    links: readonly Link[];
  };
}

/** A peer as the scheduler sees it, from its gossiped state. */
export function peerViewOf(state: NodeStateLike, options: { schedulable?: boolean } = {}): PeerView {
  const { zone, region, cloud, pricePerGpuHour, spot, extra } = state.labels;
  const labels: Record<string, string> = { ...extra, spot: String(spot) };
  if (zone !== undefined) labels['zone'] = zone;
  if (region !== undefined) labels['region'] = region;
  if (cloud !== undefined) labels['cloud'] = cloud;
  return {
    peerId: state.peerId,
    labels,
    zone: zone ?? null,
    region: region ?? null,
    cloud: cloud ?? null,
    pricePerGpuHour: pricePerGpuHour ?? null,
    spot,
    cpuMilli: state.inventory.host.cpuCores * 1000,
    memoryMiB: state.inventory.host.memoryMiB,
    devices: state.inventory.devices,
    links: state.inventory.links,
    schedulable: options.schedulable ?? true,
  };
}

/** CPU and memory a job's spec reserves per member (0 when the spec does not parse). */
function hostDemandOf(job: Readonly<Job>): { cpuMilli: number; memoryMiB: number } {
  const parsed = JobSpecSchema.safeParse(job.spec);
  if (!parsed.success) return { cpuMilli: 0, memoryMiB: 0 };
  const request = resolveRequest(parsed.data, job.id);
  return { cpuMilli: request.member.cpuMilli, memoryMiB: request.member.memoryMiB };
}

/**
 * A snapshot from the committed state (the fsm's jobs, live allocations and tenants) and the
 * gossiped peers. Priority, preemptibility and host CPU/memory of each allocation come from its
 * job (the fsm does not record CPU and memory per allocation; they are re-derived from the spec).
 */
export function snapshotOf(input: {
  peers: readonly PeerView[];
  jobs: readonly Readonly<Job>[];
  allocations: readonly Readonly<Allocation>[];
  tenants: readonly TenantView[];
  now: number;
}): Snapshot {
  const jobs = new Map(input.jobs.map((job) => [job.id, job]));
  const hostDemand = new Map<string, { cpuMilli: number; memoryMiB: number }>();
  const allocations: AllocationView[] = [];
  for (const allocation of input.allocations) {
    const job = jobs.get(allocation.jobId);
    let demand = hostDemand.get(allocation.jobId);
    if (demand === undefined) {
      demand = job === undefined ? { cpuMilli: 0, memoryMiB: 0 } : hostDemandOf(job);
      hostDemand.set(allocation.jobId, demand);
    }
    allocations.push({
      jobId: allocation.jobId,
      epoch: allocation.epoch,
      tenant: allocation.tenant,
      peerId: allocation.peerId,
      priority: job?.priority ?? 0,
      preemptible: job?.preemptible ?? false,
      devices: allocation.devices.map((device) => ({ uuid: device.uuid, milli: device.milli, parentUuid: device.parentUuid })),
      cpuMilli: demand.cpuMilli,
      memoryMiB: demand.memoryMiB,
      placedAt: allocation.placedAt,
    });
  }
  return {
    peers: input.peers,
    allocations,
    tenants: input.tenants.map((tenant) => ({
      name: tenant.name,
      maxGpus: tenant.maxGpus,
      maxGpuHours: tenant.maxGpuHours,
      gpuHoursUsed: tenant.gpuHoursUsed,
    })),
    now: input.now,
  };
}

/** GPUs an allocation holds, fractions counted by their share. */
export function gpusHeld(devices: readonly GrantView[]): number {
  return devices.reduce((sum, device) => sum + device.milli, 0) / MILLI_PER_GPU;
}
