/**
 * What the scheduler hands the leader: a plan (plain data) and a status with reasons. A plan maps
 * one-to-one onto the replicated state's `alloc.place` command (one allocation per peer, each
 * with its device grants), preceded by `alloc.release` of the victims it names.
 */
import type { CommandOf } from './fsm/index.ts';
import type { GrantView } from './snapshot.ts';
import { MILLI_PER_GPU } from './spec.ts';

/**
 * Kubernetes-style outcome codes. `Unschedulable`: not now, but freeing capacity (jobs ending,
 * preemption) can help. `UnschedulableAndUnresolvable`: no change of load helps (wrong model, too
 * few GPUs on any peer, labels). `Wait`: held back on purpose (tenant quota, capacity reserved for
 * an older job).
 */
export type StatusCode = 'Success' | 'Unschedulable' | 'UnschedulableAndUnresolvable' | 'Wait';

export interface Status {
  code: StatusCode;
  reasons: string[];
}

export interface PlannedMember {
  peerId: string;
  devices: GrantView[];
  /** Host CPU (thousandths of a core) and memory (MiB) reserved on the peer. */
  cpuMilli: number;
  memoryMiB: number;
}

export interface Victim {
  jobId: string;
  /** The placement to release (alloc.release names it). */
  epoch: number;
  tenant: string;
  priority: number;
  peerIds: string[];
  /** GPUs the victim holds over all its peers. */
  gpus: number;
}

export interface Plan {
  jobId: string;
  tenant: string;
  priority: number;
  /** One member per peer; a gang is placed whole or not at all. */
  members: PlannedMember[];
  /** Jobs to release (after their checkpoint) before the members can be placed. */
  preemptions: Victim[];
}

/** Thousandths of a GPU a plan takes (a MIG slice counts as a whole device, as the fsm's quota does). */
export function planMilli(plan: Plan): number {
  return plan.members.reduce((sum, member) => sum + member.devices.reduce((s, d) => s + d.milli, 0), 0);
}

export function planGpus(plan: Plan): number {
  return planMilli(plan) / MILLI_PER_GPU;
}

/** The `alloc.place` command for a plan (victims are released by their own `alloc.release` first). */
export function toAllocPlaceCommand(
  plan: Plan,
  envelope: { requestId: string; actor: string; at: number; epoch: number },
): CommandOf<'alloc.place'> {
  return {
    type: 'alloc.place',
    requestId: envelope.requestId,
    actor: envelope.actor,
    at: envelope.at,
    jobId: plan.jobId,
    epoch: envelope.epoch,
    allocations: plan.members.map((member) => ({
      peerId: member.peerId,
      devices: member.devices.map((device) => {
        const request: { uuid: string; milli?: number; parentUuid?: string } = { uuid: device.uuid };
        if (device.milli !== MILLI_PER_GPU) request.milli = device.milli;
        if (device.parentUuid !== null) request.parentUuid = device.parentUuid;
        return request;
      }),
    })),
  };
}

/** The `alloc.release` commands that take the victims' devices back, in plan order. */
export function toReleaseCommands(
  plan: Plan,
  envelope: { requestIdPrefix: string; actor: string; at: number },
): CommandOf<'alloc.release'>[] {
  return plan.preemptions.map((victim, i) => ({
    type: 'alloc.release',
    requestId: `${envelope.requestIdPrefix}/${i}`,
    actor: envelope.actor,
    at: envelope.at,
    jobId: victim.jobId,
    epoch: victim.epoch,
    reason: `preempted by job ${plan.jobId} (priority ${plan.priority} over ${victim.priority})`,
  }));
}
