/**
 * The leader's check of a plan against committed state, just before it proposes the plan to Raft
 * (Nomad's plan applier does the same): a plan was made on a snapshot that may be stale by the
 * time it reaches the front of the queue, so every device, share, MIG instance, core and MiB it
 * names is checked again against what the committed allocations leave free, with the named
 * victims released first. A stale plan is refused (the job is planned again), never partly
 * applied: a gang is checked whole.
 */
import type { ClusterState } from './cluster.ts';
import { planMilli, type Plan } from './plan.ts';
import { EligibilityCache, needKey } from './scheduler/eligibility.ts';
import { MILLI_PER_GPU, type PlacementRequest } from './spec.ts';

export type Verdict = { ok: true } | { ok: false; problems: string[] };

/**
 * Checks `plan` against `committed` (a ClusterState built from the committed allocations and the
 * current gossiped peers). With `request`, also checks that the plan gives the job what it asked
 * for (member count and size, device constraints, NVLink) and respects the tenant's quota.
 */
export function verifyPlan(committed: ClusterState, plan: Plan, request?: PlacementRequest): Verdict {
  const problems: string[] = [];
  if (plan.members.length === 0) problems.push('the plan places no member');
  const peerIds = plan.members.map((m) => m.peerId);
  if (new Set(peerIds).size !== peerIds.length) problems.push('a peer appears twice in the plan');
  if (committed.jobs.has(plan.jobId)) problems.push(`job ${plan.jobId} already holds devices`);

  // Victims are released on a copy; a plan without victims is checked on `committed` itself (read
  // only): copying 10,000 GPUs' state per plan would cost more than planning it.
  const trial = plan.preemptions.length > 0 ? committed.clone() : committed;
  for (const victim of plan.preemptions) {
    const held = committed.jobs.get(victim.jobId);
    if (held === undefined) {
      problems.push(`victim ${victim.jobId} no longer holds devices`);
      continue;
    }
    if (held.epoch !== victim.epoch) problems.push(`victim ${victim.jobId} is at epoch ${held.epoch}, the plan names ${victim.epoch}`);
    if (!held.preemptible) problems.push(`victim ${victim.jobId} is not preemptible`);
    if (held.priority >= plan.priority) problems.push(`victim ${victim.jobId} has priority ${held.priority}, not below ${plan.priority}`);
    trial.release(victim.jobId);
  }

  for (const member of plan.members) {
    const peer = trial.peerById.get(member.peerId);
    if (peer === undefined) {
      problems.push(`peer ${member.peerId} is not in the fabric`);
      continue;
    }
    if (!peer.schedulable) problems.push(`peer ${member.peerId} takes no new work`);
    const uuids = member.devices.map((d) => d.uuid);
    if (new Set(uuids).size !== uuids.length) problems.push(`a device appears twice on peer ${member.peerId}`);
    const problem = peer.fitProblem(member.devices, member.cpuMilli, member.memoryMiB);
    if (problem !== null) problems.push(problem);
  }

  if (request !== undefined) problems.push(...requestProblems(trial, plan, request));
  return problems.length === 0 ? { ok: true } : { ok: false, problems };
}

/** Does the plan give the job what it asked for? */
function requestProblems(trial: ClusterState, plan: Plan, request: PlacementRequest): string[] {
  const problems: string[] = [];
  if (plan.jobId !== request.jobId) problems.push(`the plan is for job ${plan.jobId}, not ${request.jobId}`);
  if (request.nodes !== null && plan.members.length !== request.nodes) {
    problems.push(`the job spans ${request.nodes} peers, the plan ${plan.members.length}`);
  }
  const tenant = trial.tenants.get(request.tenant);
  if (tenant !== undefined && tenant.maxGpus !== null && tenant.heldMilli + planMilli(plan) > tenant.maxGpus * MILLI_PER_GPU) {
    problems.push(`tenant ${tenant.name} would hold ${(tenant.heldMilli + planMilli(plan)) / MILLI_PER_GPU} GPUs, over its ${tenant.maxGpus}`);
  }
  if (request.sizing !== null) return problems; // auto-sized: the count per member was placement's choice
  const eligibility = new EligibilityCache();
  const member = request.member;
  for (const planned of plan.members) {
    const peer = trial.peerById.get(planned.peerId);
    if (peer === undefined) continue;
    if (planned.cpuMilli < member.cpuMilli || planned.memoryMiB < member.memoryMiB) problems.push(`peer ${peer.id}: less host CPU or memory than asked`);
    if (member.gpus === 0) continue;
    if (planned.devices.length !== member.gpus) problems.push(`peer ${peer.id}: ${planned.devices.length} devices, ${member.gpus} asked`);
    const need = { constraint: request.device, milli: member.milli, mig: member.mig, minMemoryMiB: member.minMemoryMiB };
    const eligible = eligibility.of(peer, need, needKey(need));
    for (const device of planned.devices) {
      if (member.mig !== null) {
        const slot = peer.migSlotByUuid.get(device.uuid);
        if (slot === undefined || !eligible.migSlots.includes(slot)) problems.push(`peer ${peer.id}: ${device.uuid} is not a MIG ${member.mig} instance the job may use`);
        continue;
      }
      const slot = peer.gpuSlotByUuid.get(device.uuid);
      const ok = slot !== undefined && (eligible.gpuSlots === null || eligible.gpuSlots.includes(slot));
      if (!ok) problems.push(`peer ${peer.id}: ${device.uuid} does not meet the job's device constraints`);
      if (device.milli !== member.milli) problems.push(`peer ${peer.id}: ${device.uuid} granted ${device.milli}/1000, ${member.milli} asked`);
    }
    if (member.nvlink && member.gpus > 1) {
      const slots = planned.devices.map((d) => peer.gpuSlotByUuid.get(d.uuid) ?? -1);
      const n = peer.gpus.length;
      const apart = slots.some((a) => slots.some((b) => a !== b && a >= 0 && b >= 0 && peer.rank[a * n + b] !== 0));
      if (apart) problems.push(`peer ${peer.id}: the GPUs are not all NVLink peers`);
    }
  }
  return problems;
}
