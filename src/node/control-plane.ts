/**
 * The control plane of one daemon: its Raft node over the replicated fabric state, the way every
 * peer's requests reach the leader (`/fabric/rpc/1`), and the leader's autopilot that chooses the
 * voters.
 *
 * Every daemon runs a Raft node. The one that ran `fabric init` bootstraps the group as its only
 * voter; a joiner starts as an empty node that waits until the leader's autopilot adds it (first
 * as a learner, then as a voter once caught up). Peers outside the group still accept requests:
 * they find the leader through the gossiped Raft hints of the members and forward to it.
 *
 * Writes are fsm commands carrying the client's idempotency id: a request retried after a leader
 * change (or a lost reply) is answered from the state machine's memory of that id, never applied
 * twice. Reads are linearizable: a member waits for a read-index barrier and answers from its own
 * replica; anyone else asks the leader, which does the same.
 */
import { rmSync } from 'node:fs';
import type { Libp2p } from '@libp2p/interface';
import { FabricError, errorMessage, isFabricError, withDeadline, type ErrorCode, type Logger } from '../core/index.ts';
import type { RaftHint } from '../gossip/state.ts';
import { FabricStateMachine, decodeCommand, encodeCommand, type ApplyResult, type Command, type Job } from '../placement/fsm/index.ts';
import type { RaftPeersResponse, RaftStatusView } from '../api/schemas.ts';
import { planVoterChange, type AutopilotAction, type AutopilotPeer } from './autopilot.ts';
import { RaftNode, type RaftNodeStatus } from './raft-node.ts';
import { RPC_PROTOCOL, callRpc, errorReply, replyError, serveRpc, type Query, type RpcReply, type RpcRequest } from './rpc.ts';

/** A command as a client builds it: the leader stamps `at` with its clock when it proposes. */
export type CommandRequest = Command extends infer C ? (C extends Command ? Omit<C, 'at'> : never) : never;

export interface ControlPlaneOptions {
  host: Libp2p;
  /** The Raft store's directory. */
  dir: string;
  log: Logger;
  /** Bootstrap a new group with this node as its only voter (the `fabric init` peer, first start only). */
  bootstrap: boolean;
  deadVoterGraceMs: number;
  /** The gossiped view, this peer included: health and zone of every peer, and the Raft hints members publish. */
  peers(): ControlPlanePeer[];
  /** Tells the fabric (by gossip) what this node knows of the group; undefined when not a member. */
  publishHint(hint: RaftHint | undefined): void;
  wallNow(): number;
  /** Raft timing, for tests and benchmarks; defaults are RaftNode's. */
  raft?: { tickMs?: number; electionTick?: number; learnerHeartbeatTick?: number; snapshotEvery?: number };
}

export interface ControlPlanePeer extends AutopilotPeer {
  hint: RaftHint | undefined;
}

export interface SubmitOptions {
  /** Give up (TIMEOUT, outcome unknown: retry with the same request id) after this long. */
  timeoutMs?: number;
}

const RETRYABLE: ReadonlySet<ErrorCode> = new Set(['NOT_LEADER', 'PROPOSAL_DROPPED', 'DAEMON_UNREACHABLE', 'ABORTED', 'TIMEOUT']);
const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;
const RPC_SERVE_TIMEOUT_MS = 10_000;
const AUTOPILOT_PERIOD_MS = 500;
/** A member leaderless this long checks whether it was removed from the group. */
const REMOVED_CHECK_AFTER_MS = 3_000;

export class ControlPlane {
  readonly #o: ControlPlaneOptions;
  readonly #log: Logger;
  #raft: RaftNode;
  readonly id: string;
  #fsm = new FabricStateMachine();
  #autopilotTimer: NodeJS.Timeout | undefined;
  #autopilotBusy = false;
  #lastHint: string | undefined;
  /** A leader named by a peer that refused our request: tried first on the next attempt. */
  #redirect: string | null = null;
  #stopped = false;
  readonly #fatalListeners = new Set<(err: Error) => void>();
  readonly #appliedListeners = new Set<() => void>();
  /** On the leader: when each host's lease request last arrived (wall ms). */
  readonly #leaseHeard = new Map<string, number>();
  /** Hosts whose lease requests are refused while the re-placing of their jobs commits. */
  readonly #leasesRefused = new Map<string, number>();
  /** When this node last became leader (wall ms); 0 when it is not. */
  #leaderSince = 0;
  #explainer: ((jobId: string) => unknown) | undefined;
  #appliedScheduled = false;
  /** Since when this member has not heard from a leader (local clock), for the removal check. */
  #leaderlessSince: number | undefined;
  #removedStrikes = 0;

  constructor(opts: ControlPlaneOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.id = opts.host.peerId.toString();
    this.#raft = this.#newRaftNode(opts.bootstrap);
  }

  #newRaftNode(bootstrap: boolean): RaftNode {
    const opts = this.#o;
    const raft = new RaftNode({
      host: opts.host,
      dir: opts.dir,
      log: opts.log,
      stateMachine: {
        apply: (index, data) => {
          const result = this.#fsm.apply(index, data);
          this.#notifyApplied();
          return result;
        },
        snapshot: () => this.#fsm.snapshot(),
        restore: (data) => {
          this.#fsm = FabricStateMachine.restore(data);
          this.#notifyApplied();
        },
      },
      ...(bootstrap ? { bootstrap: { voters: [this.id] } } : {}),
      ...(opts.raft?.tickMs !== undefined ? { tickMs: opts.raft.tickMs } : {}),
      ...(opts.raft?.electionTick !== undefined ? { electionTick: opts.raft.electionTick } : {}),
      ...(opts.raft?.learnerHeartbeatTick !== undefined ? { learnerHeartbeatTick: opts.raft.learnerHeartbeatTick } : {}),
      ...(opts.raft?.snapshotEvery !== undefined ? { snapshotEvery: opts.raft.snapshotEvery } : {}),
    });
    raft.onLeaderChange((e) => {
      this.#publishHint();
      if (e.role === 'leader' && this.#leaderSince === 0) this.#leaderSince = Date.now();
      if (e.role !== 'leader') {
        this.#leaderSince = 0;
        this.#leaseHeard.clear();
      }
    });
    raft.onConfChange(() => this.#publishHint());
    raft.onFatal((err) => {
      for (const listener of this.#fatalListeners) listener(err);
    });
    return raft;
  }

  async start(): Promise<void> {
    await serveRpc(this.#o.host, this.#log, (req, from, signal) => this.#serve(req, from, signal), RPC_SERVE_TIMEOUT_MS);
    await this.#raft.start();
    this.#publishHint();
    this.#autopilotTimer = setInterval(() => void this.#tick(), AUTOPILOT_PERIOD_MS);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#autopilotTimer);
    await this.#o.host.unhandle(RPC_PROTOCOL).catch(() => undefined);
    await this.#raft.stop();
  }

  /**
   * Calls `listener` soon after entries were applied to this replica (once per burst, not per
   * entry): the cue for whoever acts on the state, like the job agent. Returns the unsubscribe.
   */
  onApplied(listener: () => void): () => void {
    this.#appliedListeners.add(listener);
    return () => this.#appliedListeners.delete(listener);
  }

  #notifyApplied(): void {
    if (this.#appliedScheduled || this.#appliedListeners.size === 0) return;
    this.#appliedScheduled = true;
    setImmediate(() => {
      this.#appliedScheduled = false;
      for (const listener of this.#appliedListeners) {
        try {
          listener();
        } catch (err) {
          this.#log.error({ err: errorMessage(err) }, 'applied-entries listener failed');
        }
      }
    });
  }

  /** Who answers `explain` queries when this node leads (the placement service). */
  setExplainer(explainer: (jobId: string) => unknown): void {
    this.#explainer = explainer;
  }

  /** The node stopped on an error it cannot recover from (the disk failed): the daemon must exit. */
  onFatal(listener: (err: Error) => void): () => void {
    this.#fatalListeners.add(listener);
    return () => this.#fatalListeners.delete(listener);
  }

  /** The fabric state as this replica has applied it (not linearizable: use `query` for that). */
  get state(): FabricStateMachine {
    return this.#fsm;
  }

  // ---- requests --------------------------------------------------------------------------------

  /**
   * Commits a command through the leader, wherever it is, and returns the state machine's answer.
   * Retries across leader changes until `timeoutMs`; the request id makes the retries safe.
   */
  async submit(request: CommandRequest, opts: SubmitOptions = {}): Promise<{ index: number; result: ApplyResult }> {
    // Validated here, stamped by the leader. On the leader itself (the placement service, the
    // leader's own API) it is stamped now and the first attempt proposes these very bytes: no
    // decode and encode again on the node that carries every write.
    const stampedHere = this.#raft.status().role === 'leader';
    const bytes = encodeCommand({ ...request, at: stampedHere ? this.#o.wallNow() : 0 } as Command);
    const reply = await this.#toLeader({ t: 'propose', command: bytes }, opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, stampedHere);
    return { index: reply.index, result: reply.value as ApplyResult };
  }

  /** A linearizable read: the answer reflects every write acknowledged before the call. */
  async query(query: Query, opts: SubmitOptions = {}): Promise<unknown> {
    const s = this.#raft.status();
    // The group's progress and the scheduler live on the leader only; the rest any member answers.
    if (query.q !== 'raft' && query.q !== 'explain' && this.#isMember(s) && s.leader !== null) {
      try {
        await withDeadline(Math.min(5_000, opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS), (signal) => this.#raft.read({ signal }));
        return this.#answer(query);
      } catch (err) {
        if (!isFabricError(err) || !RETRYABLE.has(err.code)) throw err;
        // fall through: ask the leader
      }
    }
    return (await this.#toLeader({ t: 'query', query }, opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS)).value;
  }

  /** This node's own view of the group; for a node outside it, the leader's (or the gossiped hint). */
  async raftStatus(): Promise<RaftStatusView> {
    const s = this.#raft.status();
    const local = this.#statusView(s);
    if (this.#isMember(s)) return local;
    try {
      const remote = (await this.query({ q: 'raft' }, { timeoutMs: 2_000 })) as RaftPeersResponse;
      return { ...local, leader: remote.leader, term: remote.term, voters: remote.peers.filter((p) => p.role === 'voter').map((p) => p.peerId), learners: remote.peers.filter((p) => p.role === 'learner').map((p) => p.peerId), commit: remote.commit, applied: remote.applied, source: 'leader' };
    } catch {
      return { ...local, leader: this.leaderHint() };
    }
  }

  /** This node's own Raft view, without asking anyone (may be stale on a node outside the group). */
  localStatus(): RaftStatusView & { lastIndex: number } {
    const s = this.#raft.status();
    return { ...this.#statusView(s), lastIndex: s.lastIndex };
  }

  /**
   * On the leader: how long since `peer` last renewed its lease (ms), counting from when this
   * node became leader at the latest, because a lease the previous leader granted may run that
   * long. A host whose lease is not renewed stops its jobs within the lease (job-agent.ts).
   */
  /**
   * Runs `work` (the proposal that takes a lost host's jobs away) while refusing that host's
   * lease requests. A grant issued after the decision but carrying a commit index from before
   * the release committed would let the host start a job that is about to start elsewhere; a
   * host idle until then has no lease to lose, so only this refusal stops it.
   */
  async withLeasesRefused<T>(peer: string, work: () => Promise<T>): Promise<T> {
    this.#leasesRefused.set(peer, (this.#leasesRefused.get(peer) ?? 0) + 1);
    try {
      return await work();
    } finally {
      const left = (this.#leasesRefused.get(peer) ?? 1) - 1;
      if (left > 0) this.#leasesRefused.set(peer, left);
      else this.#leasesRefused.delete(peer);
    }
  }

  leaseSilenceOf(peer: string): number {
    const since = Math.max(this.#leaseHeard.get(peer) ?? 0, this.#leaderSince || Date.now());
    return Date.now() - since;
  }

  /**
   * Asks the leader to renew this host's lease; returns the leader's commit index when it did
   * (null when not). The leader itself holds its lease while it leads (check-quorum makes a
   * cut-off leader step down within an election timeout).
   */
  async renewLease(timeoutMs: number): Promise<{ commit: number } | null> {
    const s = this.#raft.status();
    if (s.role === 'leader') return { commit: s.commit };
    const leader = this.leaderHint();
    if (leader === null || leader === this.id) return null;
    try {
      const reply = await withDeadline(timeoutMs, (signal) => callRpc(this.#o.host, leader, { t: 'lease' }, signal));
      return reply.ok ? { commit: reply.index } : null;
    } catch {
      return null;
    }
  }

  /** The voters and learners with their health and lag, as the leader sees them. */
  async raftPeers(): Promise<RaftPeersResponse> {
    return (await this.query({ q: 'raft' })) as RaftPeersResponse;
  }

  /** The leader this node would send a request to now, or null. */
  leaderHint(): string | null {
    const s = this.#raft.status();
    if (s.leader !== null && this.#isMember(s)) return s.leader;
    return this.#leaderFromHints();
  }

  /** The leader named by the highest term among the Raft hints other peers gossip. */
  #leaderFromHints(): string | null {
    let best: { term: number; leader: string } | undefined;
    for (const p of this.#o.peers()) {
      if (p.health === 'dead' || p.hint === undefined || p.hint.leader === null) continue;
      if (best === undefined || p.hint.term > best.term) best = { term: p.hint.term, leader: p.hint.leader };
    }
    return best?.leader ?? null;
  }

  /** `stamped`: a proposal already stamped by this node, to propose as is if this node serves the first attempt. */
  async #toLeader(req: RpcRequest, timeoutMs: number, stamped = false): Promise<Extract<RpcReply, { ok: true }>> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown; // built only when needed: an error's stack trace costs, at thousands of requests a second
    for (let attempt = 0; Date.now() < deadline && !this.#stopped; attempt++) {
      const leader = this.#redirect ?? this.leaderHint();
      this.#redirect = null;
      const left = deadline - Date.now();
      try {
        if (leader === null) throw new FabricError('NOT_LEADER', 'no leader is known yet (the group may be electing one)');
        const reply = await withDeadline(Math.min(5_000, left), (signal) => (leader === this.id ? this.#serve(req, this.id, signal, stamped && attempt === 0) : callRpc(this.#o.host, leader, req, signal)));
        if (reply.ok) return reply;
        const err = replyError(reply);
        if (reply.code === 'NOT_LEADER' && reply.leader !== null && reply.leader !== leader) this.#redirect = reply.leader;
        throw err;
      } catch (err) {
        if (!isFabricError(err) || !RETRYABLE.has(err.code)) throw err;
        lastError = err;
      }
      // Back off a little: an election takes a few hundred milliseconds.
      await new Promise((resolve) => setTimeout(resolve, Math.min(200, 10 * 2 ** Math.min(attempt, 5))));
    }
    throw new FabricError('TIMEOUT', `no leader answered within ${timeoutMs} ms (last: ${lastError === undefined ? 'no leader is known yet' : errorMessage(lastError)}); a write may or may not have taken effect: retry with the same request id`);
  }

  /** Handles a request as the leader would; any other node refuses with the leader it knows. */
  async #serve(req: RpcRequest, from: string, signal: AbortSignal, stamped = false): Promise<RpcReply> {
    const s = this.#raft.status();
    if (s.role !== 'leader') return errorReply(new FabricError('NOT_LEADER', `${this.id} is not the leader`), s.leader ?? this.leaderHint());
    if (req.t === 'lease') {
      if (this.#leasesRefused.has(from)) return errorReply(new FabricError('UNAVAILABLE', `the jobs of ${from} are being placed elsewhere`), this.id);
      this.#leaseHeard.set(from, Date.now());
      return { ok: true, index: s.commit, value: null };
    }
    try {
      if (req.t === 'propose') {
        const entry = stamped ? req.command : encodeCommand({ ...decodeCommand(req.command), at: this.#o.wallNow() });
        const { index, result } = await this.#raft.propose(entry, { signal });
        return { ok: true, index, value: result };
      }
      const { index } = await this.#raft.read({ signal });
      return { ok: true, index, value: this.#answer(req.query) };
    } catch (err) {
      if (!isFabricError(err)) this.#log.warn({ from, err: errorMessage(err) }, 'rpc request failed');
      return errorReply(err, this.#raft.status().leader);
    }
  }

  #answer(query: Query): unknown {
    switch (query.q) {
      case 'jobs':
        return this.#fsm.jobs(query.all ? {} : { state: ['queued', 'placed', 'running', 'restarting'] }) as Job[];
      case 'job': {
        const job = this.#fsm.job(query.jobId);
        if (job === undefined) throw new FabricError('NOT_FOUND', `no job ${query.jobId}`);
        return { ...job, checkpoints: this.#fsm.checkpoints(query.jobId) };
      }
      case 'raft':
        return this.#peersView();
      case 'explain':
        if (this.#explainer === undefined) throw new FabricError('INTERNAL', 'this node has no scheduler');
        return this.#explainer(query.jobId);
    }
  }

  #peersView(): RaftPeersResponse {
    const s = this.#raft.status();
    const gossip = new Map(this.#o.peers().map((p) => [p.peerId, p]));
    const progress = new Map(s.peers.map((p) => [p.id, p]));
    const row = (peerId: string, role: 'voter' | 'learner'): RaftPeersResponse['peers'][number] => {
      const p = progress.get(peerId);
      const g = gossip.get(peerId);
      return {
        peerId,
        role,
        leader: peerId === s.leader,
        health: peerId === this.id ? 'alive' : (g?.health ?? 'unknown'),
        zone: g?.zone ?? null,
        match: peerId === this.id ? s.lastIndex : (p?.match ?? 0),
        lag: peerId === this.id ? 0 : (p?.lag ?? s.lastIndex),
      };
    };
    return {
      leader: s.leader,
      term: s.term,
      commit: s.commit,
      applied: s.applied,
      lastIndex: s.lastIndex,
      peers: [...s.voters.map((id) => row(id, 'voter')), ...s.learners.map((id) => row(id, 'learner'))],
    };
  }

  #statusView(s: RaftNodeStatus): RaftStatusView {
    return {
      member: s.voters.includes(this.id) ? 'voter' : s.learners.includes(this.id) ? 'learner' : 'none',
      role: s.role,
      leader: s.leader,
      term: s.term,
      voters: s.voters,
      learners: s.learners,
      commit: s.commit,
      applied: s.applied,
      source: 'local',
    };
  }

  #isMember(s: RaftNodeStatus): boolean {
    return s.voters.includes(this.id) || s.learners.includes(this.id);
  }

  #publishHint(): void {
    if (this.#stopped) return;
    const s = this.#raft.status();
    const hint: RaftHint | undefined = this.#isMember(s) ? { role: s.role, voter: s.voters.includes(this.id), term: s.term, leader: s.leader } : undefined;
    const key = JSON.stringify(hint ?? null);
    if (key === this.#lastHint) return;
    this.#lastHint = key;
    this.#o.publishHint(hint);
  }

  // ---- autopilot (leader only) -------------------------------------------------------------------

  async #tick(): Promise<void> {
    if (this.#autopilotBusy || this.#stopped) return;
    this.#autopilotBusy = true;
    try {
      this.#publishHint(); // terms move without a leader change too (a lost election)
      if (this.#raft.status().role === 'leader') await this.#autopilot();
      else await this.#checkRemoved();
    } finally {
      this.#autopilotBusy = false;
    }
  }

  /**
   * A member removed while it was down (the leader replaced it after the grace period) never
   * hears of its removal: its own log still names it a member, and the group ignores it. When it
   * has not heard from a leader for a while, it asks the leader the others name; if that leader,
   * at its term or a later one, confirms twice that it is not in the group, the node discards its
   * replica and starts over as an empty node, which the autopilot adds again.
   */
  async #checkRemoved(): Promise<void> {
    const s = this.#raft.status();
    const inTouch = s.leader !== null && (s.leaderContactAgeMs ?? Number.POSITIVE_INFINITY) < REMOVED_CHECK_AFTER_MS;
    if (!this.#isMember(s) || inTouch) {
      this.#leaderlessSince = undefined;
      this.#removedStrikes = 0;
      return;
    }
    const now = Date.now();
    this.#leaderlessSince ??= now;
    if (now - this.#leaderlessSince < REMOVED_CHECK_AFTER_MS) return;
    const leader = this.#leaderFromHints();
    if (leader === null || leader === this.id) return;
    let reply: RpcReply;
    try {
      reply = await callRpc(this.#o.host, leader, { t: 'query', query: { q: 'raft' } }, AbortSignal.timeout(2_000));
    } catch {
      return;
    }
    if (!reply.ok) return;
    const view = reply.value as RaftPeersResponse;
    if (view.leader !== leader || view.term < s.term || view.peers.some((p) => p.peerId === this.id)) {
      this.#removedStrikes = 0;
      return;
    }
    if (++this.#removedStrikes < 2) return;
    this.#log.warn({ leader, term: view.term }, 'this node was removed from the raft group while away; discarding its replica and waiting to be added again');
    await this.#raft.stop();
    rmSync(this.#o.dir, { recursive: true, force: true });
    this.#fsm = new FabricStateMachine();
    this.#raft = this.#newRaftNode(false);
    await this.#raft.start();
    this.#leaderlessSince = undefined;
    this.#removedStrikes = 0;
    this.#lastHint = undefined;
    this.#publishHint();
  }

  async #autopilot(): Promise<void> {
    const s = this.#raft.status();
    const action = planVoterChange({
      self: this.id,
      voters: s.voters,
      learners: s.learners,
      match: new Map(s.peers.map((p) => [p.id, p.match])),
      lastIndex: s.lastIndex,
      peers: this.#o.peers(),
      deadGraceMs: this.#o.deadVoterGraceMs,
    });
    if (action === null) return;
    try {
      await this.#change(action);
      this.#log.info({ action: action.type, peer: action.peer, why: action.why }, 'autopilot changed the raft group');
    } catch (err) {
      this.#log.warn({ action: action.type, peer: action.peer, err: errorMessage(err) }, 'autopilot change failed; will retry');
    }
  }

  async #change(action: AutopilotAction): Promise<void> {
    const signal = AbortSignal.timeout(5_000);
    switch (action.type) {
      case 'add-learner':
      case 'demote': // a voter added as a learner is demoted (etcd's semantics, see progress.ts)
        await this.#raft.addLearner(action.peer, { signal });
        return;
      case 'promote':
        await this.#raft.promote(action.peer, { signal });
        return;
      case 'remove':
        await this.#raft.removeVoter(action.peer, { signal });
        return;
    }
  }
}
