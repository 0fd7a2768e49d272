/**
 * One simulated node: a Raft core, its simulated disk, the KV state machine and the driver loop
 * that joins them the way the real daemon must:
 *
 *   ready() → write snapshot, entries, hard state → fsync (takes simulated time)
 *           → send the Ready's messages → apply committed entries → answer clients → advance()
 *
 * While a Ready is being synced the node takes no input: messages, ticks and client requests
 * wait in an inbox and are stepped in together once it is advanced (which also batches them).
 * A crash throws away everything in memory, and the disk keeps only what `SimDisk.crash` leaves.
 */
import { isFabricError, type Rng, type Timer } from '../../src/core/index.ts';
import { RawNode, decodeConfChange } from '../../src/consensus/index.ts';
import type { ConfChange, ConfState, Message, Ready } from '../../src/consensus/types.ts';
import { SimDisk, type CrashReport } from './disk.ts';
import { bytesHash } from './hash.ts';
import { InvariantViolation, type InvariantChecker } from './invariants.ts';
import { KvStore, decodeCommand, encodeCommand } from './kv.ts';
import type { Scheduler } from './scheduler.ts';
import type { ClientAnswer, ClientRequest, Wire } from './wire.ts';

/** Driver bugs on purpose, to prove the checkers catch what a real driver could get wrong. */
export type DriverBug =
  /** Sends a Ready's messages before its entries and hard state are durable. */
  | 'send-before-persist'
  /** Runs on a disk whose fsync returns without making anything durable. */
  | 'sync-lies'
  /** Does not persist its vote: a restarted node may vote twice in one term. */
  | 'forget-vote'
  /** Answers a write as done once proposed, before it is committed and applied. */
  | 'ack-on-propose'
  /** Serves reads from the local state machine without a read index (stale on followers and deposed leaders). */
  | 'local-reads';

export interface NodeParams {
  electionTick: number;
  heartbeatTick: number;
  learnerHeartbeatTick: number;
  preVote: boolean;
  checkQuorum: boolean;
  maxSizePerMsg: number;
  maxInflightMsgs: number;
  tickMs: number;
  /** fsync latency in [0, diskLatencyMs]. */
  diskLatencyMs: number;
  /** Snapshot and compact once this many entries were applied since the last snapshot. */
  compactEvery: number;
  /** Entries kept behind a compaction for slow followers. */
  compactKeep: number;
}

/** What a node needs from the world around it. */
export interface NodeContext {
  readonly scheduler: Scheduler;
  readonly rng: Rng;
  readonly checker: InvariantChecker;
  readonly bug: DriverBug | undefined;
  /** Disks write each sync as one all-or-nothing record (see DiskOptions.atomicSyncs). */
  readonly atomicSyncs: boolean;
  /** `outcome` hears whether the message arrived, as a sender's connection would tell it. */
  send(from: string, to: string, wire: Wire, outcome?: (delivered: boolean) => void): void;
  trace(line: string): void;
  /** Counts an event, to show what a run exercised. */
  count(what: string): void;
  /** A configuration change took effect on this node at `index` (the cluster tracks the latest). */
  confApplied(node: string, index: number, cc: ConfChange, conf: ConfState): void;
}

type Input =
  | { kind: 'message'; message: Message }
  | { kind: 'tick' }
  | { kind: 'request'; request: ClientRequest }
  /** What the transport learnt about a message sent: the core wants to know of lost peers and snapshots. */
  | { kind: 'sent'; to: string; type: Message['type']; delivered: boolean };

interface PendingRead {
  client: string;
  seq: number;
  attempt: number;
  key: string;
  /** Set once the core hands back the read index. */
  index: number | undefined;
}

export interface RoleView {
  term: number;
  role: string;
  leader: string | null;
  commit: number;
}

export class SimNode {
  readonly id: string;
  readonly disk: SimDisk;
  readonly params: NodeParams;
  readonly #ctx: NodeContext;
  #raw: RawNode | undefined;
  /** Bumped on every crash, so that timers of an earlier life do nothing. */
  #incarnation = 0;
  #tickTimer: Timer | undefined;
  #syncing = false;
  #inbox: Input[] = [];
  kv = new KvStore();
  applied = 0;
  conf: ConfState;
  /** Removed from the configuration and shut down for good. */
  retired = false;
  #pendingWrites = new Map<string, { client: string; seq: number; attempt: number }>();
  #pendingReads = new Map<string, PendingRead>();
  #readCounter = 0;
  /**
   * A paused node (a stopped VM) neither ticks nor finishes an fsync until resumed; the cluster
   * drops what is sent to it meanwhile.
   */
  #paused = false;
  #onResume: (() => void) | undefined;
  /** Set by the nemesis: crash right after a Ready is written, before its fsync ends. */
  #crashBeforeSync: { crash: () => void; minEntries: number } | undefined;
  /** Counters for reports. */
  crashes = 0;

  /** `bootstrap`: the group's first configuration for a founder, empty for a node waiting to be added. */
  constructor(id: string, bootstrap: ConfState, params: NodeParams, ctx: NodeContext) {
    this.id = id;
    this.params = params;
    this.#ctx = ctx;
    this.disk = new SimDisk(id, bootstrap, ctx.checker, { syncLies: ctx.bug === 'sync-lies', atomicSyncs: ctx.atomicSyncs });
    this.conf = this.disk.snapshot().metadata.confState;
  }

  get up(): boolean {
    return this.#raw !== undefined;
  }

  /** Starts (or restarts) the node from what its disk holds. */
  start(): void {
    if (this.up || this.retired) return;
    const snap = this.disk.snapshot();
    this.kv = KvStore.restore(snap.data);
    this.applied = snap.metadata.index;
    this.conf = snap.metadata.confState;
    const p = this.params;
    const rng = this.#ctx.rng;
    this.#raw = new RawNode({
      id: this.id,
      electionTick: p.electionTick,
      heartbeatTick: p.heartbeatTick,
      learnerHeartbeatTick: p.learnerHeartbeatTick,
      storage: this.disk,
      applied: this.applied,
      randomInt: (n) => rng.int(n),
      preVote: p.preVote,
      checkQuorum: p.checkQuorum,
      maxSizePerMsg: p.maxSizePerMsg,
      maxInflightMsgs: p.maxInflightMsgs,
    });
    // What the core repaired at load (a crash left the hard state behind the log written with it).
    const stored = this.disk.initialState().hardState;
    const loaded = this.#raw.status();
    if (loaded.term > stored.term) this.#ctx.count("restart: term raised to the last entry's");
    if (loaded.commit > stored.commit) this.#ctx.count("restart: commit raised to the snapshot's index");
    const incarnation = this.#incarnation;
    const tick = (): void => {
      if (incarnation !== this.#incarnation) return;
      this.#tickTimer = this.#ctx.scheduler.setTimer(p.tickMs, tick);
      if (!this.#paused) this.#input({ kind: 'tick' });
    };
    this.#tickTimer = this.#ctx.scheduler.setTimer(p.tickMs, tick);
    this.#ctx.trace(`${this.id} start applied=${this.applied} last=${this.disk.lastIndex()} term=${this.disk.hardState().term}`);
    this.#pump();
  }

  /** Power loss: memory is gone, the disk keeps what it synced (and maybe a torn tail). */
  crash(): CrashReport | undefined {
    if (!this.up) return undefined;
    this.#incarnation++;
    this.crashes++;
    this.#raw = undefined;
    this.#tickTimer?.cancel();
    this.#tickTimer = undefined;
    this.#syncing = false;
    this.#paused = false;
    this.#onResume = undefined;
    this.#inbox = [];
    this.#pendingWrites.clear();
    this.#pendingReads.clear();
    this.#crashBeforeSync = undefined;
    const report = this.disk.crash(this.#ctx.rng);
    this.#ctx.count('crash');
    if (report.keptWrites > 0) this.#ctx.count('crash keeping unsynced writes');
    if (report.tornKept > 0) this.#ctx.count('crash tearing an append');
    this.#ctx.trace(`${this.id} crash lost=${report.lostWrites} kept=${report.keptWrites} torn=${report.tornKept}`);
    return report;
  }

  /** Removed from the group: stops for good. */
  retire(): void {
    this.crash();
    this.retired = true;
  }

  /**
   * Arms a crash for the window between the writes of the next Ready with at least `minEntries`
   * entries and their fsync (with 2 or more, the crash may tear the append).
   */
  crashBeforeNextSync(crash: () => void, minEntries = 0): void {
    this.#crashBeforeSync = { crash, minEntries };
  }

  setPaused(paused: boolean): void {
    this.#paused = paused;
    const resume = this.#onResume;
    if (!paused && resume !== undefined) {
      this.#onResume = undefined;
      resume();
    }
  }

  deliver(wire: Wire): void {
    if (!this.up) return;
    if (wire.kind === 'raft') this.#input({ kind: 'message', message: wire.message });
    else if (wire.kind === 'request') this.#input({ kind: 'request', request: wire.request });
  }

  /** The role as the core sees it now; undefined when down. */
  role(): RoleView | undefined {
    const raw = this.#raw;
    if (raw === undefined) return undefined;
    const s = raw.status();
    return { term: s.term, role: s.role, leader: s.lead, commit: s.commit };
  }

  /** Asks the core for a configuration change; false when it refuses (one is already pending). */
  proposeConfChange(cc: ConfChange): boolean {
    if (this.#syncing || this.#raw === undefined) return false;
    try {
      this.#raw.proposeConfChange(cc);
    } catch (err) {
      if (isRefusal(err)) return false;
      throw err;
    }
    this.#pump();
    return true;
  }

  transferLeadership(to: string): void {
    if (this.#syncing || this.#raw === undefined) return;
    this.#raw.transferLeadership(to);
    this.#pump();
  }

  #input(input: Input): void {
    if (this.#syncing) {
      this.#inbox.push(input);
      return;
    }
    this.#handle(input);
    this.#pump();
  }

  #handle(input: Input): void {
    const raw = this.#raw!;
    switch (input.kind) {
      case 'tick':
        raw.tick();
        return;
      case 'message':
        raw.step(input.message);
        return;
      case 'request':
        this.#serve(input.request);
        return;
      case 'sent':
        if (input.type === 'snap') raw.reportSnapshot(input.to, input.delivered);
        else if (!input.delivered) raw.reportUnreachable(input.to);
        return;
    }
  }

  #serve(req: ClientRequest): void {
    const raw = this.#raw!;
    const op = req.op;
    try {
      if (op.kind === 'get' && this.#ctx.bug === 'local-reads') {
        this.#answer(req.client, req.seq, req.attempt, { kind: 'read', value: this.kv.get(op.key) });
      } else if (op.kind === 'get') {
        // A unique context per try: the core answers with it in a ReadState.
        const context = `${this.id}/${req.client}/${req.seq}/${req.attempt}/${++this.#readCounter}`;
        this.#pendingReads.set(context, { client: req.client, seq: req.seq, attempt: req.attempt, key: op.key, index: undefined });
        try {
          raw.readIndex(new TextEncoder().encode(context));
        } catch (err) {
          this.#pendingReads.delete(context);
          throw err;
        }
      } else {
        raw.propose(encodeCommand({ client: req.client, seq: req.seq, op }));
        if (this.#ctx.bug === 'ack-on-propose') this.#answer(req.client, req.seq, req.attempt, { kind: 'write', ok: true });
        else this.#pendingWrites.set(`${req.client}/${req.seq}`, { client: req.client, seq: req.seq, attempt: req.attempt });
      }
    } catch (err) {
      if (!isRefusal(err)) throw err;
      this.#ctx.count('request refused');
      this.#answer(req.client, req.seq, req.attempt, { kind: 'redirect', leader: raw.status().lead });
    }
  }

  #answer(client: string, seq: number, attempt: number, answer: ClientAnswer): void {
    this.#ctx.send(this.id, client, { kind: 'response', response: { client, seq, attempt, answer } });
  }

  /** Hands every Ready to the disk; the rest happens when the fsync completes. */
  #pump(): void {
    const raw = this.#raw;
    if (raw === undefined || this.#syncing || !raw.hasReady()) return;
    const rd = raw.ready();
    const ctx = this.#ctx;
    if (rd.softState !== undefined) ctx.trace(`${this.id} ${rd.softState.role} leader=${rd.softState.leader ?? '-'}`);
    if (ctx.bug === 'send-before-persist') this.#send(rd.messages);
    const disk = this.disk;
    if (rd.snapshot !== undefined) disk.applySnapshot(rd.snapshot);
    disk.append(rd.entries);
    if (rd.hardState !== undefined) {
      const hs = ctx.bug === 'forget-vote' ? { ...rd.hardState, vote: null } : rd.hardState;
      disk.setHardState(hs);
      ctx.checker.committed(this.id, hs.term, hs.commit, disk.chainAt(hs.commit), false);
    }
    if (rd.softState?.role === 'leader') {
      // The Ready that makes a node leader carries its whole unstable log: the disk now holds it all.
      const term = raw.status().term;
      ctx.count('leader elected');
      ctx.checker.observeLeader(this.id, term);
      ctx.checker.checkLeaderLog(this.id, term, disk);
    }
    this.#syncing = true;
    const incarnation = this.#incarnation;
    const latency = this.params.diskLatencyMs === 0 ? 0 : ctx.rng.int(this.params.diskLatencyMs + 1);
    const armed = this.#crashBeforeSync;
    if (armed !== undefined && rd.entries.length >= armed.minEntries) {
      this.#crashBeforeSync = undefined;
      // Scheduled first, so it runs before the fsync completes even at the same instant.
      ctx.scheduler.setTimer(ctx.rng.int(latency + 1), () => {
        if (incarnation === this.#incarnation) armed.crash();
      });
    }
    ctx.scheduler.setTimer(latency, () => {
      if (incarnation !== this.#incarnation) return;
      if (this.#paused) this.#onResume = () => this.#persisted(rd);
      else this.#persisted(rd);
    });
  }

  #persisted(rd: Ready): void {
    const raw = this.#raw!;
    const ctx = this.#ctx;
    this.disk.sync();
    if (ctx.bug !== 'send-before-persist') this.#send(rd.messages);
    if (rd.snapshot !== undefined) this.#restore(rd);
    this.#apply(rd);
    for (const rs of rd.readStates) {
      const read = this.#pendingReads.get(new TextDecoder().decode(rs.context));
      if (read !== undefined) read.index = rs.index;
    }
    this.#serveReads();
    raw.advance(rd);
    this.#syncing = false;
    this.#maybeCompact();
    const inbox = this.#inbox;
    this.#inbox = [];
    for (const input of inbox) {
      if (this.#raw === undefined) break;
      this.#handle(input);
    }
    this.#pump();
  }

  #send(messages: readonly Message[]): void {
    const incarnation = this.#incarnation;
    for (const m of messages) {
      // Like a real transport: a failed send to a peer, and a snapshot's fate, go back to the core.
      const report = m.type === 'snap' || m.type === 'app' ? m.type : undefined;
      this.#ctx.send(this.id, m.to, { kind: 'raft', message: m }, report === undefined ? undefined : (delivered) => {
        if (incarnation !== this.#incarnation || this.#paused) return;
        if (report === 'snap' || !delivered) this.#input({ kind: 'sent', to: m.to, type: report, delivered });
      });
    }
  }

  #restore(rd: Ready): void {
    const snap = rd.snapshot!;
    this.kv = KvStore.restore(snap.data);
    this.applied = snap.metadata.index;
    this.conf = snap.metadata.confState;
    this.#ctx.checker.snapshotState(this.id, this.applied, bytesHash(snap.data));
    this.#ctx.count('snapshot installed');
    this.#ctx.trace(`${this.id} restore snapshot ${this.applied}`);
  }

  #apply(rd: Ready): void {
    const ctx = this.#ctx;
    const term = this.disk.hardState().term;
    for (const e of rd.committedEntries) {
      if (e.index !== this.applied + 1) {
        throw new InvariantViolation('apply order', `${this.id} was handed entry ${e.index} to apply after ${this.applied}`);
      }
      const chain = this.disk.chainAt(e.index);
      ctx.checker.committed(this.id, term, e.index, chain, true);
      this.applied = e.index;
      if (e.type === 'conf-change') {
        const cc = decodeConfChange(e.data);
        this.conf = this.#raw!.applyConfChange(cc);
        ctx.confApplied(this.id, e.index, cc, this.conf);
        continue;
      }
      if (e.data.length === 0) continue; // a new leader's empty entry
      const outcome = this.kv.apply(decodeCommand(e.data));
      const { client, seq } = outcome.command;
      const key = `${client}/${seq}`;
      const pending = this.#pendingWrites.get(key);
      if (pending !== undefined && outcome.result !== undefined) {
        this.#pendingWrites.delete(key);
        ctx.checker.acknowledged(e.index, chain!, `write ${client}#${seq}`);
        ctx.count(outcome.executed ? 'write acked' : 'retried write answered from the session table');
        this.#answer(client, seq, pending.attempt, { kind: 'write', ok: outcome.result.ok });
      }
    }
  }

  #serveReads(): void {
    for (const [context, read] of this.#pendingReads) {
      if (read.index === undefined || read.index > this.applied) continue;
      this.#pendingReads.delete(context);
      this.#ctx.count(this.role()?.role === 'leader' ? 'read served by the leader' : 'read served by a follower');
      this.#answer(read.client, read.seq, read.attempt, { kind: 'read', value: this.kv.get(read.key) });
    }
  }

  /** Now and then, snapshot the state machine at the applied index and drop the log before it. */
  #maybeCompact(): void {
    const p = this.params;
    const disk = this.disk;
    if (this.applied - disk.snapshot().metadata.index < p.compactEvery) return;
    const data = this.kv.snapshot();
    disk.createSnapshot(this.applied, this.conf, data);
    this.#ctx.checker.snapshotState(this.id, this.applied, bytesHash(data));
    const to = this.applied - p.compactKeep;
    if (to >= disk.firstIndex()) disk.compact(to);
    this.#ctx.count('snapshot taken');
    this.#ctx.trace(`${this.id} snapshot at ${this.applied}, log from ${disk.firstIndex()}`);
  }
}

/** The core's ways of saying "not here, not now": the client tries again elsewhere. */
function isRefusal(err: unknown): boolean {
  return isFabricError(err, 'NOT_LEADER') || isFabricError(err, 'PROPOSAL_DROPPED');
}

