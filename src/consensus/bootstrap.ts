/**
 * How a new group starts (etcd's `RawNode.Bootstrap`): its first configuration is written into
 * the LOG, as one conf-change entry per member at indexes 1..n, term 1, already committed; the
 * snapshot at index 0 holds no configuration at all.
 *
 * Why not a snapshot at index 0 that holds the configuration: index 0 is where every log
 * "matches" (any two logs agree on (0, 0)), so a leader replicates to a node added later from
 * index 1 without a snapshot. If the first configuration lived only in the founders' index-0
 * snapshot, such a node (which starts with no configuration, as the daemon's joiners do) would
 * rebuild the configuration from the log alone and never learn the founding voters: it would
 * hold a different configuration than everyone else at the same index, and could elect a
 * leader of its own (a split brain; the simulation's `--empty-joiners` seed 5 did). With the
 * configuration in the log, every node that replicates the log from its start rebuilds the same
 * configuration at the same index, as for any later change.
 *
 * Every founder must write the same entries (log matching: equal index and term mean equal
 * entries), so they are canonical: voters in id order, then learners in id order, duplicates
 * dropped. They are committed by construction (the founders agreed on them out of band), so the
 * hard state says commit n at term 1, and the first election is for term 2. The application
 * applies them like any committed conf change (RawNode.applyConfChange), from applied index 0.
 */
import { FabricError } from '../core/index.ts';
import { encodeConfChange } from './conf-change.ts';
import type { ConfChange, ConfState, Entry, HardState } from './types.ts';
import { compareIds } from './util.ts';

/** The term of the bootstrap entries: the founders' shared, uncontested first term. */
export const BOOTSTRAP_TERM = 1;

export interface BootstrapLog {
  /** Conf-change entries at indexes 1..n, term 1. */
  entries: Entry[];
  /** Term 1, no vote, commit n. */
  hardState: HardState;
}

/**
 * The log a new group's founders start with. An empty configuration gives an empty log and a
 * zero hard state: a node that waits to be added by an existing group's leader.
 * Throws FabricError BAD_INPUT for learners without any voter (a group that can never elect).
 */
export function bootstrapLog(confState: ConfState): BootstrapLog {
  const voters = canonical(confState.voters);
  const learners = canonical(confState.learners).filter((id) => !voters.includes(id));
  if (voters.length === 0) {
    if (learners.length > 0) throw new FabricError('BAD_INPUT', 'a bootstrap configuration with learners needs at least one voter');
    return { entries: [], hardState: { term: 0, vote: null, commit: 0 } };
  }
  const changes: ConfChange[] = [
    ...voters.map((node): ConfChange => ({ type: 'add-voter', node })),
    ...learners.map((node): ConfChange => ({ type: 'add-learner', node })),
  ];
  const entries = changes.map((cc, i): Entry => ({ term: BOOTSTRAP_TERM, index: i + 1, type: 'conf-change', data: encodeConfChange(cc) }));
  return { entries, hardState: { term: BOOTSTRAP_TERM, vote: null, commit: entries.length } };
}

function canonical(ids: readonly string[]): string[] {
  for (const id of ids) if (typeof id !== 'string' || id.length === 0) throw new FabricError('BAD_INPUT', 'a bootstrap member id must be a non-empty string');
  return [...new Set(ids)].sort(compareIds);
}
