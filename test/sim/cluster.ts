/**
 * A whole simulated cluster in one process, driven by one seed: N nodes (RawNode + SimDisk + KV
 * state machine + driver), clients, the network, and a nemesis that crashes and restarts nodes,
 * partitions and heals the network, changes its fault rates, transfers leadership, removes and
 * adds voters, while the state machines snapshot and compact their logs on their own.
 *
 * A run has two phases. Faults: `steps` events under the nemesis. Quiet: every fault stops, every
 * node restarts, and the cluster must elect a leader, finish the clients' requests and converge
 * within `quietMs` of simulated time. Invariants are checked after every event of both phases.
 */
import { SeededRng, type Rng } from '../../src/core/index.ts';
import type { ConfChange, ConfState } from '../../src/consensus/types.ts';
import { SimClient } from './client.ts';
import { SimNode, type DriverBug, type NodeParams } from './driver.ts';
import { Hasher, bytesHash } from './hash.ts';
import { InvariantChecker, InvariantViolation } from './invariants.ts';
import { checkLinearizable, type Operation } from './linearizability.ts';
import { SimNetwork, type NetworkFaults } from './network.ts';
import { Scheduler } from './scheduler.ts';
import { copyWire, type Wire } from './wire.ts';

export interface SimOptions {
  seed: number;
  /** Events processed under faults before the quiet phase. */
  steps: number;
  /** Simulated time the cluster gets to converge once faults stop. */
  quietMs?: number;
  bug?: DriverBug;
  /**
   * How a node added later starts. 'genesis' (default): its disk is bootstrapped with the group's
   * first configuration, exactly as every founder's is (the same committed entries 1..n at term
   * 1, so its log agrees with theirs). 'empty': it starts with an empty disk and no configuration
   * at all, as the daemon's joiners do, and learns the configuration from the log it replicates
   * (from index 1, or from a snapshot).
   */
  joiners?: 'genesis' | 'empty';
  /** Disks write each sync as one all-or-nothing record, like DiskRaftStore (see DiskOptions). */
  atomicSyncs?: boolean;
  /** Receives the run's trace lines (--verbose). */
  log?: (line: string) => void;
}

/** Everything the seed decides up front; printed at the start of a verbose run. */
export interface SimParams {
  nodes: number;
  clients: number;
  keys: string[];
  node: Omit<NodeParams, 'tickMs'>;
  tickMs: number[];
  faults: NetworkFaults;
  /** Mean time between nemesis actions. */
  nemesisMs: number;
  /** Relative weights of the nemesis actions. */
  weights: Record<NemesisAction, number>;
  clientTimeoutMs: number;
  thinkMs: number;
}

type NemesisAction = 'crash' | 'crash-leader' | 'partition' | 'network' | 'transfer' | 'membership' | 'pause';

export interface SimReport {
  seed: number;
  steps: number;
  simMs: number;
  traceHash: number;
  nodes: number;
  leaders: number;
  commits: number;
  acked: number;
  operations: number;
  crashes: number;
  confChanges: number;
  /** How often each kind of event happened: what the run exercised. */
  coverage: Record<string, number>;
}

const MAX_EXTRA_NODES = 4;
const MIN_TICK_MS = 8;

export function deriveParams(seed: number): SimParams {
  const rng = new SeededRng(seed ^ 0x5eed);
  const nodes = 3 + rng.int(3);
  const heartbeatTick = 1 + rng.int(3);
  const electionTick = heartbeatTick * (4 + rng.int(4)) + rng.int(3);
  // From the seed, not the rng, so that every other parameter stays as it was: learners at the
  // voters' rate, 3 times slower, or slower than the election timeout (as the daemon's are).
  const learnerHeartbeatTick = heartbeatTick * [1, 3, 8][(seed >>> 0) % 3]!;
  // Mostly a network fast next to the election timeout; in some seeds one as slow as the timeout,
  // where elections often fail and safety must hold through the churn.
  const electionMs = electionTick * MIN_TICK_MS;
  const maxLatency = 2 + rng.int(Math.max(1, Math.floor(electionMs * (rng.next() < 0.15 ? 1 : 0.3))));
  const weight = () => rng.int(5);
  return {
    nodes,
    clients: 2 + rng.int(6),
    keys: ['x', 'y', 'z'].slice(0, 1 + rng.int(3)),
    node: {
      electionTick,
      heartbeatTick,
      learnerHeartbeatTick,
      preVote: rng.next() < 0.75,
      checkQuorum: rng.next() < 0.75,
      maxSizePerMsg: rng.next() < 0.3 ? 64 : 4096,
      maxInflightMsgs: 1 + rng.int(8),
      // An fsync sits on every election's path twice (candidate, voter): keep it well under the timeout.
      diskLatencyMs: Math.min(rng.next() < 0.3 ? rng.int(25) : rng.int(4), Math.floor((electionTick * MIN_TICK_MS) / 4)),
      compactEvery: 5 + rng.int(60),
      compactKeep: rng.int(8),
    },
    tickMs: Array.from({ length: nodes + MAX_EXTRA_NODES }, () => MIN_TICK_MS + rng.int(5)),
    faults: randomFaults(rng, maxLatency),
    nemesisMs: 30 + rng.int(300),
    weights: {
      crash: weight(),
      'crash-leader': weight(),
      partition: weight(),
      network: weight(),
      transfer: rng.int(2),
      membership: rng.int(3),
      pause: weight(),
    },
    clientTimeoutMs: 100 + rng.int(300),
    thinkMs: rng.int(30),
  };
}

function randomFaults(rng: Rng, maxLatency: number): NetworkFaults {
  return {
    dropRate: rng.next() < 0.3 ? 0 : rng.next() * 0.15,
    duplicateRate: rng.next() < 0.5 ? 0 : rng.next() * 0.05,
    minLatencyMs: 1,
    maxLatencyMs: maxLatency,
    spikeRate: rng.next() < 0.5 ? 0 : rng.next() * 0.05,
    spikeMaxMs: 50 + rng.int(500),
  };
}

export class Cluster {
  readonly seed: number;
  readonly params: SimParams;
  readonly scheduler = new Scheduler();
  readonly rng: Rng;
  readonly checker = new InvariantChecker();
  readonly net: SimNetwork<Wire>;
  readonly nodes = new Map<string, SimNode>();
  readonly clients: SimClient[] = [];
  readonly #options: SimOptions;
  readonly #trace = new Hasher();
  #logicalTime = 0;
  #phase: 'faults' | 'quiet' = 'faults';
  #steps = 0;
  #nextNode = 1;
  /** The newest configuration any node applied, and the index of its entry. */
  #latestConf: { index: number; conf: ConfState };
  readonly #genesis: ConfState;
  /** Nodes started to be added, not yet seen in a configuration. */
  #joining = new Set<string>();
  #confChanges = 0;
  readonly #coverage = new Map<string, number>();
  /** Nodes paused (a long GC or a stopped VM): they keep their memory but skip time. */
  #paused = new Set<string>();

  constructor(options: SimOptions) {
    this.seed = options.seed;
    this.#options = options;
    this.params = deriveParams(options.seed);
    this.rng = new SeededRng(options.seed);
    this.net = new SimNetwork<Wire>(this.scheduler, this.rng, (_from, to, wire) => this.#deliver(to, wire), copyWire);
    this.net.setFaults(this.params.faults);
    const voters = Array.from({ length: this.params.nodes }, (_, i) => `n${i + 1}`);
    // The founders' disks hold the first configuration as the bootstrap entries 1..n.
    this.#latestConf = { index: voters.length, conf: { voters, learners: [] } };
    this.#genesis = { voters, learners: [] };
    for (const id of voters) this.#addNode(id, { voters, learners: [] });
    for (let i = 1; i <= this.params.clients; i++) {
      const client = new SimClient(
        `c${i}`,
        { keys: this.params.keys, thinkMs: this.params.thinkMs, timeoutMs: this.params.clientTimeoutMs },
        {
          scheduler: this.scheduler,
          rng: this.rng,
          send: (from, to, wire) => this.#send(from, to, wire),
          members: () => this.members(),
          logicalTime: () => ++this.#logicalTime,
          trace: (line) => this.#traceLine(line),
        },
      );
      this.clients.push(client);
    }
  }

  /** Runs both phases and the final checks; throws InvariantViolation on the first violation. */
  run(): SimReport {
    this.#traceLine(`seed ${this.seed} params ${JSON.stringify(this.params)}`);
    for (const node of this.nodes.values()) node.start();
    for (const client of this.clients) client.start();
    this.#scheduleNemesis();
    while (this.#steps < this.#options.steps && this.#step());
    this.#startQuiet();
    const deadline = this.scheduler.now() + (this.#options.quietMs ?? 15_000);
    let converged = false;
    while (this.scheduler.now() < deadline) {
      if (this.#steps % 50 === 0 && this.#converged() === undefined) {
        converged = true;
        break;
      }
      if (!this.#step()) break;
    }
    const why = converged ? undefined : this.#converged();
    if (why !== undefined) throw new InvariantViolation('liveness', `${this.#options.quietMs ?? 15_000} ms after faults stopped: ${why}`);
    for (const c of this.clients) c.abandon();
    const result = checkLinearizable(this.history());
    if (!result.ok) {
      const ops = [...result.operations].sort((a, b) => a.call - b.call).map(describeOperation).join('\n    ');
      throw new InvariantViolation('linearizability', `key ${result.key}: ${result.reason}; its history:\n    ${ops}`);
    }
    let crashes = 0;
    for (const n of this.nodes.values()) crashes += n.crashes;
    let commits = 0;
    for (const n of this.nodes.values()) commits = Math.max(commits, n.applied);
    this.#trace.int(commits);
    return {
      seed: this.seed,
      steps: this.#steps,
      simMs: this.scheduler.now(),
      traceHash: this.#trace.digest(),
      nodes: this.nodes.size,
      leaders: this.checker.leaders(),
      commits,
      acked: this.checker.ackedCount(),
      operations: result.operations,
      crashes,
      confChanges: this.#confChanges,
      coverage: Object.fromEntries(this.#coverage),
    };
  }

  history(): Operation[] {
    return this.clients.flatMap((c) => c.history);
  }

  /** Members of the newest configuration that still run (or may restart). */
  members(): string[] {
    const c = this.#latestConf.conf;
    return [...c.voters, ...c.learners].filter((id) => this.nodes.get(id)?.retired === false);
  }

  stepsTaken(): number {
    return this.#steps;
  }

  traceHash(): number {
    return this.#trace.digest();
  }

  // ---- the event loop ----

  #step(): boolean {
    if (!this.scheduler.runNext()) return false;
    this.#steps++;
    this.checker.checkDurability(this.#latestConf.conf.voters, (id) => this.nodes.get(id)?.disk);
    return true;
  }

  #count(what: string): void {
    this.#coverage.set(what, (this.#coverage.get(what) ?? 0) + 1);
  }

  #traceLine(line: string): void {
    this.#trace.str(line);
    this.#options.log?.(`${String(this.scheduler.now()).padStart(6)} ${line}`);
  }

  #send(from: string, to: string, wire: Wire, outcome?: (delivered: boolean) => void): void {
    const kind = wire.kind === 'raft' ? wire.message.type : wire.kind;
    this.#trace.int(this.scheduler.now()).str(from).str(to).str(kind);
    this.#count(`message ${kind}`);
    this.net.send(from, to, wire, outcome);
  }

  #deliver(to: string, wire: Wire): void {
    this.#trace.int(this.scheduler.now()).str(to);
    if (wire.kind === 'response') {
      this.clients.find((c) => c.id === to)?.receive(wire.response);
      return;
    }
    const node = this.nodes.get(to);
    if (node === undefined || this.#paused.has(to)) return;
    node.deliver(wire);
  }

  #addNode(id: string, conf: ConfState): SimNode {
    const index = Number(id.slice(1)) - 1;
    const node = new SimNode(id, conf, { ...this.params.node, tickMs: this.params.tickMs[index] ?? 10 }, {
      scheduler: this.scheduler,
      rng: this.rng,
      checker: this.checker,
      bug: this.#options.bug,
      atomicSyncs: this.#options.atomicSyncs ?? false,
      send: (from, to, wire, outcome) => this.#send(from, to, wire, outcome),
      trace: (line) => this.#traceLine(line),
      count: (what) => this.#count(what),
      confApplied: (node, at, cc, c) => this.#confApplied(node, at, cc, c),
    });
    this.nodes.set(id, node);
    this.#nextNode = Math.max(this.#nextNode, index + 2);
    return node;
  }

  #confApplied(node: string, index: number, cc: ConfChange, conf: ConfState): void {
    this.checker.configApplied(node, index, conf);
    if (index <= this.#latestConf.index) return;
    this.#latestConf = { index, conf };
    this.#confChanges++;
    this.#count(`config ${cc.type}`);
    this.#traceLine(`config ${index}: ${cc.type} ${cc.node} → voters ${conf.voters.join(',')} learners ${conf.learners.join(',') || '-'}`);
    const members = new Set([...conf.voters, ...conf.learners]);
    for (const id of members) this.#joining.delete(id);
    // A removed node shuts down a little later (it may disrupt until then, as a real one would).
    for (const [id, n] of this.nodes) {
      if (members.has(id) || this.#joining.has(id) || n.retired) continue;
      this.scheduler.setTimer(this.rng.int(300), () => {
        const now = this.#latestConf.conf;
        if (now.voters.includes(id) || now.learners.includes(id) || n.retired) return;
        n.retire();
        this.#paused.delete(id);
        this.#traceLine(`${id} retired`);
      });
    }
  }

  // ---- the nemesis ----

  #scheduleNemesis(): void {
    const delay = 1 + this.rng.int(2 * this.params.nemesisMs);
    this.scheduler.setTimer(delay, () => {
      if (this.#phase !== 'faults') return;
      this.#nemesis();
      this.#scheduleNemesis();
    });
  }

  #nemesis(): void {
    const weights = this.params.weights;
    const total = Object.values(weights).reduce((a, b) => a + b, 0);
    if (total === 0) return;
    let roll = this.rng.int(total);
    let action: NemesisAction = 'crash';
    for (const [name, w] of Object.entries(weights) as [NemesisAction, number][]) {
      if (roll < w) {
        action = name;
        break;
      }
      roll -= w;
    }
    switch (action) {
      case 'crash': {
        const node = this.#pick([...this.nodes.values()].filter((n) => n.up));
        // Half the time, in the middle of an fsync: that is when writes are lost or torn.
        if (node !== undefined && this.rng.next() < 0.5) node.crashBeforeNextSync(() => this.#crash(node), this.rng.int(2) * 2);
        else this.#crash(node);
        return;
      }
      case 'crash-leader':
        this.#crash(this.#leader());
        return;
      case 'partition':
        this.#partition();
        return;
      case 'network':
        this.net.setFaults(randomFaults(this.rng, this.params.faults.maxLatencyMs));
        this.#traceLine(`network ${JSON.stringify(this.net.faults())}`);
        return;
      case 'transfer': {
        const leader = this.#leader();
        const to = this.#pick(this.#latestConf.conf.voters.filter((id) => id !== leader?.id && this.nodes.get(id)?.up));
        if (leader !== undefined && to !== undefined) {
          this.#traceLine(`transfer leadership ${leader.id} → ${to}`);
          this.#count('leadership transfer asked');
          leader.transferLeadership(to);
        }
        return;
      }
      case 'membership':
        this.#changeMembership();
        return;
      case 'pause':
        this.#pause();
        return;
    }
  }

  #pick<T>(items: readonly T[]): T | undefined {
    return items.length === 0 ? undefined : items[this.rng.int(items.length)];
  }

  #leader(): SimNode | undefined {
    let best: SimNode | undefined;
    let bestTerm = -1;
    for (const n of this.nodes.values()) {
      const r = n.role();
      if (r?.role === 'leader' && r.term > bestTerm && !this.#paused.has(n.id)) {
        best = n;
        bestTerm = r.term;
      }
    }
    return best;
  }

  #crash(node: SimNode | undefined): void {
    if (node === undefined || !node.up || this.#phase !== 'faults') return;
    this.#paused.delete(node.id);
    node.crash();
    const downFor = this.rng.next() < 0.8 ? this.rng.int(500) : this.rng.int(3000);
    this.scheduler.setTimer(downFor, () => {
      if (this.#phase === 'faults') node.start();
    });
  }

  #partition(): void {
    const ids = [...this.nodes.keys()].filter((id) => !this.nodes.get(id)!.retired);
    const shuffled = this.rng.shuffle([...ids]);
    const form = this.rng.int(4);
    let groups: string[][];
    if (form === 3) {
      // One-way: a node (often the leader) that can still send but no longer hears some peers, or the reverse.
      const leader = this.#leader();
      const node = leader !== undefined && this.rng.next() < 0.5 ? leader.id : shuffled[0]!;
      const inbound = this.rng.next() < 0.5;
      for (const peer of this.rng.sample(ids.filter((id) => id !== node), 1 + this.rng.int(ids.length - 1))) {
        if (inbound) this.net.cutOneWay(peer, node);
        else this.net.cutOneWay(node, peer);
      }
      groups = [];
    } else if (form === 0) {
      // Isolate one node (often the leader: the classic stale-leader case).
      const leader = this.#leader();
      const alone = leader !== undefined && this.rng.next() < 0.5 ? leader.id : shuffled[0]!;
      groups = [[alone], ids.filter((id) => id !== alone)];
    } else if (form === 1) {
      const cut = 1 + this.rng.int(Math.max(1, shuffled.length - 1));
      groups = [shuffled.slice(0, cut), shuffled.slice(cut)];
    } else {
      groups = [[], [], []];
      for (const id of shuffled) groups[this.rng.int(3)]!.push(id);
    }
    if (groups.length > 0) this.net.partition(groups.filter((g) => g.length > 0));
    this.#traceLine(`partition ${this.net.describePartition()}`);
    this.#count('partition');
    const healIn = 50 + this.rng.int(2000);
    this.scheduler.setTimer(healIn, () => {
      if (this.#phase !== 'faults' || !this.net.isPartitioned()) return;
      this.net.heal();
      this.#traceLine('heal');
    });
  }

  /** A node stops for a while (a stopped VM) and comes back with its memory, unaware of the gap. */
  #pause(): void {
    const node = this.#pick([...this.nodes.values()].filter((n) => n.up && !this.#paused.has(n.id)));
    if (node === undefined) return;
    this.#paused.add(node.id);
    node.setPaused(true);
    this.#traceLine(`${node.id} paused`);
    this.#count('pause');
    this.scheduler.setTimer(50 + this.rng.int(1000), () => {
      if (!this.#paused.delete(node.id)) return;
      node.setPaused(false);
      this.#traceLine(`${node.id} resumed`);
    });
  }

  #changeMembership(): void {
    const leader = this.#leader();
    if (leader === undefined) return;
    const voters = this.#latestConf.conf.voters;
    const add = voters.length <= 3 ? true : voters.length >= 5 ? false : this.rng.next() < 0.5;
    let cc: ConfChange;
    if (add) {
      let joiner = [...this.#joining].map((id) => this.nodes.get(id)!).find((n) => !n.retired);
      if (joiner === undefined) {
        if (this.nodes.size >= this.params.nodes + MAX_EXTRA_NODES) return;
        const conf = this.#options.joiners === 'empty' ? { voters: [], learners: [] } : this.#genesis;
        joiner = this.#addNode(`n${this.#nextNode}`, conf);
        this.#joining.add(joiner.id);
        joiner.start();
      }
      cc = { type: this.rng.next() < 0.3 ? 'add-learner' : 'add-voter', node: joiner.id };
    } else {
      // Removing the leader itself is allowed but rare: it must step down once the change applies.
      const candidates = voters.filter((id) => id !== leader.id || this.rng.next() < 0.1);
      const target = this.#pick(candidates);
      if (target === undefined) return;
      cc = { type: 'remove-voter', node: target };
    }
    // A learner gets promoted by a later add-voter of the same node.
    const learner = this.#latestConf.conf.learners[0];
    if (add && learner !== undefined && this.nodes.get(learner)?.retired === false) cc = { type: 'add-voter', node: learner };
    const accepted = leader.proposeConfChange(cc);
    this.#traceLine(`propose ${cc.type} ${cc.node} via ${leader.id}: ${accepted ? 'accepted' : 'refused'}`);
  }

  // ---- the quiet phase ----

  #startQuiet(): void {
    this.#phase = 'quiet';
    this.net.heal();
    // Raft is live only when a round trip (plus two fsyncs) fits well within the election timeout;
    // under faults the latency may break that on purpose, but not once they stop.
    const p = this.params;
    const budget = p.node.electionTick * MIN_TICK_MS - 2 * p.node.diskLatencyMs;
    const maxLatencyMs = Math.max(1, Math.min(p.faults.maxLatencyMs, Math.floor(budget / 4)));
    this.net.setFaults({ ...p.faults, dropRate: 0, duplicateRate: 0, spikeRate: 0, maxLatencyMs });
    for (const id of this.#paused) this.nodes.get(id)?.setPaused(false);
    this.#paused.clear();
    for (const n of this.nodes.values()) if (!n.up && !n.retired) n.start();
    for (const c of this.clients) c.wrapUp(1);
    this.#traceLine('faults stop');
  }

  /** undefined when converged, else what is still missing. */
  #converged(): string | undefined {
    const busy = this.clients.map((c) => c.inFlight()).filter((x) => x !== undefined);
    if (busy.length > 0) return `client requests still unanswered: ${busy.join('; ')}`;
    if (!this.clients.every((c) => c.idle())) return 'clients have requests left to issue';
    const members = this.members().map((id) => this.nodes.get(id)!);
    const leader = this.#leader();
    if (leader === undefined || !members.includes(leader)) return 'no leader among the members';
    const commit = leader.role()!.commit;
    const maxAcked = this.checker.maxAckedIndex();
    if (commit < maxAcked) return `leader ${leader.id} commit ${commit} below the acknowledged index ${maxAcked}`;
    let digest: number | undefined;
    for (const n of members) {
      if (!n.up) return `${n.id} is down`;
      if (n.applied !== commit) return `${n.id} applied ${n.applied}, leader ${leader.id} committed ${commit}`;
      const d = bytesHash(n.kv.snapshot());
      if (digest !== undefined && d !== digest) return `${n.id}'s state machine differs at index ${commit}`;
      digest = d;
    }
    return undefined;
  }
}

function describeOperation(op: Operation): string {
  const input = op.input.kind === 'get' ? 'get' : op.input.kind === 'put' ? `put ${op.input.value}` : `cas ${op.input.expected ?? 'null'}→${op.input.value}`;
  return `${op.client} [${op.call}, ${op.ret ?? '?'}] ${input} → ${JSON.stringify(op.output)}`;
}
