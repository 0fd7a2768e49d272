/**
 * Could this job ever run on this fabric? Submit asks before queueing: a job no peer could run
 * even with the whole fabric idle (no peer has the model, too few GPUs in one NVLink island, a
 * gang larger than the peers that qualify, a tenant quota smaller than the job) is refused with the
 * reason instead of waiting forever, unless the spec says `waitForCapacity`.
 *
 * Only the static filters are run (labels, price, spot, device classes, host size): their answer
 * does not depend on what is allocated.
 */
import type { ClusterState } from '../cluster.ts';
import { formatCount } from '../quantity.ts';
import { MILLI_PER_GPU, type PlacementRequest } from '../spec.ts';
import { describeDeviceMiss, describeReason, makeFilterCycle, Reason, REASON_COUNT, staticReason, type ReasonCode } from './filters.ts';
import type { Scheduler } from './schedule.ts';

export type Feasibility = { feasible: true } | { feasible: false; reason: string };

export function checkFeasibleEver(cluster: ClusterState, request: PlacementRequest, scheduler: Scheduler): Feasibility {
  const shapes = scheduler.shapesFor(cluster, request);
  if (shapes.length === 0) {
    return {
      feasible: false,
      reason:
        request.sizing !== null
          ? 'no GPU model in the fabric can hold the model, even split over the most GPUs tried'
          : 'the job asks for nothing to place',
    };
  }
  const tenant = cluster.tenants.get(request.tenant);
  let firstProblem: string | null = null;
  for (const shape of shapes) {
    const member = shape.member;
    const asked = shape.nodes * member.gpus * (member.mig !== null ? MILLI_PER_GPU : member.milli);
    if (tenant !== undefined && tenant.maxGpus !== null && asked > tenant.maxGpus * MILLI_PER_GPU) {
      firstProblem ??= `tenant ${tenant.name} may hold at most ${tenant.maxGpus} GPUs; the job asks for ${asked / MILLI_PER_GPU}`;
      continue;
    }
    const cycle = makeFilterCycle(request, member, scheduler.eligibility, null, null);
    const need = cycle.need;
    const counts = new Int32Array(REASON_COUNT);
    const deviceMisses = new Map<string, number>();
    const spreadValues = new Set<string>();
    let fit = 0;
    for (const peer of cluster.peers) {
      const code = staticReason(cycle, peer);
      counts[code]!++;
      if (code === Reason.OK) {
        fit++;
        if (request.spreadOver !== null) spreadValues.add(peer.labels[request.spreadOver] ?? '\u0000');
      } else if (code === Reason.DEVICES) {
        const text = describeDeviceMiss(peer, scheduler.eligibility.of(peer, need!, cycle.needKey), member);
        deviceMisses.set(text, (deviceMisses.get(text) ?? 0) + 1);
      }
    }
    const enough = request.spreadOver !== null ? spreadValues.size >= shape.nodes : fit >= shape.nodes;
    if (enough) return { feasible: true };
    if (firstProblem !== null) continue;
    const parts: string[] = [];
    for (let r = 1; r < REASON_COUNT; r++) {
      if (counts[r] === 0 || r === Reason.DEVICES) continue;
      parts.push(`${formatCount(counts[r]!)} ${describeReason(r as ReasonCode, request, member)}`);
    }
    for (const [text, count] of deviceMisses) parts.push(`${formatCount(count)} ${text}`);
    const gang =
      shape.nodes > 1
        ? request.spreadOver !== null
          ? `; the gang needs ${shape.nodes} distinct ${request.spreadOver} values, ${spreadValues.size} have a peer that could run a member`
          : `; the gang needs ${shape.nodes} peers, ${fit} could run a member`
        : '';
    const removed = parts.length > 0 ? `: ${parts.join(', ')}` : '';
    firstProblem = `no peer could ever run it: ${formatCount(cluster.peers.length)} peers${removed}${gang}`;
  }
  return { feasible: false, reason: firstProblem ?? 'no peer could ever run it' };
}
