/**
 * The Raft state machine, after etcd's raft.go: no I/O, no clock, no randomness of its own.
 * Messages to send pile up in `msgs`; RawNode hands them out in a Ready with the entries and
 * hard state that must be durable before they leave.
 *
 * Roles are swapped functions, not `if role ==` ladders: `#step` is `#stepFollower`,
 * `#stepCandidate` (pre-candidates too) or `#stepLeader`, and `#tick` is `#tickElection` or
 * `#tickHeartbeat`. `step()` first deals with terms, which is the same for every role.
 *
 * Single-step membership: a change takes effect when the application applies its committed
 * entry (`applyConfChange`), and a leader accepts a new one only once the previous one is
 * applied and it has committed an entry of its own term (the fix for the single-server change
 * bug described by Ongaro on raft-dev, 2015).
 */
import { FabricError, assert, type ErrorCode } from '../core/index.ts';
import { decodeConfChange } from './conf-change.ts';
import { RaftLog } from './log.ts';
import { Progress, ProgressTracker } from './progress.ts';
import { ReadOnly } from './read-only.ts';
import type {
  ConfChange,
  ConfState,
  Entry,
  HardState,
  Message,
  MessageType,
  NodeId,
  RaftConfig,
  ReadState,
  Role,
  Snapshot,
  SoftState,
} from './types.ts';

/** Marks the votes of a leadership transfer: they must not be ignored for a lease. */
export const TRANSFER_CONTEXT: Uint8Array = new TextEncoder().encode('campaign-transfer');

type CampaignType = 'pre-election' | 'election' | 'transfer';

/** Leader ticks after which a snapshot that got no answer is taken as lost (in election timeouts). */
const SNAPSHOT_RETRY_ELECTIONS = 2;

/** A message with every field at its zero value but those given. */
export function newMessage(type: MessageType, to: NodeId, fields: Partial<Message> = {}): Message {
  return { type, from: '', to, term: 0, logTerm: 0, index: 0, entries: [], commit: 0, reject: false, rejectHint: 0, ...fields };
}

function isTransferContext(context: Uint8Array | undefined): boolean {
  if (context === undefined || context.length !== TRANSFER_CONTEXT.length) return false;
  return context.every((b, i) => b === TRANSFER_CONTEXT[i]);
}

function voteResponseType(t: 'vote' | 'pre-vote'): 'vote-resp' | 'pre-vote-resp' {
  return t === 'vote' ? 'vote-resp' : 'pre-vote-resp';
}

export class Raft {
  readonly id: NodeId;
  term = 0;
  vote: NodeId | null = null;
  lead: NodeId | null = null;
  role: Role = 'follower';
  /** This node is a learner in its current configuration (it never campaigns). */
  isLearner = false;
  readonly log: RaftLog;
  tracker: ProgressTracker;
  /** Messages waiting for the next Ready. */
  msgs: Message[] = [];
  readStates: ReadState[] = [];
  /** The peer leadership is being handed to, while a transfer is under way. */
  leadTransferee: NodeId | null = null;
  /** At least the index of the newest conf change in the log; a new one waits until it is applied. */
  pendingConfIndex = 0;

  electionElapsed = 0;
  heartbeatElapsed = 0;
  /** Learners get heartbeats on their own, slower clock: they never vote (see tickHeartbeat). */
  learnerHeartbeatElapsed = 0;
  randomizedElectionTimeout = 0;
  readonly electionTimeout: number;
  readonly heartbeatTimeout: number;
  readonly learnerHeartbeatTimeout: number;
  readonly checkQuorum: boolean;
  readonly preVote: boolean;
  readonly maxMsgSize: number;
  readonly maxInflight: number;
  readonly #randomInt: (n: number) => number;

  #readOnly = new ReadOnly();
  /** Reads that reached a new leader before it committed an entry of its term. */
  #pendingReadIndex: Message[] = [];
  #step: (m: Message) => void = this.#stepFollower;
  #tick: () => void = this.#tickElection;

  constructor(config: RaftConfig) {
    this.id = config.id;
    this.electionTimeout = config.electionTick;
    this.heartbeatTimeout = config.heartbeatTick;
    this.learnerHeartbeatTimeout = config.learnerHeartbeatTick ?? config.heartbeatTick;
    this.checkQuorum = config.checkQuorum;
    this.preVote = config.preVote;
    this.maxMsgSize = config.maxSizePerMsg;
    this.maxInflight = config.maxInflightMsgs;
    this.#randomInt = config.randomInt;
    this.log = new RaftLog(config.storage, config.maxCommittedSizePerReady ?? config.maxSizePerMsg);

    const { hardState, confState } = config.storage.initialState();
    this.tracker = ProgressTracker.fromConfState(confState, this.maxInflight, this.log.lastIndex());
    this.#switchToConfig();
    this.#loadState(hardState, config.storage.snapshot().metadata.index);
    if (config.applied > 0) {
      if (config.applied > this.log.committed) {
        throw new FabricError('BAD_INPUT', `applied index ${config.applied} is beyond the commit index ${this.log.committed}`);
      }
      this.log.appliedTo(config.applied);
    }
    this.becomeFollower(this.term, null);
  }

  softState(): SoftState {
    return { leader: this.lead, role: this.role };
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  tick(): void {
    this.#tick();
  }

  // ---- receiving messages ---------------------------------------------------------------

  /**
   * Steps one message. Local requests (`prop`, `read-index`, `transfer-leader` from RawNode)
   * carry term 0; so do proposals and reads a follower forwards. A local request that cannot
   * be served throws FabricError (NOT_LEADER, PROPOSAL_DROPPED); a remote one is dropped.
   */
  step(m: Message): void {
    if (m.term === 0) {
      // A request, not part of any term's exchange.
    } else if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'pre-vote') {
        // Check-quorum lease: while we hear from a leader, a peer that cannot (a partitioned
        // node coming back) must not depose it. A transfer's votes are asked for by the leader.
        const inLease = this.checkQuorum && this.lead !== null && this.electionElapsed < this.electionTimeout;
        if (inLease && !isTransferContext(m.context)) return;
      }
      if (m.type === 'pre-vote' || (m.type === 'pre-vote-resp' && !m.reject)) {
        // A pre-vote never changes terms: the request and its grants carry the term the
        // candidate would campaign at, not one it holds.
      } else {
        const fromLeader = m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap';
        this.becomeFollower(m.term, fromLeader ? m.from : null);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === 'heartbeat' || m.type === 'app')) {
        // A stale leader: with check-quorum or pre-vote our higher term may never reach it
        // through a vote, so tell it directly and let it step down.
        this.#send(newMessage('app-resp', m.from));
      } else if (m.type === 'pre-vote') {
        // Answer so that a pre-candidate with a stale term learns ours and does not wait.
        this.#send(newMessage('pre-vote-resp', m.from, { term: this.term, reject: true }));
      }
      return;
    }

    if (m.type === 'vote' || m.type === 'pre-vote') {
      this.#handleVoteRequest(m);
      return;
    }
    this.#step(m);
  }

  #handleVoteRequest(m: Message): void {
    const type = m.type as 'vote' | 'pre-vote';
    const canVote =
      // a repeat of the vote we cast,
      this.vote === m.from ||
      // or we have not voted and know of no leader this term,
      (this.vote === null && this.lead === null) ||
      // or a pre-vote for a later term (which commits us to nothing).
      (type === 'pre-vote' && m.term > this.term);
    // Learners answer too: one may have been promoted without having applied it yet.
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      // Answer with the request's term: for a pre-vote ours may be older, and the candidate
      // would ignore an answer of a lower term.
      this.#send(newMessage(voteResponseType(type), m.from, { term: m.term }));
      if (type === 'vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.#send(newMessage(voteResponseType(type), m.from, { term: this.term, reject: true }));
    }
  }

  #stepLeader(m: Message): void {
    switch (m.type) {
      case 'prop':
        this.#propose(m);
        return;
      case 'read-index':
        this.#leaderReadIndex(m);
        return;
      default:
        break;
    }
    const pr = this.tracker.progress.get(m.from);
    if (pr === undefined) return; // not (or no longer) a member
    switch (m.type) {
      case 'app-resp':
        this.#handleAppendResponse(m, pr);
        return;
      case 'heartbeat-resp':
        this.#handleHeartbeatResponse(m, pr);
        return;
      case 'transfer-leader':
        this.#handleTransferLeader(m.from, pr);
        return;
      default:
        return; // stale traffic of other roles
    }
  }

  #stepCandidate(m: Message): void {
    // Only answers to our own kind of campaign count: a candidate may still receive
    // pre-vote answers from its pre-candidacy.
    const myResponse = this.role === 'pre-candidate' ? 'pre-vote-resp' : 'vote-resp';
    switch (m.type) {
      case 'prop':
      case 'read-index':
        this.#drop(m, 'NOT_LEADER', `no leader at term ${this.term}: an election is under way`);
        return;
      // A leader of our term exists (the message term equals ours): follow it.
      case 'app':
        this.becomeFollower(m.term, m.from);
        this.#handleAppendEntries(m);
        return;
      case 'heartbeat':
        this.becomeFollower(m.term, m.from);
        this.#handleHeartbeat(m);
        return;
      case 'snap':
        this.becomeFollower(m.term, m.from);
        this.#handleSnapshot(m);
        return;
      case myResponse: {
        const result = this.#poll(m.from, !m.reject);
        if (result === 'won') {
          if (this.role === 'pre-candidate') {
            this.#campaign('election');
          } else {
            this.#becomeLeader();
            this.#bcastAppend();
          }
        } else if (result === 'lost') {
          // A rejected pre-vote carries a later term; keep ours (it was adopted in step() if higher).
          this.becomeFollower(this.term, null);
        }
        return;
      }
      default:
        return;
    }
  }

  #stepFollower(m: Message): void {
    switch (m.type) {
      case 'prop':
        if (this.lead === null) {
          this.#drop(m, 'NOT_LEADER', `no leader at term ${this.term}`);
          return;
        }
        this.#send(newMessage('prop', this.lead, { from: m.from, entries: m.entries }));
        return;
      case 'app':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.#handleAppendEntries(m);
        return;
      case 'heartbeat':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.#handleHeartbeat(m);
        return;
      case 'snap':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.#handleSnapshot(m);
        return;
      case 'transfer-leader':
        // Advisory: without a leader there is nothing to transfer.
        if (this.lead !== null) this.#send(newMessage('transfer-leader', this.lead, { from: m.from }));
        return;
      case 'timeout-now':
        // The leader hands over: campaign at once, without pre-vote (no partition to guard against).
        this.#hup('transfer');
        return;
      case 'read-index':
        if (this.lead === null) {
          this.#drop(m, 'NOT_LEADER', `no leader at term ${this.term} to confirm a read`);
          return;
        }
        this.#send(newMessage('read-index', this.lead, { from: m.from, ...(m.context ? { context: m.context } : {}) }));
        return;
      case 'read-index-resp':
        this.readStates.push({ index: m.index, context: m.context ?? new Uint8Array(0) });
        return;
      default:
        return;
    }
  }

  /** Refuses a request: a local caller gets the error, a remote sender gets silence. */
  #drop(m: Message, code: ErrorCode, reason: string): void {
    if (m.from === this.id) throw new FabricError(code, reason);
  }

  // ---- the leader -----------------------------------------------------------------------

  #propose(m: Message): void {
    if (!this.tracker.progress.has(this.id)) {
      this.#drop(m, 'PROPOSAL_DROPPED', 'this leader was removed from the configuration');
      return;
    }
    if (this.leadTransferee !== null) {
      this.#drop(m, 'PROPOSAL_DROPPED', `leadership is being transferred to ${this.leadTransferee}`);
      return;
    }
    const accepted: Entry[] = [];
    let confIndex = 0;
    for (const e of m.entries) {
      if (e.type === 'conf-change') {
        const refusal = confIndex > 0 ? 'one configuration change per proposal' : this.#confChangeRefusal(e.data);
        if (refusal !== null) {
          this.#drop(m, 'PROPOSAL_DROPPED', `configuration change refused: ${refusal}`);
          continue; // a forwarded one is left out; the rest of the batch goes on
        }
        confIndex = this.log.lastIndex() + accepted.length + 1;
      }
      accepted.push(e);
    }
    if (accepted.length === 0) return;
    if (confIndex > 0) this.pendingConfIndex = confIndex;
    this.#appendEntries(accepted);
    this.#bcastAppend();
  }

  #confChangeRefusal(data: Uint8Array): string | null {
    let cc: ConfChange;
    try {
      cc = decodeConfChange(data);
    } catch {
      return 'not an encoded ConfChange';
    }
    if (this.pendingConfIndex > this.log.applied) {
      return `the change at index ${this.pendingConfIndex} is not applied yet (applied ${this.log.applied})`;
    }
    if (!this.#committedEntryInCurrentTerm()) return `the leader has not committed an entry of term ${this.term} yet`;
    return this.tracker.refusal(cc);
  }

  /** Appends entries at this leader's term; the leader's own log counts towards the quorum. */
  #appendEntries(entries: readonly Entry[]): void {
    const last = this.log.lastIndex();
    const stamped = entries.map((e, i): Entry => ({ term: this.term, index: last + 1 + i, type: e.type, data: e.data }));
    const newLast = this.log.append(stamped);
    this.tracker.progress.get(this.id)?.maybeUpdate(newLast);
    this.#maybeCommit();
  }

  /**
   * Advances the commit index to what a quorum holds, but only by counting replicas of an
   * entry of the current term (figure 8 of the Raft paper); older entries commit with it.
   */
  #maybeCommit(): boolean {
    if (!this.log.maybeCommit(this.tracker.committed(), this.term)) return false;
    this.#releasePendingReadIndex();
    return true;
  }

  #committedEntryInCurrentTerm(): boolean {
    return this.log.term(this.log.committed) === this.term;
  }

  #sendAppend(to: NodeId): void {
    this.#maybeSendAppend(to, true);
  }

  /**
   * Sends `to` the entries it lacks (up to maxSizePerMsg), or a snapshot when they are
   * compacted away. With `sendIfEmpty` false, nothing goes out when there are no entries.
   */
  #maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.tracker.progress.get(to);
    if (pr === undefined || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined) return this.#maybeSendSnapshot(to, pr);
    let entries: Entry[] = [];
    // A full pipeline sends only empty appends: if every append in flight was lost, an empty
    // one still gets an answer that clears the window.
    if (pr.state !== 'replicate' || !pr.inflights.full()) {
      const fetched = this.log.entriesFrom(pr.next, this.maxMsgSize);
      if (fetched === undefined) return this.#maybeSendSnapshot(to, pr);
      entries = fetched;
    }
    if (entries.length === 0 && !sendIfEmpty) return false;
    const commit = this.log.committed;
    this.#send(newMessage('app', to, { index: prevIndex, logTerm: prevTerm, entries, commit }));
    pr.sentEntries(entries.length, prevIndex + entries.length);
    pr.sentCommit = commit;
    return true;
  }

  #maybeSendSnapshot(to: NodeId, pr: Progress): boolean {
    // A snapshot is expensive: only for a peer that has answered lately.
    if (!pr.recentActive) return false;
    const snapshot = this.log.snapshot();
    pr.becomeSnapshot(snapshot.metadata.index);
    this.#send(newMessage('snap', to, { snapshot }));
    return true;
  }

  #sendHeartbeat(to: NodeId, context: Uint8Array | undefined): void {
    const pr = this.tracker.progress.get(to);
    if (pr === undefined) return;
    // Never tell a peer a commit index beyond what it is known to hold.
    const commit = Math.min(pr.match, this.log.committed);
    this.#send(newMessage('heartbeat', to, { commit, ...(context ? { context } : {}) }));
    pr.sentCommit = commit;
  }

  #bcastAppend(): void {
    for (const id of this.tracker.sortedIds()) if (id !== this.id) this.#sendAppend(id);
  }

  /**
   * Heartbeats to voters, learners or both. Learners never get a read's context: only voters'
   * acks count toward a read's quorum (#isQuorum), so a read-index round skips them.
   */
  #bcastHeartbeat(to: { voters: boolean; learners: boolean }, context = this.#readOnly.lastPendingContext()): void {
    for (const id of this.tracker.sortedIds()) {
      if (id === this.id) continue;
      const learner = this.tracker.progress.get(id)?.isLearner === true;
      if (learner ? to.learners : to.voters) this.#sendHeartbeat(id, learner ? undefined : context);
    }
  }

  #handleAppendResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (m.reject) {
      // Fast back-off: the follower's hint (its term at rejectHint) rules out every index where
      // our term is higher; probe at the last index where ours is not.
      const nextProbe = m.logTerm > 0 ? this.log.findConflictByTerm(m.rejectHint, m.logTerm).index : m.rejectHint;
      if (pr.maybeDecrTo(m.index, nextProbe)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.#sendAppend(m.from);
      }
      return;
    }
    // An ack that matches what we know still moves a probing peer to replicate.
    if (!pr.maybeUpdate(m.index) && !(pr.match === m.index && pr.state === 'probe')) return;
    if (pr.state === 'probe') {
      pr.becomeReplicate();
    } else if (pr.state === 'snapshot' && pr.match + 1 >= this.log.firstIndex()) {
      // Caught up by the snapshot (or otherwise): the log can take it from here.
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') {
      pr.inflights.freeLE(m.index);
    }

    if (this.#maybeCommit()) {
      this.#bcastAppend();
    } else if (pr.canBumpCommit(this.log.committed)) {
      // It may not know the latest commit index yet; no need to wait for a heartbeat.
      this.#sendAppend(m.from);
    }
    // The window may have opened for several appends at once.
    while (this.#maybeSendAppend(m.from, false)) {
      // keep sending
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) this.#sendTimeoutNow(m.from);
  }

  #handleHeartbeatResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    pr.msgAppFlowPaused = false;
    if (pr.state === 'snapshot' && pr.snapshotElapsed >= SNAPSHOT_RETRY_ELECTIONS * this.electionTimeout) {
      // The peer is alive but the snapshot got no answer: take it as lost and probe again.
      pr.pendingSnapshot = 0;
      pr.becomeProbe();
    }
    // Also the retry for a probe or a full window whose appends were lost.
    if (pr.match < this.log.lastIndex() || pr.state === 'probe') this.#sendAppend(m.from);

    if (m.context === undefined || m.context.length === 0) return;
    const acks = this.#readOnly.recvAck(m.from, m.context);
    if (acks === undefined || !this.#isQuorum(acks)) return;
    for (const read of this.#readOnly.advance(m.context)) this.#respondToReadIndex(read.request, read.index);
  }

  #isQuorum(ids: ReadonlySet<NodeId>): boolean {
    let n = 0;
    for (const id of this.tracker.voters) if (ids.has(id)) n++;
    return n >= this.tracker.quorum();
  }

  #handleTransferLeader(transferee: NodeId, pr: Progress): void {
    if (pr.isLearner) return;
    if (this.leadTransferee !== null) {
      if (this.leadTransferee === transferee) return; // already under way
      this.#abortLeaderTransfer();
    }
    if (transferee === this.id) return;
    // The transfer has one election timeout to finish (tickHeartbeat aborts it after that).
    this.electionElapsed = 0;
    this.leadTransferee = transferee;
    if (pr.match === this.log.lastIndex()) this.#sendTimeoutNow(transferee);
    else this.#sendAppend(transferee); // catch it up first; the ack sends timeout-now
  }

  #sendTimeoutNow(to: NodeId): void {
    this.#send(newMessage('timeout-now', to));
  }

  #abortLeaderTransfer(): void {
    this.leadTransferee = null;
  }

  #leaderReadIndex(m: Message): void {
    if (m.context === undefined || m.context.length === 0) {
      this.#drop(m, 'BAD_INPUT', 'a read index needs a non-empty context');
      return;
    }
    if (this.tracker.isSingleton() && this.tracker.voters.has(this.id)) {
      this.#respondToReadIndex(m, this.log.committed);
      return;
    }
    // Until it commits an entry of its term, a new leader does not know the commit index.
    if (!this.#committedEntryInCurrentTerm()) {
      this.#pendingReadIndex.push(m);
      return;
    }
    this.#confirmReadIndex(m);
  }

  #confirmReadIndex(m: Message): void {
    this.#readOnly.add(this.log.committed, m);
    this.#readOnly.recvAck(this.id, m.context);
    this.#bcastHeartbeat({ voters: true, learners: false }, m.context);
  }

  #releasePendingReadIndex(): void {
    if (this.#pendingReadIndex.length === 0 || !this.#committedEntryInCurrentTerm()) return;
    const reads = this.#pendingReadIndex;
    this.#pendingReadIndex = [];
    for (const m of reads) this.#confirmReadIndex(m);
  }

  #respondToReadIndex(request: Message, index: number): void {
    const context = request.context ?? new Uint8Array(0);
    if (request.from === this.id) this.readStates.push({ index, context });
    else this.#send(newMessage('read-index-resp', request.from, { index, context }));
  }

  // ---- the follower ---------------------------------------------------------------------

  #handleAppendEntries(m: Message): void {
    if (m.index < this.log.committed) {
      // Everything up to our commit index is settled; tell the leader where we are.
      this.#send(newMessage('app-resp', m.from, { index: this.log.committed }));
      return;
    }
    const lastNew = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew !== undefined) {
      this.#send(newMessage('app-resp', m.from, { index: lastNew }));
      return;
    }
    // No match at m.index. Hint the largest (index, term) that may match: the last entry at or
    // below m.index whose term is at most the leader's term there; our entries of higher terms
    // above it cannot match and the leader skips them in one step.
    const hint = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm);
    this.#send(newMessage('app-resp', m.from, { index: m.index, reject: true, rejectHint: hint.index, logTerm: hint.term }));
  }

  #handleHeartbeat(m: Message): void {
    this.log.commitTo(m.commit);
    this.#send(newMessage('heartbeat-resp', m.from, m.context ? { context: m.context } : {}));
  }

  #handleSnapshot(m: Message): void {
    const snapshot = m.snapshot;
    if (snapshot !== undefined && this.#restore(snapshot)) {
      this.#send(newMessage('app-resp', m.from, { index: this.log.lastIndex() }));
    } else {
      this.#send(newMessage('app-resp', m.from, { index: this.log.committed }));
    }
  }

  /** Installs a leader's snapshot; false when it is stale or our log already holds its index. */
  #restore(s: Snapshot): boolean {
    if (s.metadata.index <= this.log.committed) return false;
    if (this.role !== 'follower') {
      // Cannot happen (a leader never receives a snapshot of its own term); stay safe if it does.
      this.becomeFollower(this.term + 1, null);
      return false;
    }
    // Unlike etcd, a snapshot whose configuration lacks this node is installed too: a learner
    // just added may be sent a snapshot taken before its addition, and the entries after the
    // snapshot bring the configuration that includes it. A node outside its configuration never
    // campaigns, so nothing here needs it to be a member.
    const cs = s.metadata.confState;
    if (this.log.matchTerm(s.metadata.index, s.metadata.term)) {
      // Our log has the snapshot's last entry, so everything before it too: just commit.
      this.log.commitTo(s.metadata.index);
      return false;
    }
    this.log.restore(s);
    this.tracker = ProgressTracker.fromConfState(cs, this.maxInflight, this.log.lastIndex());
    this.#switchToConfig();
    return true;
  }

  // ---- roles ----------------------------------------------------------------------------

  becomeFollower(term: number, lead: NodeId | null): void {
    this.#step = this.#stepFollower;
    this.#reset(term);
    this.#tick = this.#tickElection;
    this.lead = lead;
    this.role = 'follower';
  }

  #becomeCandidate(): void {
    assert(this.role !== 'leader', 'a leader does not become a candidate');
    this.#step = this.#stepCandidate;
    this.#reset(this.term + 1);
    this.#tick = this.#tickElection;
    this.vote = this.id;
    this.role = 'candidate';
  }

  /** Like a candidate, but without touching term or vote: a failed pre-vote leaves no trace. */
  #becomePreCandidate(): void {
    assert(this.role !== 'leader', 'a leader does not become a pre-candidate');
    this.#step = this.#stepCandidate;
    this.tracker.resetVotes();
    this.#tick = this.#tickElection;
    this.lead = null;
    this.role = 'pre-candidate';
  }

  #becomeLeader(): void {
    assert(this.role !== 'follower', 'a follower does not become leader without an election');
    this.#step = this.#stepLeader;
    this.#reset(this.term);
    this.#tick = this.#tickHeartbeat;
    this.lead = this.id;
    this.role = 'leader';
    const self = this.tracker.progress.get(this.id);
    if (self !== undefined) {
      self.becomeReplicate();
      self.recentActive = true;
    }
    // Whether or not a conf change is among the uncommitted entries, wait for all of them.
    this.pendingConfIndex = this.log.lastIndex();
    // An entry of the new term: committing it commits everything before it (figure 8).
    this.#appendEntries([{ term: 0, index: 0, type: 'normal', data: new Uint8Array(0) }]);
  }

  #reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = null;
    }
    this.lead = null;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.learnerHeartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.electionTimeout + this.#randomInt(this.electionTimeout);
    this.#abortLeaderTransfer();
    this.tracker.resetVotes();
    const last = this.log.lastIndex();
    for (const [id, old] of this.tracker.progress) {
      const pr = new Progress(last + 1, this.maxInflight, old.isLearner);
      if (id === this.id) pr.match = last;
      this.tracker.progress.set(id, pr);
    }
    this.pendingConfIndex = 0;
    this.#readOnly = new ReadOnly();
    this.#pendingReadIndex = [];
  }

  #tickElection(): void {
    this.electionElapsed++;
    if (this.#promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.#hup(this.preVote ? 'pre-election' : 'election');
    }
  }

  #tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.learnerHeartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTimeout) {
      this.electionElapsed = 0;
      if (this.checkQuorum) this.#checkQuorum();
      // A transfer that did not finish within an election timeout is given up.
      if (this.role === 'leader' && this.leadTransferee !== null) this.#abortLeaderTransfer();
    }
    if (this.role !== 'leader') return;
    for (const pr of this.tracker.progress.values()) if (pr.state === 'snapshot') pr.snapshotElapsed++;
    // Learners only need a fresh commit index on an idle log (appends carry it otherwise) and
    // to know the leader, so they may be heartbeaten less often than voters.
    const voters = this.heartbeatElapsed >= this.heartbeatTimeout;
    const learners = this.learnerHeartbeatElapsed >= this.learnerHeartbeatTimeout;
    if (voters) this.heartbeatElapsed = 0;
    if (learners) this.learnerHeartbeatElapsed = 0;
    if (voters || learners) this.#bcastHeartbeat({ voters, learners });
  }

  /** A leader that has not heard from a quorum for an election timeout steps down. */
  #checkQuorum(): void {
    if (!this.tracker.quorumActive()) {
      this.becomeFollower(this.term, null);
      return;
    }
    for (const [id, pr] of this.tracker.progress) if (id !== this.id) pr.recentActive = false;
  }

  /**
   * A follower that knows its leader is gone (every connection to it closed) stops honouring the
   * leader's check-quorum lease, so that it grants votes at once; its own election timer runs on
   * as before, so it does not campaign early itself (etcd's MsgForgetLeader). Safe: reads are
   * never served on a lease here, and a leader that is alive keeps the followers that hear it.
   */
  forgetLeader(): void {
    if (this.role === 'follower') this.lead = null;
  }

  /** Starts an election if this node may: a voter, no snapshot pending, no conf change unapplied. */
  campaign(): void {
    this.#hup(this.preVote ? 'pre-election' : 'election');
  }

  #hup(t: CampaignType): void {
    if (this.role === 'leader') return;
    if (!this.#promotable()) return;
    // The configuration we would campaign in may be about to change.
    if (this.#hasUnappliedConfChanges()) return;
    this.#campaign(t);
  }

  #campaign(t: CampaignType): void {
    let term: number;
    let type: 'vote' | 'pre-vote';
    if (t === 'pre-election') {
      this.#becomePreCandidate();
      type = 'pre-vote';
      term = this.term + 1; // the term we would campaign at
    } else {
      this.#becomeCandidate();
      type = 'vote';
      term = this.term;
    }
    if (this.#poll(this.id, true) === 'won') {
      // The only voter: no one to ask.
      if (t === 'pre-election') this.#campaign('election');
      else this.#becomeLeader();
      return;
    }
    const index = this.log.lastIndex();
    const logTerm = this.log.lastTerm();
    for (const id of this.tracker.sortedVoters()) {
      if (id === this.id) continue;
      this.#send(newMessage(type, id, { term, index, logTerm, ...(t === 'transfer' ? { context: TRANSFER_CONTEXT } : {}) }));
    }
  }

  #poll(from: NodeId, granted: boolean): 'won' | 'lost' | 'pending' {
    this.tracker.recordVote(from, granted);
    return this.tracker.tallyVotes().result;
  }

  #promotable(): boolean {
    const pr = this.tracker.progress.get(this.id);
    return pr !== undefined && !pr.isLearner && !this.log.hasNextOrInProgressSnapshot();
  }

  #hasUnappliedConfChanges(): boolean {
    if (this.log.applied >= this.log.committed) return false;
    const lo = Math.max(this.log.applied + 1, this.log.firstIndex());
    return this.log.slice(lo, this.log.committed + 1).some((e) => e.type === 'conf-change');
  }

  #send(m: Message): void {
    m.from ||= this.id;
    if (m.type === 'vote' || m.type === 'vote-resp' || m.type === 'pre-vote' || m.type === 'pre-vote-resp') {
      assert(m.term !== 0, `${m.type} must carry a term`);
    } else if (m.type !== 'prop' && m.type !== 'read-index') {
      // Proposals and reads forwarded to the leader are requests outside any term.
      m.term = this.term;
    }
    this.msgs.push(m);
  }

  /**
   * Loads the persisted hard state (a restart), made consistent with the log stored beside it.
   * The repairs are derived from the storage alone, the same at every load, so they need not be
   * persisted; the next hard state the node persists carries them.
   */
  #loadState(hs: HardState, snapshotIndex: number): void {
    const lastIndex = this.log.lastIndex();
    // Commit index. Below the snapshot: a snapshot only ever holds committed state (ours is of
    // applied entries, a leader's of its applied ones), so its index is committed even when a
    // crash kept the snapshot but lost the hard state written after it (a storage whose writes
    // are not atomic per Ready can do that). Everything compacted away was committed too.
    const commit = Math.max(hs.commit, snapshotIndex, this.log.committed);
    // Beyond the last index: the hard state is persisted with (or after) the entries it covers,
    // in write order, and a crash keeps a prefix of the writes; a torn tail loses the hard state
    // with the entries. Entries below the commit index are never overwritten (conflicts lie above
    // it), and a snapshot install sets commit = its index. So entries this node once stored and
    // counted as committed are gone: the storage is corrupt (or its driver wrote the hard state
    // first). Clamping would hide it, and this node may have acknowledged those entries towards
    // a quorum: continuing could make a committed entry disappear. Refuse to start.
    if (commit > lastIndex) {
      throw new FabricError(
        'CORRUPT_STORAGE',
        `stored commit index ${hs.commit} is beyond the log's last index ${lastIndex}: committed entries are missing from storage; ` +
          'refusing to start (restore the data dir from a healthy peer, or remove this node from the group and let it rejoin empty)',
        { details: { commit: hs.commit, lastIndex, snapshotIndex } },
      );
    }
    this.log.committed = commit;
    // Term. It must be at least the term of the last entry (or snapshot): a crash between the
    // write of a new leader's entries (or snapshot) and the write of the hard state of that term
    // leaves it lower, and a node at term t < lastLogTerm T could campaign at a term below
    // entries it holds. Repairing is safe: term T exists (a leader of T sent those entries), so
    // adopting it is what receiving any message of T does. The vote is cleared because it was
    // cast, if at all, in the older term: a vote in T (or in any term above the stored one) is
    // sent only after a hard state of that term is durable, and durable writes survive a crash,
    // so the stored term would be at least T. No vote of this node in T exists anywhere.
    // (Refusing to start instead would turn a plain crash into a dead node.)
    const lastTerm = this.log.lastTerm();
    if (hs.term >= lastTerm) {
      this.term = hs.term;
      this.vote = hs.vote;
    } else {
      this.term = lastTerm;
      this.vote = null;
    }
  }

  // ---- configuration, driver feedback ---------------------------------------------------

  /** Applies a committed conf change to the tracked configuration; returns the new one. */
  applyConfChange(cc: ConfChange): ConfState {
    this.tracker.apply(cc, this.log.lastIndex());
    return this.#switchToConfig();
  }

  #switchToConfig(): ConfState {
    const cs = this.tracker.confState();
    const self = this.tracker.progress.get(this.id);
    this.isLearner = self?.isLearner ?? false;
    if ((self === undefined || this.isLearner) && this.role === 'leader') {
      // Removed (or demoted) by a change it committed itself: a leader must be a voter.
      this.becomeFollower(this.term, null);
      return cs;
    }
    if (this.role !== 'leader' || cs.voters.length === 0) return cs;
    // A smaller quorum may commit more; new members should not wait for the next heartbeat.
    if (this.#maybeCommit()) {
      this.#bcastAppend();
    } else {
      for (const id of this.tracker.sortedIds()) if (id !== this.id) this.#maybeSendAppend(id, false);
    }
    if (this.leadTransferee !== null && !this.tracker.voters.has(this.leadTransferee)) this.#abortLeaderTransfer();
    return cs;
  }

  /** The driver could not reach `id`: appends in flight are probably lost, go back to probing. */
  reportUnreachable(id: NodeId): void {
    if (this.role !== 'leader') return;
    const pr = this.tracker.progress.get(id);
    if (pr !== undefined && pr.state === 'replicate') pr.becomeProbe();
  }

  /** The driver's news about a snapshot sent to `id`. */
  reportSnapshot(id: NodeId, ok: boolean): void {
    if (this.role !== 'leader') return;
    const pr = this.tracker.progress.get(id);
    if (pr === undefined || pr.state !== 'snapshot') return;
    // On failure, forget the snapshot or the probe would start above what the peer holds.
    if (!ok) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    // Wait for the peer's answer (success) or a heartbeat round (failure) before the next append.
    pr.msgAppFlowPaused = true;
  }

  appliedTo(index: number): void {
    this.log.appliedTo(index);
  }

  /** A snapshot handed out in a Ready is durable and is the state machine's state now. */
  appliedSnapshot(snap: Snapshot): void {
    this.log.unstable.stableSnapTo(snap.metadata.index);
    this.log.appliedTo(snap.metadata.index);
  }
}
