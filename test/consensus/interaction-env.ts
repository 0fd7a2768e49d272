/**
 * The world the scripted Raft tests run in (after etcd's rafttest.InteractionEnv): a few
 * RawNodes with MemoryStorage, a network queue the script delivers, drops or partitions, and
 * per node a toy state machine (the list of applied values) so that snapshots carry state.
 *
 * Commands (ids are small integers; `(1,2,3)` is a list):
 *   add-nodes N [voters=(..)] [learners=(..)] [index=I] [bootstrap=bool] [pre-vote=bool]
 *             [check-quorum=bool] [max-size=BYTES] [max-inflight=N] [learner-heartbeat-tick=N]
 *                                   new nodes, their storage seeded with a snapshot at index I
 *                                   (term 1) holding the config; with bootstrap=true, with the
 *                                   config as committed conf-change entries 1..n at term 1
 *                                   instead (a new group's founders; no voters: an empty node)
 *   campaign ID                     start an election (pre-vote first when enabled)
 *   forget-leader ID                a follower stops honouring its leader's lease (grants votes)
 *   propose ID DATA                 propose a normal entry
 *   propose-conf-change ID TYPE NODE   TYPE: add-voter | remove-voter | add-learner
 *   tick ID [N]                     N ticks (default 1)
 *   tick-election ID                electionTick ticks (leaders: heartbeats and check-quorum)
 *   tick-heartbeat ID               heartbeatTick ticks
 *   stabilize [ID...]               handle Readies and deliver messages until nothing moves
 *   process-ready ID...             handle one Ready of each node (persist, send, apply, advance)
 *   deliver-msgs ID... [from=ID] [type=T]   deliver the queued messages to each node
 *   drop-msgs [to=ID] [from=ID] [type=T]    drop queued messages
 *   partition (1,2) (3)             only nodes of one group reach each other (nodes not named: one more group)
 *   heal                            end the partition
 *   compact ID INDEX                snapshot the state machine at INDEX (<= applied) and compact the log
 *   transfer-leadership from=ID to=ID
 *   read-index ID CTX               ask for a linearizable read
 *   report-unreachable ID PEER
 *   restart ID                      rebuild the node from its storage (its queued inbox is lost)
 *   status ID                       the node's status (progress of peers on a leader)
 *   raft-log ID                     the node's durable log
 *   raft-state                      role, term, leader, commit and applied of every node
 *   state-machine ID                the values the node has applied
 */
import { isFabricError } from '../../src/core/index.ts';
import { decodeConfChange, RawNode } from '../../src/consensus/raw-node.ts';
import { MemoryStorage } from '../../src/consensus/memory-storage.ts';
import { describeConfState, describeEntry, describeMessage, describeReady } from '../../src/consensus/describe.ts';
import type { ConfChange, ConfState, Message, RaftConfig } from '../../src/consensus/types.ts';

export interface Command {
  name: string;
  args: string[];
  /** key=value arguments; a list value `(1,2)` stays as written. */
  options: Map<string, string>;
}

export function parseCommand(line: string): Command {
  const [name = '', ...tokens] = line.trim().split(/\s+/);
  const args: string[] = [];
  const options = new Map<string, string>();
  for (const t of tokens) {
    const eq = t.indexOf('=');
    if (eq > 0) options.set(t.slice(0, eq), t.slice(eq + 1));
    else args.push(t);
  }
  return { name, args, options };
}

function parseList(value: string | undefined): string[] {
  if (value === undefined) return [];
  const inner = value.replace(/^\(/, '').replace(/\)$/, '').trim();
  return inner === '' ? [] : inner.split(',').map((s) => s.trim());
}

function parseBool(value: string | undefined, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (value !== 'true' && value !== 'false') throw new Error(`not a boolean: ${value}`);
  return value === 'true';
}

const ELECTION_TICK = 10;
const HEARTBEAT_TICK = 5;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Applied {
  index: number;
  value: string;
}

interface EnvNode {
  id: string;
  raw: RawNode;
  storage: MemoryStorage;
  config: Omit<RaftConfig, 'storage' | 'applied'>;
  /** The toy state machine: every non-empty normal entry applied, in order. */
  applied: Applied[];
  /** The configuration after each applied change (and the snapshot's), to snapshot at any index. */
  confHistory: { index: number; confState: ConfState }[];
}

export class InteractionEnv {
  readonly nodes = new Map<string, EnvNode>();
  /** Messages sent and not yet delivered or dropped, in send order. */
  messages: Message[] = [];
  #groups: Map<string, number> | null = null;
  #out: string[] = [];

  /** Runs one command and returns its output ("ok" when it printed nothing). */
  handle(line: string): string {
    this.#out = [];
    const cmd = parseCommand(line);
    this.#dispatch(cmd);
    return this.#out.length === 0 ? 'ok' : this.#out.join('\n');
  }

  #print(line: string): void {
    this.#out.push(line);
  }

  #node(id: string | undefined): EnvNode {
    const node = id === undefined ? undefined : this.nodes.get(id);
    if (node === undefined) throw new Error(`no node ${String(id)}`);
    return node;
  }

  #sortedIds(): string[] {
    return [...this.nodes.keys()].sort((a, b) => Number(a) - Number(b));
  }

  #dispatch(cmd: Command): void {
    const { args, options } = cmd;
    switch (cmd.name) {
      case 'add-nodes':
        this.#addNodes(Number(args[0]), options);
        return;
      case 'campaign':
        this.#node(args[0]).raw.campaign();
        return;
      case 'forget-leader':
        this.#node(args[0]).raw.forgetLeader();
        return;
      case 'propose':
        this.#tryRequest(() => this.#node(args[0]).raw.propose(encoder.encode(args[1] ?? '')));
        return;
      case 'propose-conf-change': {
        const cc = { type: args[1], node: args[2] } as ConfChange;
        this.#tryRequest(() => this.#node(args[0]).raw.proposeConfChange(cc));
        return;
      }
      case 'tick':
        this.#tick(args[0], Number(args[1] ?? 1));
        return;
      case 'tick-election':
        this.#tick(args[0], this.#node(args[0]).config.electionTick);
        return;
      case 'tick-heartbeat':
        this.#tick(args[0], this.#node(args[0]).config.heartbeatTick);
        return;
      case 'stabilize':
        this.#stabilize(args.length > 0 ? args : this.#sortedIds());
        return;
      case 'process-ready':
        for (const id of args) this.#processReady(this.#node(id));
        return;
      case 'deliver-msgs':
        for (const id of args) this.#deliver(id, (m) => matches(m, options));
        return;
      case 'drop-msgs':
        this.#dropMessages(options);
        return;
      case 'partition':
        this.#partition(args);
        return;
      case 'heal':
        this.#groups = null;
        return;
      case 'compact':
        this.#compact(this.#node(args[0]), Number(args[1]));
        return;
      case 'transfer-leadership':
        this.#node(options.get('from')).raw.transferLeadership(options.get('to') ?? '');
        return;
      case 'read-index':
        this.#tryRequest(() => this.#node(args[0]).raw.readIndex(encoder.encode(args[1] ?? '')));
        return;
      case 'report-unreachable':
        this.#node(args[0]).raw.reportUnreachable(args[1] ?? '');
        return;
      case 'restart':
        this.#restart(this.#node(args[0]));
        return;
      case 'status':
        this.#printStatus(this.#node(args[0]));
        return;
      case 'raft-log':
        this.#printLog(this.#node(args[0]));
        return;
      case 'raft-state':
        for (const id of this.#sortedIds()) {
          const s = this.#node(id).raw.status();
          this.#print(`${id}: ${s.role} term=${s.term} lead=${s.lead ?? '-'} commit=${s.commit} applied=${s.applied} last=${s.lastIndex}`);
        }
        return;
      case 'state-machine': {
        const node = this.#node(args[0]);
        this.#print(`applied values: [${node.applied.map((a) => `${a.index}:${a.value}`).join(' ')}]`);
        return;
      }
      default:
        throw new Error(`unknown command: ${cmd.name}`);
    }
  }

  #addNodes(n: number, options: Map<string, string>): void {
    const voters = parseList(options.get('voters'));
    const learners = parseList(options.get('learners'));
    const index = Number(options.get('index') ?? 0);
    const bootstrap = parseBool(options.get('bootstrap'), false);
    if (bootstrap && index > 0) throw new Error('add-nodes: bootstrap=true starts from an empty log, not a snapshot at index>0');
    for (let i = 0; i < n; i++) {
      const id = String(this.nodes.size + 1);
      const confState = { voters, learners };
      const storage = bootstrap ? new MemoryStorage({ bootstrap: confState }) : new MemoryStorage({ confState });
      if (index > 0) {
        storage.applySnapshot({ metadata: { index, term: 1, confState }, data: encodeValues([]) });
        // What a node that installed this snapshot would have persisted with it.
        storage.setHardState({ term: 1, vote: null, commit: index });
      }
      const initialConf = bootstrap ? { voters: [], learners: [] } : confState;
      const config = {
        id,
        electionTick: ELECTION_TICK,
        heartbeatTick: HEARTBEAT_TICK,
        learnerHeartbeatTick: Number(options.get('learner-heartbeat-tick') ?? HEARTBEAT_TICK),
        // No jitter: a node times out after exactly electionTick ticks, so scripts are exact.
        randomInt: () => 0,
        preVote: parseBool(options.get('pre-vote'), true),
        checkQuorum: parseBool(options.get('check-quorum'), true),
        maxSizePerMsg: Number(options.get('max-size') ?? 1 << 20),
        maxInflightMsgs: Number(options.get('max-inflight') ?? 256),
      };
      const node: EnvNode = { id, raw: new RawNode({ ...config, storage, applied: 0 }), storage, config, applied: [], confHistory: [{ index, confState: initialConf }] };
      this.nodes.set(id, node);
    }
  }

  #tryRequest(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (!isFabricError(err)) throw err;
      this.#print(`error: ${err.code}: ${err.message}`);
    }
  }

  #tick(id: string | undefined, n: number): void {
    const node = this.#node(id);
    for (let i = 0; i < n; i++) node.raw.tick();
  }

  #stabilize(ids: string[]): void {
    for (let round = 0; round < 1000; round++) {
      let moved = false;
      for (const id of ids) {
        const node = this.#node(id);
        if (node.raw.hasReady()) {
          this.#processReady(node);
          moved = true;
        }
      }
      for (const id of ids) {
        if (this.messages.some((m) => m.to === id)) {
          this.#deliver(id, () => true);
          moved = true;
        }
      }
      if (!moved) return;
    }
    throw new Error('stabilize: still busy after 1000 rounds');
  }

  /** What a driver does with a Ready: persist, send, apply, advance. */
  #processReady(node: EnvNode): void {
    const rd = node.raw.ready();
    this.#print(`> ${node.id} handling Ready`);
    const description = describeReady(rd, '  ');
    if (description !== '') this.#print(description);
    if (rd.snapshot !== undefined) {
      node.storage.applySnapshot(rd.snapshot);
      node.applied = decodeValues(rd.snapshot.data);
      node.confHistory = [{ index: rd.snapshot.metadata.index, confState: rd.snapshot.metadata.confState }];
    }
    node.storage.append(rd.entries);
    if (rd.hardState !== undefined) node.storage.setHardState(rd.hardState);
    this.messages.push(...rd.messages);
    for (const e of rd.committedEntries) {
      if (e.type === 'conf-change') {
        const cc = decodeConfChange(e.data);
        const confState = node.raw.applyConfChange(cc);
        node.confHistory.push({ index: e.index, confState });
        this.#print(`  applied ${e.index}: ${cc.type} ${cc.node} -> ${describeConfState(confState)}`);
      } else if (e.data.byteLength > 0) {
        node.applied.push({ index: e.index, value: decoder.decode(e.data) });
      }
    }
    node.raw.advance(rd);
  }

  #deliver(to: string, filter: (m: Message) => boolean): void {
    const node = this.#node(to);
    const batch = this.messages.filter((m) => m.to === to && filter(m));
    if (batch.length === 0) return;
    this.messages = this.messages.filter((m) => !batch.includes(m));
    this.#print(`> ${to} receiving messages`);
    for (const m of batch) {
      if (this.#partitioned(m.from, m.to)) {
        this.#print(`  dropped (partition): ${describeMessage(m)}`);
        continue;
      }
      this.#print(`  ${describeMessage(m)}`);
      try {
        node.raw.step(m);
      } catch (err) {
        this.#print(`  error: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  #dropMessages(options: Map<string, string>): void {
    const dropped = this.messages.filter((m) => matches(m, options));
    this.messages = this.messages.filter((m) => !dropped.includes(m));
    for (const m of dropped) this.#print(`dropped: ${describeMessage(m)}`);
  }

  #partition(groups: string[]): void {
    const byNode = new Map<string, number>();
    groups.forEach((g, i) => {
      for (const id of parseList(g)) byNode.set(id, i);
    });
    for (const id of this.nodes.keys()) if (!byNode.has(id)) byNode.set(id, groups.length);
    this.#groups = byNode;
  }

  #partitioned(a: string, b: string): boolean {
    if (this.#groups === null) return false;
    return this.#groups.get(a) !== this.#groups.get(b);
  }

  #compact(node: EnvNode, index: number): void {
    const status = node.raw.status();
    if (index > status.applied) throw new Error(`compact ${index}: node ${node.id} applied only ${status.applied}`);
    const confState = [...node.confHistory].reverse().find((c) => c.index <= index)?.confState;
    if (confState === undefined) throw new Error(`compact ${index}: no configuration known at that index`);
    const data = encodeValues(node.applied.filter((a) => a.index <= index));
    node.storage.createSnapshot(index, confState, data);
    node.storage.compact(index);
  }

  /** A crash and restart: only what storage holds survives; the state machine restarts from the snapshot. */
  #restart(node: EnvNode): void {
    const snapshot = node.storage.snapshot();
    node.applied = decodeValues(snapshot.data);
    node.confHistory = [{ index: snapshot.metadata.index, confState: snapshot.metadata.confState }];
    node.raw = new RawNode({ ...node.config, storage: node.storage, applied: snapshot.metadata.index });
    this.messages = this.messages.filter((m) => m.to !== node.id);
  }

  #printStatus(node: EnvNode): void {
    const s = node.raw.status();
    this.#print(`${s.id}: ${s.role} term=${s.term} vote=${s.vote ?? '-'} lead=${s.lead ?? '-'} commit=${s.commit} applied=${s.applied} last=${s.lastIndex}`);
    this.#print(`config: ${describeConfState(s.config)}${s.leadTransferee !== null ? ` transferring-to=${s.leadTransferee}` : ''}`);
    for (const p of s.progress) {
      const extra = p.state === 'snapshot' ? ` pending-snapshot=${p.pendingSnapshot}` : '';
      this.#print(`  ${p.id}${p.learner ? ' (learner)' : ''}: ${p.state} match=${p.match} next=${p.next} inflight=${p.inflight}${extra}`);
    }
  }

  #printLog(node: EnvNode): void {
    const first = node.storage.firstIndex();
    const last = node.storage.lastIndex();
    const snap = node.storage.snapshot().metadata;
    if (snap.index > 0) this.#print(`snapshot ${snap.term}/${snap.index}`);
    if (last < first) {
      this.#print('log is empty');
      return;
    }
    for (const e of node.storage.entries(first, last + 1)) this.#print(describeEntry(e));
  }
}

function matches(m: Message, options: Map<string, string>): boolean {
  for (const [key, value] of options) {
    if (key === 'from' && m.from !== value) return false;
    if (key === 'to' && m.to !== value) return false;
    if (key === 'type' && m.type !== value) return false;
  }
  return true;
}

/** Snapshot data: `index:value` pairs separated by spaces (values are script tokens, no spaces). */
function encodeValues(values: Applied[]): Uint8Array {
  return encoder.encode(values.map((a) => `${a.index}:${a.value}`).join(' '));
}

function decodeValues(data: Uint8Array): Applied[] {
  const text = decoder.decode(data);
  if (text === '') return [];
  return text.split(' ').map((pair) => {
    const colon = pair.indexOf(':');
    return { index: Number(pair.slice(0, colon)), value: pair.slice(colon + 1) };
  });
}
