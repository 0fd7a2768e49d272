/**
 * The safety properties of Raft (Ongaro's thesis, figure 3.2) plus the client-facing one, checked
 * by the simulation after every step. Each check is incremental, so checking after every step
 * stays cheap:
 * - election safety: at most one leader per term;
 * - log matching: equal (index, term) ⇒ equal log prefixes, via chain hashes of prefixes;
 * - leader completeness: a leader's log holds every entry committed in an earlier term;
 * - state-machine safety: no two nodes commit or apply different entries at one index, and
 *   equal snapshots at equal indexes;
 * - durability: an acknowledged write is durably on enough voters of the latest configuration
 *   that the voters lacking it can never form a quorum (so no future leader can lack it).
 * A violation throws `InvariantViolation`, which carries the invariant's name.
 */
import type { ConfState } from '../../src/consensus/types.ts';
import type { LogObserver, SimDisk } from './disk.ts';

export type InvariantName =
  | 'election safety'
  | 'log matching'
  | 'leader completeness'
  | 'state machine safety'
  | 'apply order'
  | 'acknowledged write lost'
  | 'linearizability'
  | 'liveness'
  | 'driver error';

export class InvariantViolation extends Error {
  readonly invariant: InvariantName;

  constructor(invariant: InvariantName, detail: string) {
    super(`${invariant}: ${detail}`);
    this.name = 'InvariantViolation';
    this.invariant = invariant;
  }
}

export function quorum(voters: number): number {
  return Math.floor(voters / 2) + 1;
}

interface AckedWrite {
  index: number;
  chain: number;
  what: string;
}

export class InvariantChecker implements LogObserver {
  /** `${index}/${term}` → chain of the prefix ending there, as first seen in any node's log. */
  readonly #chains = new Map<string, number>();
  readonly #leaderOfTerm = new Map<number, string>();
  /** Committed (or applied) index → chain, from any node. */
  readonly #committed = new Map<number, number>();
  /** Term in which a commit was first observed → the highest index observed committed in it. */
  readonly #maxCommittedInTerm = new Map<number, number>();
  /** Conf-change index → the configuration it produced. */
  readonly #configAt = new Map<number, string>();
  /** Snapshot index → digest of the state machine there. */
  readonly #stateAt = new Map<number, number>();
  /** Acknowledged writes, by index (ascending). */
  readonly #acked: AckedWrite[] = [];
  /** Terms whose leader has already been checked for completeness, per node. */
  readonly #completenessChecked = new Set<string>();

  // ---- Log matching (the disks report every entry they store) ----

  appended(node: string, index: number, term: number, chain: number): void {
    const key = `${index}/${term}`;
    const known = this.#chains.get(key);
    if (known === undefined) {
      this.#chains.set(key, chain);
    } else if (known !== chain) {
      throw new InvariantViolation('log matching', `${node} holds index ${index} term ${term} with a log prefix that differs from another node's`);
    }
  }

  chainOf(index: number, term: number): number {
    if (index === 0) return 0;
    const chain = this.#chains.get(`${index}/${term}`);
    if (chain === undefined) throw new InvariantViolation('log matching', `a snapshot at index ${index} term ${term}, an entry no log ever held`);
    return chain;
  }

  // ---- Election safety ----

  observeLeader(node: string, term: number): void {
    const leader = this.#leaderOfTerm.get(term);
    if (leader === undefined) this.#leaderOfTerm.set(term, node);
    else if (leader !== node) throw new InvariantViolation('election safety', `${leader} and ${node} are both leaders of term ${term}`);
  }

  leaders(): number {
    return this.#leaderOfTerm.size;
  }

  // ---- Committed and applied entries ----

  /** `node`, in `term`, considers (index, chain) committed (its hard state says so, or it applied it). */
  committed(node: string, term: number, index: number, chain: number | undefined, applied: boolean): void {
    if (index === 0) return;
    if (chain === undefined) throw new InvariantViolation('state machine safety', `${node} has commit index ${index} beyond its log`);
    const known = this.#committed.get(index);
    if (known === undefined) {
      this.#committed.set(index, chain);
    } else if (known !== chain) {
      const what = applied ? 'applied' : 'committed';
      throw new InvariantViolation('state machine safety', `${node} ${what} a different entry (or log prefix) at index ${index} than another node`);
    }
    const max = this.#maxCommittedInTerm.get(term);
    if (max === undefined || index > max) this.#maxCommittedInTerm.set(term, index);
  }

  /** A node's state machine digest at a snapshot index must be the same on every node. */
  snapshotState(node: string, index: number, digest: number): void {
    const known = this.#stateAt.get(index);
    if (known === undefined) this.#stateAt.set(index, digest);
    else if (known !== digest) throw new InvariantViolation('state machine safety', `${node}'s state machine at index ${index} differs from another node's`);
  }

  /** Every node must derive the same configuration from the conf-change entry at `index`. */
  configApplied(node: string, index: number, conf: ConfState): void {
    const key = `voters ${[...conf.voters].sort().join(',') || '-'} learners ${[...conf.learners].sort().join(',') || '-'}`;
    const known = this.#configAt.get(index);
    if (known === undefined) this.#configAt.set(index, key);
    else if (known !== key) throw new InvariantViolation('state machine safety', `${node} applied configuration (${key}) at ${index}, another node (${known})`);
  }

  /**
   * Leader completeness, checked once per leader and term, when the leader first persists (its
   * disk then holds its whole log): every entry committed in an earlier term must be in it.
   */
  checkLeaderLog(node: string, term: number, disk: SimDisk): void {
    const key = `${node}/${term}`;
    if (this.#completenessChecked.has(key)) return;
    this.#completenessChecked.add(key);
    let index = 0;
    for (const [t, max] of this.#maxCommittedInTerm) if (t < term && max > index) index = max;
    if (index === 0 || index <= disk.snapshot().metadata.index) return;
    const chain = disk.chainAt(index);
    if (chain !== this.#committed.get(index)) {
      const why = chain === undefined ? `its log ends at ${disk.lastIndex()}` : 'it holds a different entry there';
      throw new InvariantViolation('leader completeness', `${node} leads term ${term} but lacks entry ${index}, committed in an earlier term (${why})`);
    }
  }

  // ---- Acknowledged writes stay durable ----

  acknowledged(index: number, chain: number, what: string): void {
    const acked = this.#acked;
    let at = acked.length;
    while (at > 0 && acked[at - 1]!.index > index) at--;
    if (at > 0 && acked[at - 1]!.index === index) return;
    acked.splice(at, 0, { index, chain, what });
  }

  ackedCount(): number {
    return this.#acked.length;
  }

  maxAckedIndex(): number {
    return this.#acked[this.#acked.length - 1]?.index ?? 0;
  }

  /**
   * Every acknowledged write must survive any crash now: the voters whose disks would lose it
   * must not form a quorum of the latest configuration. Acked writes all lie on the one committed
   * log, so a disk holding an acked write durably holds every earlier one: each voter holds a
   * prefix of the acked list, found by binary search.
   */
  checkDurability(voters: readonly string[], diskOf: (node: string) => SimDisk | undefined): void {
    const acked = this.#acked;
    if (acked.length === 0 || voters.length === 0) return;
    const held: number[] = voters.map((v) => {
      const disk = diskOf(v);
      if (disk === undefined) return 0;
      let lo = 0;
      let hi = acked.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        const w = acked[mid]!;
        if (disk.durablyHolds(w.index, w.chain)) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    });
    held.sort((a, b) => b - a);
    // The write at position p is held by the voters whose prefix is longer than p; it is safe
    // when at least |voters| - quorum + 1 of them hold it.
    const needed = voters.length - quorum(voters.length) + 1;
    const safeUpTo = held[needed - 1]!;
    if (safeUpTo < acked.length) {
      const w = acked[safeUpTo]!;
      const holders = held.filter((h) => h > safeUpTo).length;
      throw new InvariantViolation(
        'acknowledged write lost',
        `${w.what} (index ${w.index}) was acknowledged but only ${holders} of the voters ${voters.join(',')} hold it durably; a crash now would let a leader without it be elected`,
      );
    }
  }
}
