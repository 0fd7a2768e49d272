/**
 * Planning a queue of waiting jobs in one pass, as the leader does after a change of capacity:
 *
 * - Order: higher priority first; within a priority, dominant-resource fairness (Ghodsi et al.
 *   2011, "Dominant Resource Fairness"): the next job is from the tenant whose largest share of any
 *   one resource (GPU, CPU, host memory) is smallest, recomputed after every placement (DRF's
 *   progressive filling); then the longest waiting.
 * - Every job is planned on a working copy that already holds the plans made before it, so two
 *   plans of one pass never count on the same device.
 * - Backfill: a job that cannot be placed does not stop the queue; smaller jobs behind it may use
 *   what is free. To keep a large job from starving behind a stream of small ones, the first
 *   blocked job of the highest priority that has waited `reserveAfterMs` reserves the peers
 *   closest to fitting it; jobs of lower or equal priority behind it do not get those peers (they
 *   see "reserved for a waiting higher-priority job").
 */
import type { ClusterState, PeerState } from '../cluster.ts';
import type { Plan } from '../plan.ts';
import { MILLI_PER_GPU, type PlacementRequest } from '../spec.ts';
import { makeFilterCycle, Reason, staticReason } from './filters.ts';
import type { ScheduleResult, Scheduler } from './schedule.ts';

export interface PendingJob {
  request: PlacementRequest;
  /** When it was submitted (ms, the leader's clock). */
  submittedAt: number;
}

export interface QueueOptions {
  /** How long a blocked job waits before it reserves peers (default 5 minutes). */
  reserveAfterMs?: number;
}

export interface QueueOutcome {
  /** Plans in the order to commit them. */
  plans: Plan[];
  /** Jobs that stay queued, with why. */
  waiting: { jobId: string; result: ScheduleResult }[];
  /** Peers reserved for a blocked job: peer id → job id. */
  reservations: Map<string, string>;
  /** The order the jobs were considered in (for explain and tests). */
  order: string[];
}

export const DEFAULT_RESERVE_AFTER_MS = 5 * 60_000;

/** A tenant's dominant share: its largest fraction of any one resource of the fabric. */
export function dominantShare(cluster: ClusterState, tenant: string, totals = cluster.totals()): number {
  const t = cluster.tenants.get(tenant);
  if (t === undefined) return 0;
  const shares = [
    totals.gpuMilli > 0 ? t.heldMilli / totals.gpuMilli : 0,
    totals.cpuMilli > 0 ? t.heldCpuMilli / totals.cpuMilli : 0,
    totals.memoryMiB > 0 ? t.heldMemoryMiB / totals.memoryMiB : 0,
  ];
  return Math.max(...shares);
}

export function scheduleQueue(cluster: ClusterState, pending: readonly PendingJob[], scheduler: Scheduler, options: QueueOptions = {}): QueueOutcome {
  const reserveAfter = options.reserveAfterMs ?? DEFAULT_RESERVE_AFTER_MS;
  const working = cluster.clone();
  const totals = working.totals();
  const left = [...pending];
  const plans: Plan[] = [];
  const waiting: { jobId: string; result: ScheduleResult }[] = [];
  const reservations = new Map<string, string>();
  const order: string[] = [];
  let reservingPriority: number | null = null;

  while (left.length > 0) {
    // Next: highest priority, then lowest dominant share of its tenant, then oldest, then id.
    let best = 0;
    let bestShare = dominantShare(working, left[0]!.request.tenant, totals);
    for (let i = 1; i < left.length; i++) {
      const a = left[i]!;
      const b = left[best]!;
      if (a.request.priority !== b.request.priority) {
        if (a.request.priority > b.request.priority) {
          best = i;
          bestShare = dominantShare(working, a.request.tenant, totals);
        }
        continue;
      }
      const share = dominantShare(working, a.request.tenant, totals);
      if (share < bestShare || (share === bestShare && (a.submittedAt < b.submittedAt || (a.submittedAt === b.submittedAt && a.request.jobId < b.request.jobId)))) {
        best = i;
        bestShare = share;
      }
    }
    const job = left.splice(best, 1)[0]!;
    order.push(job.request.jobId);
    const result = scheduler.schedule(working, job.request, { reserved: reservations.size > 0 ? reservations : null });
    if (result.plan !== null) {
      for (const victim of result.plan.preemptions) working.release(victim.jobId);
      working.place(
        { jobId: job.request.jobId, epoch: 0, tenant: job.request.tenant, priority: job.request.priority, preemptible: job.request.preemptible, placedAt: working.now },
        result.plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
      );
      plans.push(result.plan);
      continue;
    }
    waiting.push({ jobId: job.request.jobId, result });
    const blockedLongEnough = working.now - job.submittedAt >= reserveAfter;
    if (result.status.code === 'Unschedulable' && blockedLongEnough && reservingPriority === null) {
      const peers = reservationFor(working, job.request, scheduler);
      if (peers.length > 0) {
        reservingPriority = job.request.priority;
        for (const peer of peers) reservations.set(peer.id, job.request.jobId);
      }
    }
  }
  return { plans, waiting, reservations, order };
}

/**
 * The peers a blocked job would fill first as capacity frees: among peers that could ever run a
 * member, those with the most free thousandths of eligible GPUs (host CPU to break ties).
 */
export function reservationFor(cluster: ClusterState, request: PlacementRequest, scheduler: Scheduler): PeerState[] {
  const shape = scheduler.shapesFor(cluster, request)[0];
  if (shape === undefined) return [];
  const cycle = makeFilterCycle(request, shape.member, scheduler.eligibility, null, null);
  const need = cycle.need;
  const freeOf = (peer: PeerState): number => {
    if (need === null) return peer.cpuFree;
    const eligible = cycle.table!.get(peer);
    if (shape.member.mig !== null) return eligible.migSlots.reduce((n, slot) => n + peer.migFree[slot]! * MILLI_PER_GPU, 0);
    if (eligible.gpuSlots === null) return peer.freeMilliTotal;
    let free = 0;
    for (const slot of eligible.gpuSlots) free += peer.free[slot]!;
    return free;
  };
  return cluster.peers
    .filter((peer) => staticReason(cycle, peer) === Reason.OK)
    .sort((a, b) => freeOf(b) - freeOf(a) || b.cpuFree - a.cpuFree || a.index - b.index)
    .slice(0, shape.nodes);
}
