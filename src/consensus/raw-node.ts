/**
 * RawNode: the Raft core's interface to its driver, after etcd's rawnode.go.
 *
 * The driver loop (src/node, test/sim, the scripted tests):
 *
 *   node.tick()                              every tick of its clock
 *   node.step(msg)                           every message from the network
 *   if (node.hasReady()) {
 *     const rd = node.ready();
 *     persist rd.snapshot, rd.entries, rd.hardState (fsync)
 *     send rd.messages
 *     apply rd.snapshot, then rd.committedEntries (conf changes via applyConfChange)
 *     serve reads in rd.readStates once applied >= their index
 *     node.advance(rd);
 *   }
 *
 * Starting: a new group's founders start from a storage holding `bootstrapLog(conf)` (committed
 * conf-change entries 1..n at term 1: MemoryStorage({ bootstrap }), DiskRaftStore.open with
 * `confState`); their first Ready hands those entries out to apply like any committed conf
 * change, and only then may a founder campaign. A node that joins later starts from an empty
 * storage and learns the configuration from the log (or snapshot) its leader sends. On restart,
 * the hard state is checked against the log (see Raft#loadState): a term below the last entry's
 * is raised, a commit index below the snapshot's is raised, one beyond the log is CORRUPT_STORAGE.
 *
 * Errors: propose/proposeConfChange/readIndex throw FabricError NOT_LEADER when no leader is
 * known to take the request, PROPOSAL_DROPPED when the leader refuses it (leadership transfer
 * under way, a conf change still pending, ...). A proposal that was accepted can still be lost
 * with a leader change; callers wait for it to be applied and retry with an idempotency key.
 */
import { FabricError } from '../core/index.ts';
import { encodeConfChange } from './conf-change.ts';
import type { ProgressState } from './progress.ts';
import { Raft, newMessage } from './raft.ts';
import type { ConfChange, ConfState, Entry, HardState, Message, NodeId, RaftConfig, Ready, Role, SoftState } from './types.ts';

export { decodeConfChange, encodeConfChange } from './conf-change.ts';

/** A peer as the leader sees it (what `fabric raft peers` shows). */
export interface PeerStatus {
  id: NodeId;
  learner: boolean;
  match: number;
  next: number;
  state: ProgressState;
  /** Heard from within the current check-quorum round. */
  recentActive: boolean;
  /** In `snapshot` state: the index of the snapshot sent. */
  pendingSnapshot: number;
  /** Appends sent and not yet acknowledged. */
  inflight: number;
}

export interface RaftStatus {
  id: NodeId;
  term: number;
  vote: NodeId | null;
  lead: NodeId | null;
  role: Role;
  commit: number;
  applied: number;
  lastIndex: number;
  config: ConfState;
  /** The peer leadership is being transferred to, if a transfer is under way. */
  leadTransferee: NodeId | null;
  /** Every member's progress, on the leader only (empty elsewhere), in id order. */
  progress: PeerStatus[];
}

export class RawNode {
  readonly #raft: Raft;
  #prevSoft: SoftState;
  #prevHard: HardState;

  constructor(config: RaftConfig) {
    validateConfig(config);
    this.#raft = new Raft(config);
    this.#prevSoft = this.#raft.softState();
    this.#prevHard = this.#raft.hardState();
  }

  get id(): NodeId {
    return this.#raft.id;
  }

  /** One tick of the logical clock: elections and heartbeats are counted in ticks. */
  tick(): void {
    this.#raft.tick();
  }

  /** A follower forgets its leader: it grants votes now, without campaigning early itself. */
  forgetLeader(): void {
    this.#raft.forgetLeader();
  }

  /** Starts an election now (through pre-vote when enabled); a no-op where it may not. */
  campaign(): void {
    this.#raft.campaign();
  }

  /** Proposes a command. Empty data is refused: an empty entry is a new leader's no-op. */
  propose(data: Uint8Array): void {
    if (data.byteLength === 0) throw new FabricError('BAD_INPUT', 'a proposal needs non-empty data');
    this.#request('prop', { entries: [newEntry('normal', data)] });
  }

  proposeConfChange(cc: ConfChange): void {
    this.#request('prop', { entries: [newEntry('conf-change', encodeConfChange(cc))] });
  }

  /**
   * Asks for a linearizable read. When leadership is confirmed, a ReadState with this context
   * and the index to wait for shows up in a Ready. Contexts must be unique among pending reads.
   */
  readIndex(context: Uint8Array): void {
    if (context.length === 0) throw new FabricError('BAD_INPUT', 'a read index needs a non-empty context');
    this.#request('read-index', { context });
  }

  /**
   * Hands leadership to `to` (a voter): the leader catches it up, then tells it to campaign.
   * On a follower the request is passed to the leader; without a leader it is a no-op.
   */
  transferLeadership(to: NodeId): void {
    this.#raft.step(newMessage('transfer-leader', this.id, { from: to }));
  }

  /** A message from the network. Messages for another node, or posing as this one, are ignored. */
  step(m: Message): void {
    if (m.to !== this.id || m.from === this.id || m.from === '') return;
    // Only forwarded requests travel without a term.
    if (m.term === 0 && m.type !== 'prop' && m.type !== 'read-index') return;
    this.#raft.step(m);
  }

  hasReady(): boolean {
    const r = this.#raft;
    if (!sameSoftState(r.softState(), this.#prevSoft)) return true;
    if (!sameHardState(r.hardState(), this.#prevHard)) return true;
    if (r.msgs.length > 0 || r.readStates.length > 0) return true;
    if (r.log.unstable.nextSnapshot() !== undefined) return true;
    if (r.log.unstable.nextEntries().length > 0) return true;
    return r.log.hasNextCommittedEntries();
  }

  /** What the driver must persist, send and apply now. Follow with `advance(rd)` once done. */
  ready(): Ready {
    const r = this.#raft;
    const rd: Ready = {
      entries: r.log.unstable.nextEntries(),
      committedEntries: r.log.nextCommittedEntries(),
      messages: r.msgs,
      readStates: r.readStates,
    };
    const soft = r.softState();
    if (!sameSoftState(soft, this.#prevSoft)) {
      rd.softState = soft;
      this.#prevSoft = soft;
    }
    const hard = r.hardState();
    if (!sameHardState(hard, this.#prevHard)) {
      rd.hardState = hard;
      this.#prevHard = hard;
    }
    const snapshot = r.log.unstable.nextSnapshot();
    if (snapshot !== undefined) rd.snapshot = snapshot;

    r.msgs = [];
    r.readStates = [];
    r.log.unstable.acceptInProgress();
    const lastCommitted = rd.committedEntries[rd.committedEntries.length - 1];
    if (lastCommitted !== undefined) r.log.acceptApplying(lastCommitted.index);
    return rd;
  }

  /** The Ready `rd` is persisted, its messages sent and its committed entries applied. */
  advance(rd: Ready): void {
    const r = this.#raft;
    const lastEntry = rd.entries[rd.entries.length - 1];
    if (lastEntry !== undefined) r.log.unstable.stableTo(lastEntry.index, lastEntry.term);
    if (rd.snapshot !== undefined) r.appliedSnapshot(rd.snapshot);
    const lastCommitted = rd.committedEntries[rd.committedEntries.length - 1];
    if (lastCommitted !== undefined) r.appliedTo(lastCommitted.index);
  }

  /** Applies a committed conf-change entry's change; returns the configuration now in force. */
  applyConfChange(cc: ConfChange): ConfState {
    return this.#raft.applyConfChange(cc);
  }

  /** The driver failed to send to `id` (connection lost): go back to probing it. */
  reportUnreachable(id: NodeId): void {
    this.#raft.reportUnreachable(id);
  }

  /** The driver finished (ok) or gave up (failed) sending a snapshot to `id`. */
  reportSnapshot(id: NodeId, ok: boolean): void {
    this.#raft.reportSnapshot(id, ok);
  }

  status(): RaftStatus {
    const r = this.#raft;
    const progress: PeerStatus[] = [];
    if (r.role === 'leader') {
      for (const id of r.tracker.sortedIds()) {
        const pr = r.tracker.progress.get(id)!;
        progress.push({
          id,
          learner: pr.isLearner,
          match: pr.match,
          next: pr.next,
          state: pr.state,
          recentActive: pr.recentActive,
          pendingSnapshot: pr.pendingSnapshot,
          inflight: pr.inflights.count,
        });
      }
    }
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      lead: r.lead,
      role: r.role,
      commit: r.log.committed,
      applied: r.log.applied,
      lastIndex: r.log.lastIndex(),
      config: r.tracker.confState(),
      leadTransferee: r.leadTransferee,
      progress,
    };
  }

  #request(type: 'prop' | 'read-index', fields: Partial<Message>): void {
    this.#raft.step(newMessage(type, this.id, { ...fields, from: this.id }));
  }
}

function newEntry(type: Entry['type'], data: Uint8Array): Entry {
  return { term: 0, index: 0, type, data };
}

function sameSoftState(a: SoftState, b: SoftState): boolean {
  return a.leader === b.leader && a.role === b.role;
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

function validateConfig(c: RaftConfig): void {
  const bad = (what: string): never => {
    throw new FabricError('BAD_INPUT', `raft config: ${what}`);
  };
  if (typeof c.id !== 'string' || c.id.length === 0) bad('id must be a non-empty string');
  if (!Number.isInteger(c.heartbeatTick) || c.heartbeatTick < 1) bad('heartbeatTick must be a positive integer');
  if (!Number.isInteger(c.electionTick) || c.electionTick <= c.heartbeatTick) bad('electionTick must be an integer above heartbeatTick');
  if (c.learnerHeartbeatTick !== undefined && (!Number.isInteger(c.learnerHeartbeatTick) || c.learnerHeartbeatTick < c.heartbeatTick)) {
    bad('learnerHeartbeatTick must be an integer >= heartbeatTick');
  }
  if (!Number.isInteger(c.maxInflightMsgs) || c.maxInflightMsgs < 1) bad('maxInflightMsgs must be a positive integer');
  if (!(c.maxSizePerMsg >= 0)) bad('maxSizePerMsg must be >= 0');
  if (!Number.isInteger(c.applied) || c.applied < 0) bad('applied must be an integer >= 0');
}
