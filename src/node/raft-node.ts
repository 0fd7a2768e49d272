/**
 * RaftNode: the driver that runs the pure Raft core (`RawNode`) against the real world: a
 * durable log (`DiskRaftStore`), the libp2p transport (`RaftTransport`), a timer, and the
 * replicated state machine.
 *
 * ## The loop
 * Everything that touches the core (ticks, messages from peers, local requests, transport
 * feedback) is a closure in an inbox. One loop drains the inbox into the core, then handles the
 * core's Ready:
 *
 *   persist snapshot, entries, hard state → ONE `await store.sync()` → send the Ready's messages
 *   → install the snapshot / apply committed entries (conf changes into the core) → answer
 *   proposals and reads → `advance()` → snapshot + compact now and then
 *
 * While a Ready is being synced nothing is stepped (inputs wait in the inbox, like the
 * simulation's driver, test/sim/driver.ts); everything that arrived meanwhile is stepped at
 * once afterwards, which batches proposals into one append and one fsync (group commit).
 *
 * ## Timing (defaults)
 * tickMs 25, heartbeatTick 1, electionTick 6: heartbeats every 25 ms and an election timeout
 * randomized in [150, 300) ms, the Raft paper's range. Without help, a follower notices a dead
 * leader after its timeout (the first of two: ~200 ms on average), then pre-vote, vote and the
 * new leader's first commit take a few round trips and three fsyncs. When the leader's process
 * dies its connections close, and a follower that sees it ends the check-quorum lease at once
 * (see #onPeerDisconnect) and the first remaining voter by id campaigns at once, while the others
 * only grant votes, so that two survivors do not split the vote: kill → new leader committed in
 * ~50–100 ms on loopback (bench/raft.ts). Shorter timeouts would risk needless elections when the event loop of a busy
 * 2-core machine stalls (GC, a large snapshot): a leader is deposed only after 150 ms without a
 * heartbeat, i.e. six missed ones. Learners (every other healthy peer) get heartbeats only every
 * learnerHeartbeatTick 20 (500 ms): they never vote, and at 64 members the voters' rate would
 * cost the leader ~2,500 heartbeats a second plus as many answers; appends still reach them at once.
 *
 * ## Proposals
 * A proposal's entry data is an envelope `[version 1][16-byte proposal id][command]`. Only the
 * leader takes proposals (others reject with NOT_LEADER and the leader they know, so the caller
 * forwards). The proposal resolves when the entry at the index it was appended at is APPLIED
 * here, and only if that entry carries its id; if another entry is applied at that index the
 * proposal was lost in a leader change and rejects with PROPOSAL_DROPPED (retry with an
 * idempotency key). Conf changes are matched by (index, term) instead: by Raft's log matching,
 * the entry of term T at index i is the one the leader of T appended there.
 */
import { randomBytes, randomInt as cryptoRandomInt } from 'node:crypto';
import type { Libp2p } from '@libp2p/interface';
import { FabricError, errorMessage, type Clock, type Logger, type Timer } from '../core/index.ts';
import { RawNode, decodeConfChange, type RaftStatus } from '../consensus/index.ts';
import type { ConfChange, ConfState, Entry, Message, MessageType, NodeId, Ready, Role } from '../consensus/types.ts';
import { DiskRaftStore } from './raft-store.ts';
import { RaftTransport, RateLimitedWarnings } from './raft-transport.ts';
import { systemClock } from './system.ts';

/** The replicated state machine. `apply` must be deterministic: every node applies the same entries. */
export interface StateMachine {
  /** Applies a committed command; the result goes back to the proposer (on the proposing node). */
  apply(index: number, data: Uint8Array): unknown;
  /** The whole state, as of the last applied index. */
  snapshot(): Uint8Array;
  /** Replaces the whole state with a snapshot's. */
  restore(data: Uint8Array): void;
}

export interface RaftNodeOptions {
  host: Libp2p;
  /** The raft store's directory (created when missing). */
  dir: string;
  stateMachine: StateMachine;
  log: Logger;
  /**
   * For a brand-new directory only: start a new group with these voters (normally just this
   * node). Without it a new node is an empty member that waits for a leader to add it.
   */
  bootstrap?: { voters: NodeId[] };
  tickMs?: number;
  electionTick?: number;
  heartbeatTick?: number;
  /** Ticks between heartbeats to learners (default 20, at least heartbeatTick). */
  learnerHeartbeatTick?: number;
  /** Take a state-machine snapshot (and compact the log) after this many applied entries. */
  snapshotEvery?: number;
  /**
   * ...and only once the entries applied since the last snapshot add up to this fraction of its
   * size in bytes (default 1; 0: by count alone). A snapshot writes the whole state and stops the
   * event loop while it is serialized (~0.2 s for 40,000 jobs): with a fixed count a large state
   * would be rewritten many times over for little log; tied to the log it costs at most as many
   * bytes as the log itself, and no more log is kept than the state is large (etcd keeps 100,000
   * entries by default for the same reason).
   */
  snapshotLogRatio?: number;
  /** Entries kept in the log behind a snapshot, so a briefly lagging follower needs no snapshot. */
  compactKeep?: number;
  maxSizePerMsg?: number;
  maxInflightMsgs?: number;
  /** Remote messages waiting for the loop beyond which new ones are dropped (Raft tolerates loss). */
  maxInboxMessages?: number;
  clock?: Clock;
}

export interface PeerProgress {
  id: NodeId;
  learner: boolean;
  match: number;
  next: number;
  state: string;
  /** Entries the peer is behind the leader's last index. */
  lag: number;
  recentActive: boolean;
}

export interface RaftNodeStatus {
  id: NodeId;
  leader: NodeId | null;
  term: number;
  role: Role;
  commit: number;
  applied: number;
  lastIndex: number;
  snapshotIndex: number;
  voters: NodeId[];
  learners: NodeId[];
  /** On the leader only: every other member's replication progress. */
  peers: PeerProgress[];
  /**
   * How long ago this node last heard from the leader it knows (0 on the leader itself, null
   * with no leader). A learner never campaigns, so its `leader` can go stale: this says so.
   */
  leaderContactAgeMs: number | null;
}

export interface LeaderChange {
  leader: NodeId | null;
  role: Role;
  term: number;
}

export interface ConfChangeApplied {
  index: number;
  change: ConfChange;
  conf: ConfState;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

interface PendingProposal {
  index: number;
  /** Normal entries: the envelope's proposal id; conf changes: undefined (matched by term). */
  id: Uint8Array | undefined;
  term: number;
  resolve(value: { index: number; result: unknown }): void;
  reject(err: unknown): void;
}

interface PendingRead {
  /** Set once the leader has confirmed the read index. */
  index: number | undefined;
  resolve(value: { index: number }): void;
  reject(err: unknown): void;
}

export const DEFAULT_TICK_MS = 25;
export const DEFAULT_ELECTION_TICK = 6;
/** Heartbeats to learners every 20 ticks (500 ms), not every tick: see Timing above. */
export const DEFAULT_LEARNER_HEARTBEAT_TICK = 20;
const ENVELOPE_VERSION = 1;
const PROPOSAL_ID_BYTES = 16;
/** Stale messages the core still answers (telling a stale leader or pre-candidate our term). */
const ANSWERED_WHEN_STALE: ReadonlySet<MessageType> = new Set(['app', 'heartbeat', 'pre-vote']);

export class RaftNode {
  readonly id: NodeId;
  readonly #opts: RaftNodeOptions;
  readonly #log: Logger;
  readonly #sm: StateMachine;
  readonly #clock: Clock;
  readonly #tickMs: number;
  readonly #electionTick: number;
  readonly #snapshotEvery: number;
  readonly #snapshotLogRatio: number;
  /** Size of the latest snapshot (taken, installed or loaded), and entry bytes applied since. */
  #snapshotBytes = 0;
  #appliedBytesSinceSnapshot = 0;
  readonly #proposalPrefix = randomBytes(8);
  #proposalSeq = 0;
  readonly #compactKeep: number;
  readonly #maxInboxMessages: number;
  readonly #warnings: RateLimitedWarnings;
  #store: DiskRaftStore | undefined;
  #raw: RawNode | undefined;
  #transport: RaftTransport | undefined;
  #tickTimer: Timer | undefined;

  #inbox: Array<() => void> = [];
  #inboxMessages = 0;
  #running = false;
  #loopDone: Promise<void> = Promise.resolve();
  #started = false;
  #stopped = false;

  #applied = 0;
  #snapshotIndex = 0;
  #conf: ConfState = { voters: [], learners: [] };
  #leader: NodeId | null = null;
  /** Local clock time of the last batch received from each peer. */
  readonly #lastHeard = new Map<NodeId, number>();
  readonly #proposals = new Map<number, PendingProposal>();
  readonly #reads = new Map<string, PendingRead>();
  readonly #leaderListeners = new Set<(e: LeaderChange) => void>();
  readonly #confListeners = new Set<(e: ConfChangeApplied) => void>();
  readonly #fatalListeners = new Set<(err: Error) => void>();

  constructor(opts: RaftNodeOptions) {
    this.id = opts.host.peerId.toString();
    this.#opts = opts;
    this.#log = opts.log;
    this.#sm = opts.stateMachine;
    this.#clock = opts.clock ?? systemClock;
    this.#tickMs = opts.tickMs ?? DEFAULT_TICK_MS;
    this.#electionTick = opts.electionTick ?? DEFAULT_ELECTION_TICK;
    this.#snapshotEvery = opts.snapshotEvery ?? 10_000;
    this.#snapshotLogRatio = opts.snapshotLogRatio ?? 1;
    this.#compactKeep = opts.compactKeep ?? 1_000;
    this.#maxInboxMessages = opts.maxInboxMessages ?? 50_000;
    this.#warnings = new RateLimitedWarnings(opts.log, 10_000);
  }

  /** Opens the store (recovering it), restores the state machine from its snapshot, starts ticking and serving. */
  async start(): Promise<void> {
    if (this.#started) throw new FabricError('INTERNAL', 'raft node already started');
    this.#started = true;
    const o = this.#opts;
    const bootstrap = o.bootstrap;
    const store = await DiskRaftStore.open(o.dir, {
      log: this.#log,
      confState: bootstrap === undefined ? { voters: [], learners: [] } : { voters: [...bootstrap.voters], learners: [] },
    });
    this.#store = store;
    const snap = store.snapshot();
    this.#snapshotIndex = snap.metadata.index;
    this.#snapshotBytes = snap.data.byteLength;
    this.#applied = snap.metadata.index;
    this.#conf = snap.metadata.confState;
    if (snap.metadata.index > 0) this.#sm.restore(snap.data);
    this.#raw = new RawNode({
      id: this.id,
      electionTick: this.#electionTick,
      heartbeatTick: o.heartbeatTick ?? 1,
      learnerHeartbeatTick: o.learnerHeartbeatTick ?? Math.max(DEFAULT_LEARNER_HEARTBEAT_TICK, o.heartbeatTick ?? 1),
      storage: store,
      applied: this.#applied,
      randomInt: (n) => cryptoRandomInt(0, n),
      preVote: true,
      checkQuorum: true,
      maxSizePerMsg: o.maxSizePerMsg ?? 1024 * 1024,
      maxInflightMsgs: o.maxInflightMsgs ?? 256,
    });
    this.#transport = new RaftTransport({
      host: o.host,
      self: this.id,
      log: this.#log,
      deliver: (from, msgs) => this.#receive(from, msgs),
      acceptFrom: (peer) => this.#accepts(peer),
      onUnreachable: (peer) => this.#enqueue(() => this.#raw!.reportUnreachable(peer)),
      onSnapshotSent: (peer, ok) => this.#enqueue(() => this.#raw!.reportSnapshot(peer, ok)),
    });
    await this.#transport.start();
    o.host.addEventListener('peer:disconnect', this.#onPeerDisconnect);
    this.#scheduleTick();
    const hs = store.hardState();
    this.#log.info({ id: this.id, term: hs.term, commit: hs.commit, applied: this.#applied, lastIndex: store.lastIndex(), voters: this.#conf.voters }, 'raft node started');
    // Alone in its group: nobody else can lead, so do not wait out an election timeout.
    if (this.#conf.voters.length === 1 && this.#conf.voters[0] === this.id) this.#enqueue(() => this.#raw!.campaign());
    this.#kick();
  }

  /** Stops ticking and serving, rejects what is pending, makes the store durable and closes it. */
  async stop(): Promise<void> {
    if (!this.#started || this.#stopped) return;
    this.#stopped = true;
    this.#tickTimer?.cancel();
    this.#opts.host.removeEventListener('peer:disconnect', this.#onPeerDisconnect);
    this.#inbox = [];
    await this.#loopDone;
    await this.#transport?.stop();
    this.#rejectAll(new FabricError('ABORTED', 'raft node stopped'));
    try {
      await this.#store?.close();
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, 'closing the raft store failed');
    }
  }

  // ---- requests ------------------------------------------------------------------------------

  /**
   * Proposes a command; resolves once it is applied on this node, with the state machine's
   * result. Rejects NOT_LEADER (details.leader: the leader to forward to) on a non-leader,
   * PROPOSAL_DROPPED when the leader refuses it or it was lost in a leader change.
   */
  propose(data: Uint8Array, opts: RequestOptions = {}): Promise<{ index: number; result: unknown }> {
    return this.#request(opts.signal, (resolve, reject) => {
      const raw = this.#raw!;
      this.#requireLeader();
      const id = this.#nextProposalId();
      raw.propose(encodeEnvelope(id, data));
      const s = raw.status();
      return this.#track(s.lastIndex, { index: s.lastIndex, id, term: s.term, resolve, reject });
    });
  }

  /**
   * A linearizable read barrier: resolves once this node has applied everything committed
   * before the call, as confirmed by the leader (read index). Read the state machine then.
   */
  read(opts: RequestOptions = {}): Promise<{ index: number }> {
    return this.#request(opts.signal, (resolve, reject) => {
      const context = randomBytes(16);
      const key = context.toString('hex');
      this.#reads.set(key, { index: undefined, resolve, reject });
      try {
        this.#raw!.readIndex(context);
      } catch (err) {
        this.#reads.delete(key);
        throw err;
      }
      return () => this.#reads.delete(key);
    });
  }

  addLearner(node: NodeId, opts: RequestOptions = {}): Promise<{ index: number; result: unknown }> {
    return this.#proposeConfChange({ type: 'add-learner', node }, opts);
  }

  /** Makes a learner (that has caught up) a voter. */
  promote(node: NodeId, opts: RequestOptions = {}): Promise<{ index: number; result: unknown }> {
    return this.#proposeConfChange({ type: 'add-voter', node }, opts);
  }

  removeVoter(node: NodeId, opts: RequestOptions = {}): Promise<{ index: number; result: unknown }> {
    return this.#proposeConfChange({ type: 'remove-voter', node }, opts);
  }

  /**
   * Hands leadership to voter `to` (on the leader only); resolves when this node sees `to` lead,
   * rejects TIMEOUT when that did not happen within two election timeouts (the core gives up after one).
   */
  transferLeadership(to: NodeId, opts: RequestOptions = {}): Promise<void> {
    const timeoutMs = 2 * this.#electionTick * this.#tickMs;
    return this.#request(opts.signal, (resolve, reject) => {
      this.#requireLeader();
      const listener = (e: LeaderChange): void => {
        if (e.leader !== to) return;
        done();
        resolve();
      };
      const timer = this.#clock.setTimer(timeoutMs, () => {
        done();
        reject(new FabricError('TIMEOUT', `leadership did not move to ${to} within ${timeoutMs} ms`));
      });
      const done = (): void => {
        timer.cancel();
        this.#leaderListeners.delete(listener);
      };
      this.#leaderListeners.add(listener);
      this.#raw!.transferLeadership(to);
      return done;
    });
  }

  status(): RaftNodeStatus {
    const raw = this.#raw;
    if (raw === undefined) throw new FabricError('INTERNAL', 'raft node not started');
    const s = raw.status();
    const heard = s.lead === null ? undefined : this.#lastHeard.get(s.lead);
    const contactAge = s.lead === null ? null : s.lead === this.id ? 0 : heard === undefined ? Number.POSITIVE_INFINITY : this.#clock.now() - heard;
    return toStatus(s, this.#applied, this.#snapshotIndex, contactAge);
  }

  /** How long ago a batch of Raft messages last arrived from `peer` (ms); undefined if never since start. */
  lastHeardFromMs(peer: NodeId): number | undefined {
    const at = this.#lastHeard.get(peer);
    return at === undefined ? undefined : this.#clock.now() - at;
  }

  /** Listens for changes of leader or of this node's role; returns the unsubscribe function. */
  onLeaderChange(listener: (e: LeaderChange) => void): () => void {
    this.#leaderListeners.add(listener);
    return () => this.#leaderListeners.delete(listener);
  }

  /** Listens for applied configuration changes. */
  onConfChange(listener: (e: ConfChangeApplied) => void): () => void {
    this.#confListeners.add(listener);
    return () => this.#confListeners.delete(listener);
  }

  /** The node stopped on an error it cannot recover from (the store failed an fsync): exit and restart. */
  onFatal(listener: (err: Error) => void): () => void {
    this.#fatalListeners.add(listener);
    return () => this.#fatalListeners.delete(listener);
  }

  // ---- the loop ------------------------------------------------------------------------------

  #scheduleTick(): void {
    this.#tickTimer = this.#clock.setTimer(this.#tickMs, () => {
      if (this.#stopped) return;
      this.#scheduleTick();
      this.#enqueue(() => this.#raw!.tick());
    });
  }

  #enqueue(fn: () => void): void {
    if (this.#stopped) return;
    this.#inbox.push(fn);
    this.#kick();
  }

  #kick(): void {
    if (this.#running || this.#stopped || this.#raw === undefined) return;
    this.#running = true;
    this.#loopDone = this.#run();
  }

  async #run(): Promise<void> {
    const raw = this.#raw!;
    try {
      while (!this.#stopped) {
        const inbox = this.#inbox;
        this.#inbox = [];
        this.#inboxMessages = 0;
        for (const fn of inbox) fn();
        if (!raw.hasReady()) break;
        await this.#handleReady(raw, raw.ready());
      }
    } catch (err) {
      this.#fatal(err);
    } finally {
      this.#running = false;
    }
    // Work queued by the last Ready's callbacks (no await since the loop's check) runs now.
    if (this.#inbox.length > 0) this.#kick();
  }

  async #handleReady(raw: RawNode, rd: Ready): Promise<void> {
    const store = this.#store!;
    if (rd.snapshot !== undefined) store.applySnapshot(rd.snapshot);
    if (rd.entries.length > 0) store.append(rd.entries);
    if (rd.hardState !== undefined) store.setHardState(rd.hardState);
    // The durability barrier: nothing that depends on these writes leaves before it.
    if (rd.snapshot !== undefined || rd.entries.length > 0 || rd.hardState !== undefined) await store.sync();
    if (this.#stopped) return;
    if (rd.messages.length > 0) this.#transport!.send(rd.messages);

    if (rd.snapshot !== undefined) this.#installSnapshot(rd.snapshot.metadata.index, rd.snapshot.metadata.confState, rd.snapshot.data);
    for (const e of rd.committedEntries) this.#applyEntry(raw, e);
    for (const rs of rd.readStates) {
      const read = this.#reads.get(Buffer.from(rs.context).toString('hex'));
      if (read !== undefined) read.index = rs.index;
    }
    if (rd.softState !== undefined) this.#leaderChanged(raw, rd.softState.leader, rd.softState.role);
    this.#serveReads();
    raw.advance(rd);
    this.#maybeSnapshot();
  }

  #installSnapshot(index: number, conf: ConfState, data: Uint8Array): void {
    this.#sm.restore(data);
    this.#applied = index;
    this.#snapshotIndex = index;
    this.#snapshotBytes = data.byteLength;
    this.#appliedBytesSinceSnapshot = 0;
    this.#conf = conf;
    // Whatever was proposed up to here is in the snapshot or was overwritten: we cannot tell which.
    for (const [i, p] of this.#proposals) {
      if (i > index) continue;
      this.#proposals.delete(i);
      p.reject(new FabricError('PROPOSAL_DROPPED', `outcome unknown: the log up to ${index} was replaced by a snapshot; retry with an idempotency key`, { details: { outcomeUnknown: true } }));
    }
    this.#log.info({ index }, 'installed a snapshot from the leader');
  }

  #applyEntry(raw: RawNode, e: Entry): void {
    if (e.index !== this.#applied + 1) throw new FabricError('INTERNAL', `asked to apply entry ${e.index} after ${this.#applied}`);
    this.#applied = e.index;
    this.#appliedBytesSinceSnapshot += e.data.byteLength;
    const pending = this.#proposals.get(e.index);
    if (pending !== undefined) this.#proposals.delete(e.index);
    if (e.type === 'conf-change') {
      const change = decodeConfChange(e.data);
      this.#conf = raw.applyConfChange(change);
      // A bootstrapped founder learns it is alone only now, from its first entry: do not wait out an election timeout.
      if (this.#conf.voters.length === 1 && this.#conf.voters[0] === this.id && raw.status().role !== 'leader') this.#enqueue(() => this.#raw!.campaign());
      this.#log.info({ index: e.index, change, voters: this.#conf.voters, learners: this.#conf.learners }, 'configuration changed');
      for (const listener of this.#confListeners) callSafely(this.#log, () => listener({ index: e.index, change, conf: this.#conf }));
      if (pending === undefined) return;
      if (pending.id === undefined && pending.term === e.term) pending.resolve({ index: e.index, result: this.#conf });
      else pending.reject(lostInLeaderChange(e.index));
      return;
    }
    if (e.data.byteLength === 0) {
      // A new leader's empty entry: nothing for the state machine.
      pending?.reject(lostInLeaderChange(e.index));
      return;
    }
    const envelope = decodeEnvelope(e.data);
    if (envelope === undefined) {
      // Deterministic on every node, so skipping keeps the replicas equal.
      this.#log.error({ index: e.index }, 'committed entry is not a proposal envelope; skipped');
      pending?.reject(lostInLeaderChange(e.index));
      return;
    }
    let result: unknown;
    let failure: unknown;
    try {
      result = this.#sm.apply(e.index, envelope.data);
    } catch (err) {
      failure = err;
      this.#log.error({ index: e.index, err: errorMessage(err) }, 'state machine failed to apply an entry');
    }
    if (pending === undefined) return;
    if (pending.id === undefined || !sameBytes(pending.id, envelope.id)) pending.reject(lostInLeaderChange(e.index));
    else if (failure !== undefined) pending.reject(failure);
    else pending.resolve({ index: e.index, result });
  }

  #leaderChanged(raw: RawNode, leader: NodeId | null, role: Role): void {
    const leaderMoved = leader !== this.#leader;
    this.#leader = leader;
    if (leaderMoved) {
      // Read-index requests in flight are lost with the leader that held them.
      for (const [key, read] of this.#reads) {
        if (read.index !== undefined) continue;
        this.#reads.delete(key);
        read.reject(notLeader(leader, 'the leader changed during the read; retry'));
      }
    }
    const term = raw.status().term;
    this.#log.info({ leader, role, term }, 'raft leadership changed');
    for (const listener of this.#leaderListeners) callSafely(this.#log, () => listener({ leader, role, term }));
  }

  #serveReads(): void {
    for (const [key, read] of this.#reads) {
      if (read.index === undefined || read.index > this.#applied) continue;
      this.#reads.delete(key);
      read.resolve({ index: read.index });
    }
  }

  /**
   * Snapshots the state machine at the applied index now and then, and drops the log behind it.
   * (A group's first configuration is in its log as conf-change entries, see
   * src/consensus/bootstrap.ts, so a node added later may replicate from index 1.)
   */
  #maybeSnapshot(): void {
    if (this.#applied - this.#snapshotIndex < this.#snapshotEvery) return;
    if (this.#appliedBytesSinceSnapshot < this.#snapshotBytes * this.#snapshotLogRatio) return;
    const store = this.#store!;
    const data = this.#sm.snapshot();
    store.createSnapshot(this.#applied, this.#conf, data);
    this.#snapshotIndex = this.#applied;
    this.#snapshotBytes = data.byteLength;
    this.#appliedBytesSinceSnapshot = 0;
    const to = this.#applied - this.#compactKeep;
    if (to >= store.firstIndex()) store.compact(to);
    // Durable with the next Ready's sync (or at close): losing it in a crash only costs a replay.
    this.#log.debug({ index: this.#applied, firstIndex: store.firstIndex() }, 'snapshot taken, log compacted');
  }

  /**
   * Every connection to our leader closed (its process died: the kernel resets its sockets).
   * Waiting out the check-quorum lease is then pointless: the follower forgets the leader (it
   * grants votes from now on), and one successor campaigns at once. Safety does not depend on it:
   * a leader that is in fact alive keeps the votes of the followers still hearing it (pre-vote +
   * check-quorum), and it only costs an early election otherwise.
   */
  readonly #onPeerDisconnect = (evt: CustomEvent<{ toString(): string }>): void => {
    const peer = evt.detail.toString();
    this.#enqueue(() => {
      const raw = this.#raw!;
      const s = raw.status();
      if (s.lead !== peer || s.role === 'leader') return;
      this.#log.debug({ leader: peer }, 'lost every connection to the leader; ending its lease');
      raw.forgetLeader();
      // One successor, the first remaining voter by id, campaigns at once; the others grant it
      // their votes and keep their own timers, which run out 150–300 ms after the last heartbeat
      // (should the successor fail). Were they all to fast-forward their timers, two survivors'
      // countdowns would end together often enough to split the vote and cost a round.
      const successor = s.config.voters.filter((v) => v !== peer).sort()[0];
      if (successor === this.id && s.config.voters.includes(this.id)) {
        raw.campaign();
        this.#repeatPreVote(s.term, this.#electionTick);
      }
    });
  };

  /**
   * The successor's pre-vote can reach a survivor that has not yet seen the disconnect itself:
   * that one still holds the old leader's lease and drops the request unanswered, and the
   * successor would wait out a whole randomized timeout (150–300 ms) before asking again. So it
   * asks again every tick while it is still a pre-candidate in the term it started from. A
   * pre-vote changes no term and no vote: asking twice costs two messages, nothing else.
   */
  #repeatPreVote(term: number, triesLeft: number): void {
    if (triesLeft <= 0) return;
    this.#clock.setTimer(this.#tickMs, () =>
      this.#enqueue(() => {
        const s = this.#raw!.status();
        if (s.role !== 'pre-candidate' || s.term !== term) return;
        this.#raw!.campaign();
        this.#repeatPreVote(term, triesLeft - 1);
      }),
    );
  }

  // ---- inbound messages ----------------------------------------------------------------------

  /** Members talk to us; while we are no member yet (waiting to be added) anyone may. */
  #accepts(peer: NodeId): boolean {
    const c = this.#conf;
    const isMember = (id: NodeId): boolean => c.voters.includes(id) || c.learners.includes(id);
    return !isMember(this.id) || isMember(peer);
  }

  #receive(from: NodeId, msgs: Message[]): void {
    if (this.#inboxMessages + msgs.length > this.#maxInboxMessages) {
      this.#warnings.warn(`inbox-full`, { from, count: msgs.length }, 'raft inbox full, messages dropped');
      return;
    }
    this.#inboxMessages += msgs.length;
    this.#enqueue(() => {
      this.#lastHeard.set(from, this.#clock.now());
      const raw = this.#raw!;
      // Membership may have changed since the transport's check.
      if (!this.#accepts(from)) return this.#drop(from, 'non-member', 'raft messages from a non-member dropped');
      const term = raw.status().term;
      for (const m of msgs) {
        if (m.term === 0 ? m.type !== 'prop' && m.type !== 'read-index' : m.term < term && !ANSWERED_WHEN_STALE.has(m.type)) {
          this.#drop(from, 'stale-term', `stale raft message dropped (${m.type} of term ${m.term} < ${term})`);
          continue;
        }
        try {
          raw.step(m);
        } catch (err) {
          // A remote message never makes the core throw on purpose; never let one crash the daemon.
          this.#log.error({ from, type: m.type, err: errorMessage(err) }, 'stepping a raft message failed');
        }
      }
    });
  }

  #drop(from: NodeId, kind: string, msg: string): void {
    this.#warnings.warn(`${kind}:${from}`, { from }, msg);
  }

  // ---- helpers ---------------------------------------------------------------------------------

  /**
   * A proposal id unique to this process: 8 random bytes drawn once, then a counter. (A fresh
   * 16 random bytes per proposal was a few percent of a busy leader's time.)
   */
  #nextProposalId(): Uint8Array {
    const id = new Uint8Array(PROPOSAL_ID_BYTES);
    id.set(this.#proposalPrefix, 0);
    new DataView(id.buffer).setBigUint64(8, BigInt(++this.#proposalSeq));
    return id;
  }

  /**
   * Runs `start` inside the loop (it may throw a refusal synchronously) and wires the signal.
   * `start` returns the cleanup to run when the signal aborts.
   */
  #request<T>(signal: AbortSignal | undefined, start: (resolve: (v: T) => void, reject: (e: unknown) => void) => () => void): Promise<T> {
    if (!this.#started || this.#stopped) return Promise.reject(new FabricError('ABORTED', 'raft node is not running'));
    if (signal?.aborted) return Promise.reject(new FabricError('ABORTED', 'request aborted'));
    return new Promise<T>((resolve, reject) => {
      let cleanup: (() => void) | undefined;
      const onAbort = (): void => {
        cleanup?.();
        reject(new FabricError('ABORTED', 'request aborted (it may still take effect)'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const settle = <A>(fn: (a: A) => void) => (a: A): void => {
        signal?.removeEventListener('abort', onAbort);
        fn(a);
      };
      this.#enqueue(() => {
        if (signal?.aborted) return;
        try {
          cleanup = start(settle(resolve), settle(reject));
        } catch (err) {
          settle(reject)(err);
        }
      });
    });
  }

  #proposeConfChange(cc: ConfChange, opts: RequestOptions): Promise<{ index: number; result: unknown }> {
    return this.#request(opts.signal, (resolve, reject) => {
      const raw = this.#raw!;
      this.#requireLeader();
      raw.proposeConfChange(cc);
      const s = raw.status();
      return this.#track(s.lastIndex, { index: s.lastIndex, id: undefined, term: s.term, resolve, reject });
    });
  }

  #track(index: number, p: PendingProposal): () => void {
    // Two proposals at one index: the older one was lost in a leader change (ours, then re-elected).
    this.#proposals.get(index)?.reject(lostInLeaderChange(index));
    this.#proposals.set(index, p);
    return () => {
      if (this.#proposals.get(index) === p) this.#proposals.delete(index);
    };
  }

  #requireLeader(): void {
    const s = this.#raw!.status();
    if (s.role !== 'leader') throw notLeader(s.lead, `this node is a ${s.role}`);
  }

  #rejectAll(err: FabricError): void {
    for (const p of this.#proposals.values()) p.reject(err);
    this.#proposals.clear();
    for (const r of this.#reads.values()) r.reject(err);
    this.#reads.clear();
  }

  #fatal(err: unknown): void {
    const error = err instanceof Error ? err : new Error(errorMessage(err));
    this.#log.error({ err: errorMessage(err) }, 'raft node failed; stopping');
    for (const listener of this.#fatalListeners) callSafely(this.#log, () => listener(error));
    void this.stop();
  }
}

function toStatus(s: RaftStatus, applied: number, snapshotIndex: number, leaderContactAgeMs: number | null): RaftNodeStatus {
  return {
    leaderContactAgeMs,
    id: s.id,
    leader: s.lead,
    term: s.term,
    role: s.role,
    commit: s.commit,
    applied,
    lastIndex: s.lastIndex,
    snapshotIndex,
    voters: [...s.config.voters],
    learners: [...s.config.learners],
    peers: s.progress
      .filter((p) => p.id !== s.id)
      .map((p) => ({ id: p.id, learner: p.learner, match: p.match, next: p.next, state: p.state, lag: Math.max(0, s.lastIndex - p.match), recentActive: p.recentActive })),
  };
}

export function encodeEnvelope(id: Uint8Array, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 + PROPOSAL_ID_BYTES + data.byteLength);
  out[0] = ENVELOPE_VERSION;
  out.set(id, 1);
  out.set(data, 1 + PROPOSAL_ID_BYTES);
  return out;
}

export function decodeEnvelope(entryData: Uint8Array): { id: Uint8Array; data: Uint8Array } | undefined {
  if (entryData.byteLength < 1 + PROPOSAL_ID_BYTES || entryData[0] !== ENVELOPE_VERSION) return undefined;
  return { id: entryData.subarray(1, 1 + PROPOSAL_ID_BYTES), data: entryData.subarray(1 + PROPOSAL_ID_BYTES) };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}

function notLeader(leader: NodeId | null, why: string): FabricError {
  return new FabricError('NOT_LEADER', leader === null ? `no known leader (${why})` : `not the leader; ${leader} is (${why})`, { details: { leader } });
}

function lostInLeaderChange(index: number): FabricError {
  return new FabricError('PROPOSAL_DROPPED', `another entry was committed at index ${index}: the proposal was lost in a leader change; retry with an idempotency key`);
}

function callSafely(log: Logger, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    log.error({ err: errorMessage(err) }, 'a raft listener threw');
  }
}
