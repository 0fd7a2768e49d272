/**
 * Randomized schedules against Raft's safety properties. Each seed builds a group of 3 to 5
 * nodes with random options and runs a random schedule: ticks, message delivery in any order,
 * drops and duplicates, partitions, crashes and restarts from storage, compaction, proposals
 * and membership changes. After every step it checks:
 *   - election safety: at most one leader per term;
 *   - state machine safety: no two nodes apply different entries at one index;
 *   - leader completeness: a leader holds every entry committed in an earlier term.
 * Then faults stop and the group must elect a leader and commit a new entry everywhere.
 * A failure names its seed; `SEED=n npx vitest run test/consensus/random-safety.test.ts`
 * replays that one.
 */
import { describe, expect, test } from 'vitest';
import { SeededRng } from '../../src/core/index.ts';
import { decodeConfChange, RawNode } from '../../src/consensus/raw-node.ts';
import { MemoryStorage } from '../../src/consensus/memory-storage.ts';
import type { ConfChange, ConfState, Entry, Message, RaftConfig } from '../../src/consensus/types.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Applied {
  index: number;
  term: number;
  data: string;
}

interface SimNode {
  id: string;
  raw: RawNode;
  storage: MemoryStorage;
  config: Omit<RaftConfig, 'storage' | 'applied'>;
  applied: Applied[];
  appliedIndex: number;
  confHistory: { index: number; confState: ConfState }[];
}

class Violation extends Error {}

class Cluster {
  readonly rng: SeededRng;
  readonly nodes = new Map<string, SimNode>();
  network: Message[] = [];
  /** Node → side of the partition; null when healed. */
  side: Map<string, number> | null = null;
  /** Faults on: drops and duplicates. */
  lossy = true;
  readonly leaderOfTerm = new Map<number, string>();
  /** Every entry some node applied, with the highest term any node had when it was first seen. */
  readonly committed = new Map<number, { term: number; data: string; seenAtTerm: number }>();
  proposals = 0;

  constructor(seed: number) {
    this.rng = new SeededRng(seed);
    const n = 3 + this.rng.int(3);
    const voters = Array.from({ length: n }, (_, i) => String(i + 1));
    const preVote = this.rng.int(2) === 0;
    const checkQuorum = this.rng.int(2) === 0;
    const maxSizePerMsg = [0, 8, 64, 1 << 20][this.rng.int(4)]!;
    const maxInflightMsgs = 1 + this.rng.int(4);
    for (const id of voters) {
      const storage = new MemoryStorage({ confState: { voters, learners: [] } });
      const config = {
        id,
        electionTick: 10,
        heartbeatTick: 2,
        randomInt: (k: number) => this.rng.int(k),
        preVote,
        checkQuorum,
        maxSizePerMsg,
        maxInflightMsgs,
      };
      this.nodes.set(id, {
        id,
        raw: new RawNode({ ...config, storage, applied: 0 }),
        storage,
        config,
        applied: [],
        appliedIndex: 0,
        confHistory: [{ index: 0, confState: { voters, learners: [] } }],
      });
    }
  }

  ids(): string[] {
    return [...this.nodes.keys()];
  }

  pick<T>(items: readonly T[]): T {
    return items[this.rng.int(items.length)]!;
  }

  maxTerm(): number {
    let t = 0;
    for (const node of this.nodes.values()) t = Math.max(t, node.raw.status().term);
    return t;
  }

  /** Handles every pending Ready (persist, send, apply, advance) until all nodes are quiet. */
  drain(): void {
    // Generous: with max-size 0 a Ready carries one committed entry.
    for (let round = 0; round < 100_000; round++) {
      let busy = false;
      for (const node of this.nodes.values()) {
        if (!node.raw.hasReady()) continue;
        busy = true;
        this.#handleReady(node);
      }
      if (!busy) return;
    }
    throw new Violation('readies never settle');
  }

  #handleReady(node: SimNode): void {
    const rd = node.raw.ready();
    if (rd.snapshot !== undefined) {
      node.storage.applySnapshot(rd.snapshot);
      node.applied = JSON.parse(decoder.decode(rd.snapshot.data)) as Applied[];
      node.appliedIndex = rd.snapshot.metadata.index;
      node.confHistory = [{ index: rd.snapshot.metadata.index, confState: rd.snapshot.metadata.confState }];
    }
    node.storage.append(rd.entries);
    if (rd.hardState !== undefined) node.storage.setHardState(rd.hardState);
    if (rd.softState?.role === 'leader') this.#checkNewLeader(node);
    for (const m of rd.messages) this.#send(m);
    for (const e of rd.committedEntries) this.#apply(node, e);
    node.raw.advance(rd);
  }

  #checkNewLeader(node: SimNode): void {
    const term = node.raw.status().term;
    const other = this.leaderOfTerm.get(term);
    if (other !== undefined && other !== node.id) throw new Violation(`two leaders in term ${term}: ${other} and ${node.id}`);
    this.leaderOfTerm.set(term, node.id);
    // Leader completeness: entries committed while every term was below this one are here.
    const first = node.storage.firstIndex();
    const last = node.storage.lastIndex();
    for (const [index, c] of this.committed) {
      if (c.seenAtTerm >= term || index < first) continue;
      if (index > last || node.storage.term(index) !== c.term) {
        throw new Violation(`leader ${node.id} of term ${term} lacks committed entry ${c.term}/${index}`);
      }
    }
  }

  #apply(node: SimNode, e: Entry): void {
    const data = e.type === 'conf-change' ? `conf:${decoder.decode(e.data)}` : decoder.decode(e.data);
    const known = this.committed.get(e.index);
    if (known === undefined) {
      this.committed.set(e.index, { term: e.term, data, seenAtTerm: this.maxTerm() });
    } else if (known.term !== e.term || known.data !== data) {
      throw new Violation(`node ${node.id} applied ${e.term}/${e.index} ${data}, another applied ${known.term}/${e.index} ${known.data}`);
    }
    if (e.index !== node.appliedIndex + 1) throw new Violation(`node ${node.id} applied ${e.index} after ${node.appliedIndex}`);
    node.appliedIndex = e.index;
    node.applied.push({ index: e.index, term: e.term, data });
    if (e.type === 'conf-change') {
      const confState = node.raw.applyConfChange(decodeConfChange(e.data));
      node.confHistory.push({ index: e.index, confState });
    }
  }

  #send(m: Message): void {
    if (this.lossy && this.rng.int(100) < 5) return; // lost
    this.network.push(m);
    if (this.lossy && this.rng.int(100) < 3) this.network.push(m); // duplicated
  }

  /** Delivers one message picked at random (so messages overtake each other). */
  deliverOne(): void {
    if (this.network.length === 0) return;
    const i = this.rng.int(this.network.length);
    const m = this.network[i]!;
    this.network.splice(i, 1);
    if (this.side !== null && this.side.get(m.from) !== this.side.get(m.to)) return;
    this.nodes.get(m.to)?.raw.step(m);
  }

  propose(node: SimNode, data = `v${this.proposals++}`): void {
    try {
      node.raw.propose(encoder.encode(data));
    } catch {
      // no leader, or refused: clients retry
    }
  }

  /** A random valid single-step change, proposed at a random node. */
  proposeConfChange(node: SimNode): void {
    const leader = [...this.nodes.values()].find((n) => n.raw.status().role === 'leader');
    if (leader === undefined) return;
    const { voters, learners } = leader.raw.status().config;
    const target = this.pick(this.ids());
    let cc: ConfChange;
    if (voters.includes(target)) {
      if (voters.length <= 3) return; // keep a quorum that survives one more fault
      cc = { type: this.rng.int(2) === 0 ? 'remove-voter' : 'add-learner', node: target };
    } else if (learners.includes(target)) {
      cc = { type: this.rng.int(2) === 0 ? 'add-voter' : 'remove-voter', node: target };
    } else {
      cc = { type: this.rng.int(2) === 0 ? 'add-voter' : 'add-learner', node: target };
    }
    try {
      node.raw.proposeConfChange(cc);
    } catch {
      // one change at a time: refused while another is pending
    }
  }

  /** A crash: only what storage holds survives; the state machine restarts from the snapshot. */
  restart(node: SimNode): void {
    const snap = node.storage.snapshot();
    node.applied = snap.data.byteLength === 0 ? [] : (JSON.parse(decoder.decode(snap.data)) as Applied[]);
    node.appliedIndex = snap.metadata.index;
    node.confHistory = [{ index: snap.metadata.index, confState: snap.metadata.confState }];
    node.raw = new RawNode({ ...node.config, storage: node.storage, applied: snap.metadata.index });
  }

  /** The leader crashes with its unsent messages: the churn that exposes commit-rule bugs. */
  crashLeader(): void {
    const leader = [...this.nodes.values()].find((n) => n.raw.status().role === 'leader');
    if (leader === undefined) return;
    this.network = this.network.filter((m) => m.from !== leader.id || this.rng.int(2) === 0);
    this.restart(leader);
  }

  /** Snapshots the state machine at its applied index and drops the log up to there. */
  compact(node: SimNode): void {
    const index = node.appliedIndex;
    if (index <= node.storage.snapshot().metadata.index || index > node.storage.lastIndex()) return;
    const confState = [...node.confHistory].reverse().find((c) => c.index <= index)!.confState;
    node.storage.createSnapshot(index, confState, encoder.encode(JSON.stringify(node.applied)));
    node.storage.compact(index);
  }

  partition(): void {
    const side = new Map<string, number>();
    for (const id of this.ids()) side.set(id, this.rng.int(2));
    this.side = side;
  }

  step(): void {
    const node = this.pick([...this.nodes.values()]);
    const r = this.rng.int(1000);
    if (r < 300) node.raw.tick();
    else if (r < 800) this.deliverOne();
    else if (r < 900) this.propose(node);
    else if (r < 910) this.proposeConfChange(node);
    else if (r < 920) this.restart(node);
    else if (r < 930) this.crashLeader();
    else if (r < 945) this.compact(node);
    else if (r < 975) this.partition();
    else this.side = null;
    this.drain();
  }

  /** Faults stop: a leader must emerge and a new entry must reach every member. */
  converge(): void {
    this.side = null;
    this.lossy = false;
    const marker = `final-${this.proposals}`;
    for (let round = 0; round < 400; round++) {
      for (const node of this.nodes.values()) node.raw.tick();
      this.drain();
      while (this.network.length > 0) {
        const batch = this.network;
        this.network = [];
        for (const m of batch) this.nodes.get(m.to)?.raw.step(m);
        this.drain();
      }
      const leader = [...this.nodes.values()].find((n) => n.raw.status().role === 'leader');
      if (leader === undefined) continue;
      const { voters, learners } = leader.raw.status().config;
      const members = [...voters, ...learners].map((id) => this.nodes.get(id)!);
      if (members.every((n) => n.applied.some((a) => a.data === marker))) return;
      // A client retries now and then: a proposal can be lost with a leader change.
      if (round % 20 === 0) this.propose(leader, marker);
    }
    throw new Violation(`no convergence:\n${[...this.nodes.values()].map((n) => JSON.stringify(n.raw.status())).join('\n')}`);
  }
}

function runSeed(seed: number, steps: number): void {
  const cluster = new Cluster(seed);
  try {
    for (let i = 0; i < steps; i++) cluster.step();
    cluster.converge();
  } catch (err) {
    if (err instanceof Violation) throw new Error(`seed ${seed}: ${err.message}`);
    throw new Error(`seed ${seed}: ${err instanceof Error ? err.stack : String(err)}`);
  }
  // Something happened at all: entries were committed and leaders were elected.
  expect(cluster.committed.size, `seed ${seed}: nothing committed`).toBeGreaterThan(0);
  expect(cluster.leaderOfTerm.size, `seed ${seed}: no leader ever`).toBeGreaterThan(0);
}

describe('raft under random schedules', () => {
  const only = process.env.SEED;
  if (only !== undefined) {
    test(`seed ${only}`, () => runSeed(Number(only), 2000));
    return;
  }
  test('a seed replays exactly', () => {
    const run = () => {
      const cluster = new Cluster(7);
      for (let i = 0; i < 1500; i++) cluster.step();
      return { committed: [...cluster.committed], leaders: [...cluster.leaderOfTerm], status: [...cluster.nodes.values()].map((n) => n.raw.status()) };
    };
    expect(run()).toEqual(run());
  });

  test('300 seeds of 3000 steps keep election safety, state machine safety and leader completeness, then converge', () => {
    for (let seed = 1; seed <= 300; seed++) runSeed(seed, 3000);
  });
});
