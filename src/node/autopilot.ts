/**
 * Autopilot: the Raft leader chooses the voters itself, as Consul's autopilot does.
 *
 * A pure decision over the leader's view (the configuration, replication progress and the
 * gossiped health and zone of every peer): it returns at most ONE membership change, which the
 * leader makes and then asks again. One change at a time keeps every step a single-step change
 * that Raft makes safely, and the leader never removes a voter that is alive, so it never takes
 * the group below quorum by its own doing.
 *
 * Every healthy peer joins the group as a learner: it holds a replica of the fabric state, so it
 * reads its own allocations and the jobs it runs from its log in commit order, and answers reads
 * itself. Voters are chosen among the learners. Policy, in order:
 *  1. Promote a caught-up learner while there are fewer healthy voters than the target, from the
 *     zone with the fewest voters, so voters spread over failure domains.
 *  2. Remove a voter that has been dead longer than the grace period once its replacement votes
 *     (there are more voters than the target), or when no healthy peer could replace it.
 *  2b. Demote a voter to learner when more voters than the target are alive (a replaced voter
 *     came back before it was removed).
 *  3. Remove a learner that has been dead longer than the grace period.
 *  4. Add a healthy peer that is not in the group as a learner.
 *
 * The target is 5 voters once 5 peers are alive, 3 once 3 are, else 1: an even count adds no
 * fault tolerance, and 2 voters would stall on the loss of either.
 */

export type PeerHealth = 'alive' | 'suspect' | 'dead';

export interface AutopilotPeer {
  peerId: string;
  health: PeerHealth;
  /** How long the peer has held its current health (ms). */
  healthForMs: number;
  zone: string | undefined;
}

export interface AutopilotInput {
  self: string;
  voters: readonly string[];
  learners: readonly string[];
  /** Highest log index known replicated on each member (the leader's progress). */
  match: ReadonlyMap<string, number>;
  /** The leader's last log index. */
  lastIndex: number;
  /** Every peer of the gossiped view, this one included. Members missing from it count as unknown (no action). */
  peers: readonly AutopilotPeer[];
  deadGraceMs: number;
  /** A learner this many entries or fewer behind the leader's last index is caught up. */
  catchUpEntries?: number;
  maxVoters?: number;
}

export type AutopilotAction =
  | { type: 'promote'; peer: string; why: string }
  | { type: 'remove'; peer: string; why: string }
  | { type: 'demote'; peer: string; why: string }
  | { type: 'add-learner'; peer: string; why: string };

export const DEFAULT_MAX_VOTERS = 5;
export const DEFAULT_CATCH_UP_ENTRIES = 64;

export function voterTarget(alivePeers: number, maxVoters = DEFAULT_MAX_VOTERS): number {
  const target = alivePeers >= 5 ? 5 : alivePeers >= 3 ? 3 : 1;
  return Math.min(target, Math.max(1, maxVoters));
}

export function planVoterChange(input: AutopilotInput): AutopilotAction | null {
  const byId = new Map(input.peers.map((p) => [p.peerId, p]));
  const health = (id: string): PeerHealth | 'unknown' => (id === input.self ? 'alive' : (byId.get(id)?.health ?? 'unknown'));
  const deadPastGrace = (id: string): boolean => {
    const p = byId.get(id);
    return id !== input.self && p !== undefined && p.health === 'dead' && p.healthForMs >= input.deadGraceMs;
  };
  const alive = input.peers.filter((p) => p.peerId === input.self || p.health === 'alive');
  const target = voterTarget(alive.length + (byId.has(input.self) ? 0 : 1), input.maxVoters);
  const members = new Set([...input.voters, ...input.learners]);
  const deadVoters = input.voters.filter(deadPastGrace);
  const healthyVoters = input.voters.length - deadVoters.length;
  const catchUp = input.catchUpEntries ?? DEFAULT_CATCH_UP_ENTRIES;
  // Something must have arrived (a learner starts from a snapshot), and not much be missing.
  const caughtUp = (id: string): boolean => {
    const match = input.match.get(id) ?? 0;
    return match > 0 && match >= input.lastIndex - catchUp;
  };
  const candidates = alive.filter((p) => !members.has(p.peerId));

  const zoneOf = (id: string): string => byId.get(id)?.zone ?? '';
  const votersPerZone = new Map<string, number>();
  for (const id of input.voters) if (!deadPastGrace(id)) votersPerZone.set(zoneOf(id), (votersPerZone.get(zoneOf(id)) ?? 0) + 1);
  const byZoneThenId = (a: string, b: string): number =>
    (votersPerZone.get(zoneOf(a)) ?? 0) - (votersPerZone.get(zoneOf(b)) ?? 0) || (a < b ? -1 : a > b ? 1 : 0);

  // 1. A caught-up learner becomes a voter when one is missing, from the least represented zone.
  if (healthyVoters < target) {
    const ready = input.learners.filter((id) => health(id) === 'alive' && caughtUp(id)).sort(byZoneThenId);
    if (ready.length > 0) {
      return { type: 'promote', peer: ready[0]!, why: `${healthyVoters} healthy voters, target ${target}; learner caught up, zone ${zoneOf(ready[0]!) || '(none)'}` };
    }
  }

  // 2. A long-dead voter goes once replaced, or when nobody could replace it.
  const replaceable = candidates.length > 0 || input.learners.some((id) => health(id) === 'alive');
  if (deadVoters.length > 0 && (input.voters.length > target || !replaceable)) {
    const peer = [...deadVoters].sort()[0]!;
    const p = byId.get(peer)!;
    return { type: 'remove', peer, why: `voter dead for ${Math.round(p.healthForMs / 1000)} s (grace ${Math.round(input.deadGraceMs / 1000)} s)` };
  }

  // 2b. More voters than the target, all alive (a voter dead past its grace was replaced, then
  // came back before it was removed): one goes back to being a learner, from the most
  // represented zone, never the leader itself. Only when every voter is alive, so that the group
  // never gives up a vote while one of them is in doubt.
  if (deadVoters.length === 0 && input.voters.length > target && input.voters.every((id) => health(id) === 'alive')) {
    const excess = input.voters.filter((id) => id !== input.self).sort((a, b) => -byZoneThenId(a, b));
    if (excess.length > 0) return { type: 'demote', peer: excess[0]!, why: `${input.voters.length} voters alive, target ${target}` };
  }

  // 3. A long-dead learner goes.
  const deadLearner = input.learners.filter(deadPastGrace).sort()[0];
  if (deadLearner !== undefined) return { type: 'remove', peer: deadLearner, why: 'learner dead past the grace period' };

  // 4. Every healthy peer holds a replica.
  const newcomer = candidates.map((p) => p.peerId).sort()[0];
  if (newcomer !== undefined) return { type: 'add-learner', peer: newcomer, why: 'every healthy peer holds a replica of the fabric state' };
  return null;
}
