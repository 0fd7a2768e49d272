/**
 * Preemption: when a job fits nowhere now, find the cheapest set of lower-priority preemptible
 * jobs whose devices would make it fit. As in Kubernetes' default preemption, per peer: take
 * victims lowest priority first (then smallest, then most recently placed: least work lost)
 * until the job fits, then give back ("reprieve") every victim, highest priority first, that the
 * job does not actually need. Peers are compared by the highest priority they would evict, then
 * how many jobs, then how many GPUs those jobs hold in all (a gang victim loses all its peers).
 *
 * Only jobs of strictly lower priority that are marked preemptible are ever chosen.
 */
import { nextVersion, type ClusterState, type JobHolding, type PeerState } from '../cluster.ts';
import type { Victim } from '../plan.ts';
import type { PlacementRequest } from '../spec.ts';
import { MILLI_PER_GPU } from '../spec.ts';
import { Reason, type FilterCycle, type ReasonCode } from './filters.ts';
import { filterPeer } from './filters.ts';

export interface PreemptionChoice {
  peerIds: string[];
  victims: Victim[];
}

interface PeerOption {
  peer: PeerState;
  victims: JobHolding[];
  cost: [number, number, number];
}

function compareCost(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

function fitsOn(cycle: FilterCycle, peer: PeerState): boolean {
  return filterPeer({ ...cycle, quotaProblem: null, reserved: null }, peer) === Reason.OK;
}

/** The cheapest victims on one peer that let one member fit, or null. */
function victimsOn(cluster: ClusterState, request: PlacementRequest, cycle: FilterCycle, peer: PeerState): PeerOption | null {
  if (fitsOn(cycle, peer)) return { peer, victims: [], cost: [-Infinity, 0, 0] };
  const pool: JobHolding[] = [];
  for (const jobId of peer.holdings.keys()) {
    const job = cluster.jobs.get(jobId);
    if (job !== undefined && job.preemptible && job.priority < request.priority) pool.push(job);
  }
  if (pool.length === 0) return null;
  pool.sort((a, b) => a.priority - b.priority || a.milli - b.milli || b.placedAt - a.placedAt || (a.jobId < b.jobId ? -1 : 1));
  let trial = peer.clone();
  const victims: JobHolding[] = [];
  for (const job of pool) {
    trial.give(job.jobId, nextVersion());
    victims.push(job);
    if (fitsOn(cycle, trial)) break;
  }
  if (!fitsOn(cycle, trial)) return null;
  // Reprieve: give back what is not needed, most valuable first.
  for (const job of [...victims].reverse()) {
    const holding = peer.holdings.get(job.jobId)!;
    const back = trial.clone();
    back.take(holding, nextVersion());
    if (fitsOn(cycle, back)) {
      trial = back;
      victims.splice(victims.indexOf(job), 1);
    }
  }
  const maxPriority = victims.reduce((m, v) => Math.max(m, v.priority), -Infinity);
  const milli = victims.reduce((sum, v) => sum + v.milli, 0);
  return { peer, victims, cost: [maxPriority, victims.length, milli] };
}

/**
 * Peers and victims for `nodes` members, or null when no preemption makes the job fit.
 * `candidate` returns a peer's filter reason when the peer could take a member (OK) or could after
 * freeing capacity, and null for peers no preemption helps (wrong devices, labels, reservations).
 */
export function choosePreemption(
  cluster: ClusterState,
  request: PlacementRequest,
  nodes: number,
  cycle: FilterCycle,
  candidate: (peer: PeerState) => ReasonCode | null,
): PreemptionChoice | null {
  const options: PeerOption[] = [];
  for (const peer of cluster.peers) {
    if (candidate(peer) === null) continue;
    const option = victimsOn(cluster, request, cycle, peer);
    if (option !== null) options.push(option);
  }
  if (options.length < nodes) return null;
  options.sort((a, b) => compareCost(a.cost, b.cost) || a.peer.index - b.peer.index);
  const chosen = options.slice(0, nodes);
  if (chosen.every((option) => option.victims.length === 0)) return null;
  const victims = new Map<string, JobHolding>();
  for (const option of chosen) for (const job of option.victims) victims.set(job.jobId, job);
  return {
    peerIds: chosen.map((option) => option.peer.id),
    victims: [...victims.values()].map((job) => ({
      jobId: job.jobId,
      epoch: job.epoch,
      tenant: job.tenant,
      priority: job.priority,
      peerIds: [...job.peerIds],
      gpus: job.milli / MILLI_PER_GPU,
    })),
  };
}
