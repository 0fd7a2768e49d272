/**
 * What a leader knows about each peer's log (etcd's `tracker` package, single-majority only):
 * the highest index known to match (`match`), the next index to send (`next`), and a flow
 * state that decides how appends go out:
 *   probe      one append per heartbeat round until the peer's log position is found
 *   replicate  appends pipelined optimistically, at most `maxInflight` unacknowledged
 *   snapshot   a snapshot is on its way; appends wait for it
 */
import type { ConfChange, ConfState, NodeId } from './types.ts';
import { compareIds } from './util.ts';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/** A ring buffer of the last index of each append in flight to one peer. */
export class Inflights {
  readonly size: number;
  #buffer: number[];
  #start = 0;
  #count = 0;

  constructor(size: number) {
    this.size = size;
    this.#buffer = new Array<number>(size).fill(0);
  }

  get count(): number {
    return this.#count;
  }

  full(): boolean {
    return this.#count === this.size;
  }

  add(lastIndex: number): void {
    if (this.full()) throw new RangeError('inflights: add to a full window');
    this.#buffer[(this.#start + this.#count) % this.size] = lastIndex;
    this.#count++;
  }

  /** Frees every append whose last index is at most `to` (the peer acknowledged up to `to`). */
  freeLE(to: number): void {
    let freed = 0;
    let idx = this.#start;
    while (freed < this.#count && this.#buffer[idx]! <= to) {
      freed++;
      idx = (idx + 1) % this.size;
    }
    this.#count -= freed;
    this.#start = this.#count === 0 ? 0 : idx;
  }

  reset(): void {
    this.#count = 0;
    this.#start = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** In `snapshot` state: the index of the snapshot sent. */
  pendingSnapshot = 0;
  /** Heard from since the last check-quorum round (the leader counts itself always active). */
  recentActive = false;
  /** Probe: one append is out, wait for its answer or the next heartbeat response. Replicate: window full. */
  msgAppFlowPaused = false;
  /** The highest commit index sent to the peer, so that a new commit is sent to it only once. */
  sentCommit = 0;
  /** Leader ticks since the snapshot went out; a silent loss is retried after a while. */
  snapshotElapsed = 0;
  isLearner: boolean;
  readonly inflights: Inflights;

  constructor(next: number, maxInflight: number, isLearner: boolean) {
    this.next = next;
    this.isLearner = isLearner;
    this.inflights = new Inflights(maxInflight);
  }

  #resetState(state: ProgressState): void {
    this.msgAppFlowPaused = false;
    this.pendingSnapshot = 0;
    this.snapshotElapsed = 0;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    // Coming back from a snapshot, the peer holds at least the snapshot's entries.
    const fromSnapshot = this.state === 'snapshot' ? this.pendingSnapshot : 0;
    this.#resetState('probe');
    this.next = Math.max(this.match + 1, fromSnapshot + 1);
    this.sentCommit = Math.min(this.sentCommit, this.next - 1);
  }

  becomeReplicate(): void {
    this.#resetState('replicate');
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.#resetState('snapshot');
    this.pendingSnapshot = snapshotIndex;
    this.next = snapshotIndex + 1;
    this.sentCommit = snapshotIndex;
  }

  /** Records an append of `entries` entries ending at `lastIndex` going out. */
  sentEntries(entries: number, lastIndex: number): void {
    if (this.state === 'replicate') {
      if (entries > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex);
      }
      this.msgAppFlowPaused = this.inflights.full();
    } else if (this.state === 'probe') {
      // Any append in probe state is a probe: wait for its answer (or a heartbeat response).
      this.msgAppFlowPaused = true;
    }
  }

  /** An acknowledgement up to `n`; false when it says nothing new (a stale or duplicate ack). */
  maybeUpdate(n: number): boolean {
    if (n <= this.match) return false;
    this.match = n;
    this.next = Math.max(this.next, n + 1);
    this.msgAppFlowPaused = false;
    return true;
  }

  /**
   * A rejection of the append anchored at `rejected`, with the peer's hint that its log may
   * match up to `matchHint`. False when the rejection is stale and must be ignored.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === 'replicate') {
      // Stale: the peer already acknowledged past the rejected index.
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      this.sentCommit = Math.min(this.sentCommit, this.next - 1);
      return true;
    }
    // A snapshot is on its way; a rejection can only answer an append sent before it.
    if (this.state === 'snapshot') return false;
    // Probing sends one append at a time, anchored at next-1; anything else is stale.
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.sentCommit = Math.min(this.sentCommit, this.next - 1);
    this.msgAppFlowPaused = false;
    return true;
  }

  isPaused(): boolean {
    return this.state === 'snapshot' || this.msgAppFlowPaused;
  }

  /** Whether the peer may not yet know commit index `index` and an append would tell it. */
  canBumpCommit(index: number): boolean {
    return index > this.sentCommit && this.sentCommit < this.next - 1;
  }
}

export type VoteResult = 'won' | 'lost' | 'pending';

/** The configuration (voters, learners) and the leader's progress for every member. */
export class ProgressTracker {
  readonly voters = new Set<NodeId>();
  readonly learners = new Set<NodeId>();
  readonly progress = new Map<NodeId, Progress>();
  readonly maxInflight: number;
  #votes = new Map<NodeId, boolean>();

  constructor(maxInflight: number) {
    this.maxInflight = maxInflight;
  }

  static fromConfState(cs: ConfState, maxInflight: number, lastIndex: number): ProgressTracker {
    const t = new ProgressTracker(maxInflight);
    for (const id of cs.voters) t.#addMember(id, false, lastIndex);
    for (const id of cs.learners) if (!t.voters.has(id)) t.#addMember(id, true, lastIndex);
    return t;
  }

  confState(): ConfState {
    return { voters: [...this.voters].sort(compareIds), learners: [...this.learners].sort(compareIds) };
  }

  quorum(): number {
    return Math.floor(this.voters.size / 2) + 1;
  }

  isSingleton(): boolean {
    return this.voters.size === 1;
  }

  /** Members in id order, so that messages go out in a deterministic order. */
  sortedIds(): NodeId[] {
    return [...this.progress.keys()].sort(compareIds);
  }

  sortedVoters(): NodeId[] {
    return [...this.voters].sort(compareIds);
  }

  /** The highest index acknowledged by a majority of voters (0 without voters). */
  committed(): number {
    if (this.voters.size === 0) return 0;
    const matches = [...this.voters].map((id) => this.progress.get(id)?.match ?? 0).sort((a, b) => b - a);
    return matches[this.quorum() - 1]!;
  }

  /** Whether a majority of voters has been heard from since the last check. */
  quorumActive(): boolean {
    let active = 0;
    for (const id of this.voters) if (this.progress.get(id)?.recentActive) active++;
    return active >= this.quorum();
  }

  resetVotes(): void {
    this.#votes.clear();
  }

  /** Records a vote; only the first answer of each peer counts. */
  recordVote(id: NodeId, granted: boolean): void {
    if (!this.#votes.has(id)) this.#votes.set(id, granted);
  }

  tallyVotes(): { granted: number; rejected: number; result: VoteResult } {
    let granted = 0;
    let rejected = 0;
    for (const id of this.voters) {
      const v = this.#votes.get(id);
      if (v === true) granted++;
      else if (v === false) rejected++;
    }
    const q = this.quorum();
    const missing = this.voters.size - granted - rejected;
    const result: VoteResult = granted >= q ? 'won' : granted + missing < q ? 'lost' : 'pending';
    return { granted, rejected, result };
  }

  /**
   * Whether `cc` can be applied to this configuration: a change that would leave no voter is
   * refused (it would leave a group that can never elect a leader again).
   */
  refusal(cc: ConfChange): string | null {
    if ((cc.type === 'remove-voter' || cc.type === 'add-learner') && this.voters.has(cc.node) && this.voters.size === 1) {
      return `${cc.type} ${cc.node} would leave no voter`;
    }
    return null;
  }

  /**
   * Applies one single-step change. Adding a member that is there, or removing one that is not,
   * changes nothing. `lastIndex` seeds a new member's progress (it is probed from there).
   */
  apply(cc: ConfChange, lastIndex: number): void {
    if (this.refusal(cc) !== null) return;
    const id = cc.node;
    switch (cc.type) {
      case 'add-voter': {
        if (this.voters.has(id)) return;
        const pr = this.progress.get(id);
        if (pr !== undefined) {
          // Promote a learner: its progress carries over, it has been catching up.
          this.learners.delete(id);
          pr.isLearner = false;
          this.voters.add(id);
          return;
        }
        this.#addMember(id, false, lastIndex);
        return;
      }
      case 'add-learner': {
        if (this.learners.has(id)) return;
        const pr = this.progress.get(id);
        if (pr !== undefined) {
          // Demote a voter: it keeps receiving the log but no longer counts.
          this.voters.delete(id);
          pr.isLearner = true;
          this.learners.add(id);
          return;
        }
        this.#addMember(id, true, lastIndex);
        return;
      }
      case 'remove-voter':
        this.voters.delete(id);
        this.learners.delete(id);
        this.progress.delete(id);
        return;
    }
  }

  #addMember(id: NodeId, isLearner: boolean, lastIndex: number): void {
    // Probe from the last index: a new peer usually has nothing and is caught up from there
    // (by back-off or a snapshot). Count it active so check-quorum does not trip before it
    // has had a chance to answer.
    const pr = new Progress(Math.max(lastIndex, 1), this.maxInflight, isLearner);
    pr.recentActive = true;
    this.progress.set(id, pr);
    (isLearner ? this.learners : this.voters).add(id);
  }
}
