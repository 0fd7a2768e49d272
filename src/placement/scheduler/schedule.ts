/**
 * The scheduling pipeline for one job, in the shape of Nomad's stack and Kubernetes' framework:
 *
 *   PreFilter  resolve the shape (auto sizing), device need, quota  (once per cycle)
 *   Filter     per peer: static tests, then load tests; the first failure is the peer's reason
 *   Score      per feasible peer: packing policy, topology, price, preferred affinity; each
 *              plugin's scores are normalized to 0–100 over the feasible peers and weighted
 *   Select     the best peer, or for a gang the best set (one zone first, fewest zones)
 *   Allocate   devices on the chosen peers by UUID (topology-aware for whole GPUs, the policy's
 *              choice for a share, a MIG instance of the profile)
 *   Preempt    when nothing fits now but freeing lower-priority preemptible jobs would
 *
 * A cycle reads the ClusterState and changes nothing; `commit` (or the leader, through Raft)
 * applies the plan. Scores of a peer are cached per (job shape, peer version), so a peer whose
 * state did not change since the last job of the same shape is not re-scored: with one placement
 * per cycle only the peers it touched need fresh scores.
 */
import type { Rng } from '../../core/index.ts';
import type { ClusterState, PeerState } from '../cluster.ts';
import type { Plan, PlannedMember, Status, StatusCode } from '../plan.ts';
import { formatCount, formatMiB } from '../quantity.ts';
import { describeEstimate, gpusToFit, mibPerGpu, SPLIT_DEGREES } from '../sizing.ts';
import type { GrantView } from '../snapshot.ts';
import { labelMatches, MILLI_PER_GPU, type MemberDemand, type PlacementRequest } from '../spec.ts';
import { EligibilityCache, needKey, type Eligible } from './eligibility.ts';
import {
  curableByPreemption,
  describeDeviceMiss,
  describeReason,
  dynamicReason,
  FILTER_OF,
  filterPeer,
  makeFilterCycle,
  needOf,
  Reason,
  REASON_COUNT,
  staticKeyOf,
  staticReason,
  statusOfReason,
  type FilterCycle,
  type ReasonCode,
} from './filters.ts';
import { makePolicy, type PackingContext, type PackingPolicy, type WorkloadMix } from './packing.ts';
import { choosePreemption } from './preempt.ts';
import { chooseWholeGpus, topologyQuality } from './topology.ts';

export const SCORE_PLUGINS = ['packing', 'topology', 'price', 'affinity'] as const;
export type ScorePluginName = (typeof SCORE_PLUGINS)[number];

/**
 * Default weights: packing decides among peers that are otherwise alike; a multi-GPU member's
 * link quality outweighs it (a job on a split NVLink island runs slower for its whole life);
 * price and preferred labels break what is left.
 */
export const DEFAULT_WEIGHTS: Readonly<Record<ScorePluginName, number>> = { packing: 10, topology: 12, price: 3, affinity: 2 };

export interface SchedulerOptions {
  /** The packing policy; default `ours` over `mix`. */
  policy?: PackingPolicy;
  /** The workload the packing policy expects (FGD's typical pods); default: one 1-GPU class. */
  mix?: WorkloadMix;
  /** Breaks exact score ties at random (seeded); without it the first peer in snapshot order wins. */
  rng?: Rng | null;
  weights?: Partial<Record<ScorePluginName, number>>;
  /** Try preemption when nothing fits now (default true). */
  preemption?: boolean;
}

export interface CycleOptions {
  /** Peers held for other waiting jobs (peer id → job id). */
  reserved?: ReadonlyMap<string, string> | null;
  /** Only these peers may be used (preemption narrows a cycle to its chosen peers). */
  only?: ReadonlySet<string> | null;
  /** Whether preemption may be tried for this cycle (default: the scheduler's setting). */
  preemption?: boolean;
}

export interface RemovedCount {
  filter: string;
  reason: string;
  count: number;
  code: StatusCode;
}

export interface PeerScore {
  peerId: string;
  total: number;
  plugins: Record<ScorePluginName, number>;
}

export interface Explanation {
  jobId: string;
  /** Peers considered. */
  peers: number;
  /** Peers that fit a member. */
  feasible: number;
  removed: RemovedCount[];
  /** The shape tried: members × GPUs per member (and share / MIG profile). */
  shape: string;
  /** Auto sizing: the memory estimate and the shapes considered. */
  sizing: string | null;
  /** For a placed job: the chosen peers with their devices and scores. */
  chosen: (PeerScore & { devices: string[] })[];
  /** The next-best peers (up to 3), for comparison. */
  runnersUp: PeerScore[];
  /** One line: "1,204 peers: 980 lack …, 200 wrong model, 24 held back by tenant quota". */
  summary: string;
}

export interface ScheduleResult {
  status: Status;
  plan: Plan | null;
  explain: Explanation;
}

/** A concrete shape of a job: this many peers, each with this member demand. */
export interface Shape {
  nodes: number;
  member: MemberDemand;
}

/** Per-shape score cache, indexed by peer position. */
class ShapeCache {
  versions: Float64Array<ArrayBuffer> = new Float64Array(0);
  packing: Float64Array<ArrayBuffer> = new Float64Array(0);
  topology: Float64Array<ArrayBuffer> = new Float64Array(0);

  ensure(n: number): void {
    if (this.versions.length >= n) return;
    const size = Math.max(n, this.versions.length * 2);
    const grow = (old: Float64Array, fill: number): Float64Array<ArrayBuffer> => {
      const next = new Float64Array(size).fill(fill);
      next.set(old);
      return next;
    };
    this.versions = grow(this.versions, -1);
    this.packing = grow(this.packing, 0);
    this.topology = grow(this.topology, 0);
  }
}

const MAX_SHAPE_CACHES = 4096;

const shapeKeys = new WeakMap<MemberDemand, { needKey: string; key: string }>();

/** The score-cache key of a member shape (memoized: a queued request is planned many times). */
function shapeKeyOf(member: MemberDemand, needKey: string): string {
  const hit = shapeKeys.get(member);
  if (hit !== undefined && hit.needKey === needKey) return hit.key;
  const key = `${member.gpus}|${member.milli}|${member.mig ?? ''}|${member.minMemoryMiB}|${member.nvlink ? 1 : 0}|${member.cpuMilli}|${member.memoryMiB}|${needKey}`;
  shapeKeys.set(member, { needKey, key });
  return key;
}

function describeShape(shape: Shape): string {
  const m = shape.member;
  let gpus: string;
  if (m.gpus === 0) gpus = 'no GPU';
  else if (m.mig !== null) gpus = `MIG ${m.mig}`;
  else if (m.milli < MILLI_PER_GPU) gpus = `${m.milli / 10}% of a GPU`;
  else gpus = `${m.gpus} GPU${m.gpus === 1 ? '' : 's'}`;
  if (m.minMemoryMiB > 0) gpus += ` with ${formatMiB(m.minMemoryMiB)}`;
  if (m.nvlink) gpus += ' on NVLink';
  return shape.nodes === 1 ? gpus : `${shape.nodes} peers × ${gpus}`;
}

export class Scheduler {
  readonly policy: PackingPolicy;
  readonly weights: Readonly<Record<ScorePluginName, number>>;
  readonly rng: Rng | null;
  readonly preemption: boolean;
  readonly eligibility = new EligibilityCache();
  readonly #ctx: PackingContext & { cluster: ClusterState | null };
  readonly #caches = new Map<string, ShapeCache>();
  #classes: unknown = null;
  readonly #staticCache = new Map<string, Uint8Array>();
  // Scratch buffers reused across cycles (a cycle's results are copied out before it returns).
  #codes = new Uint8Array(0);
  #feasible = new Int32Array(0);
  readonly #counts = new Int32Array(REASON_COUNT);
  #raw: Record<ScorePluginName, Float64Array> = emptyPluginArrays(0);
  #normalized: Record<ScorePluginName, Float64Array> = emptyPluginArrays(0);
  #total = new Float64Array(0);

  constructor(options: SchedulerOptions = {}) {
    const mix = options.mix ?? { classes: [{ gpus: 1, milli: MILLI_PER_GPU, cpuMilli: 0, memoryMiB: 0, need: null, share: 1 }] };
    this.policy = options.policy ?? makePolicy('ours', mix);
    this.weights = { ...DEFAULT_WEIGHTS, ...options.weights };
    this.rng = options.rng ?? null;
    this.preemption = options.preemption ?? true;
    this.#ctx = { eligibility: this.eligibility, rng: this.rng, mix, cluster: null };
  }

  /** Caches are per cluster lineage (device classes): a new snapshot starts them afresh. */
  #bind(cluster: ClusterState): void {
    this.#ctx.cluster = cluster;
    if (this.#classes !== cluster.classes) {
      this.#classes = cluster.classes;
      this.eligibility.clear();
      this.#caches.clear();
      this.#staticCache.clear();
    }
  }

  /**
   * Plans one job on the cluster as it is. Returns Success with a plan (possibly naming
   * preemption victims), or why not with a per-filter explanation.
   */
  schedule(cluster: ClusterState, request: PlacementRequest, options: CycleOptions = {}): ScheduleResult {
    this.#bind(cluster);
    const shapes = this.#shapes(cluster, request);
    const sizing = request.sizing === null ? null : sizingNote(request, shapes);
    if (shapes.length === 0) {
      const reason =
        request.sizing !== null
          ? `no GPU in the fabric is large enough for the model, even split ${SPLIT_DEGREES.at(-1)} ways`
          : 'nothing to place';
      return {
        status: { code: 'UnschedulableAndUnresolvable', reasons: [reason] },
        plan: null,
        explain: emptyExplain(request.jobId, cluster.peers.length, reason, sizing),
      };
    }
    let first: ScheduleResult | null = null;
    for (const shape of shapes) {
      const result = this.#cycle(cluster, request, shape, options, sizing);
      if (result.plan !== null) return result;
      first ??= result;
    }
    // Nothing fits now: try making room, on the preferred shape first.
    if (options.preemption ?? this.preemption) {
      for (const shape of shapes) {
        const preempted = this.#preempt(cluster, request, shape, options, sizing);
        if (preempted !== null) return preempted;
      }
    }
    return first!;
  }

  /** The concrete shapes a request may take on this cluster, most preferred first. */
  shapesFor(cluster: ClusterState, request: PlacementRequest): Shape[] {
    this.#bind(cluster);
    return this.#shapes(cluster, request);
  }

  #shapes(cluster: ClusterState, request: PlacementRequest): Shape[] {
    if (request.sizing === null) return [{ nodes: request.nodes ?? 1, member: request.member }];
    // Auto sizing: for each GPU memory size in the fabric that the constraints allow, the fewest
    // GPUs of that size that hold the model, on the fewest peers.
    const sizes = new Map<number, number>();
    const probe = needOf(request, { ...request.member, gpus: 1, milli: MILLI_PER_GPU, mig: null, minMemoryMiB: 0 })!;
    const key = needKey(probe);
    for (const peer of cluster.peers) {
      const eligible = this.eligibility.of(peer, probe, key);
      const perSize = new Map<number, number>();
      const slots = eligible.gpuSlots ?? peer.gpus.map((g) => g.slot);
      for (const slot of slots) {
        const memory = peer.gpus[slot]!.memoryMiB;
        perSize.set(memory, (perSize.get(memory) ?? 0) + 1);
      }
      for (const [memory, count] of perSize) sizes.set(memory, Math.max(sizes.get(memory) ?? 0, count));
    }
    const shapes: (Shape & { total: number; memory: number })[] = [];
    const nodeLimit = request.nodes;
    for (const [memory, maxPerPeer] of sizes) {
      const total = gpusToFit(request.sizing.estimate, memory);
      if (total === null) continue;
      let perNode = total;
      while (perNode > maxPerPeer) perNode /= 2;
      if (perNode < 1 || !Number.isInteger(perNode)) continue;
      const nodes = total / perNode;
      if (nodeLimit !== null && nodes !== nodeLimit) continue;
      const minMemoryMiB = Math.max(request.member.minMemoryMiB, Math.min(memory, mibPerGpu(request.sizing.estimate, total)));
      shapes.push({ nodes, total, memory, member: { ...request.member, gpus: perNode, milli: MILLI_PER_GPU, mig: null, minMemoryMiB } });
    }
    shapes.sort((a, b) => a.nodes - b.nodes || a.total - b.total || a.memory - b.memory);
    // Shapes that ask the same of a peer are one.
    const seen = new Set<string>();
    return shapes.filter((s) => {
      const k = `${s.nodes}|${s.member.gpus}|${s.member.minMemoryMiB}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
  }

  #filterCycle(cluster: ClusterState, request: PlacementRequest, shape: Shape, options: CycleOptions): FilterCycle {
    return makeFilterCycle(request, shape.member, this.eligibility, options.reserved ?? null, quotaProblem(cluster, request, shape));
  }

  /**
   * The static verdict of every peer for a cycle's shape and constraints, cached: it depends on
   * nothing that a placement changes (labels, device classes, host size), so within one cluster
   * lineage it is computed once per distinct shape.
   */
  #staticCodes(cluster: ClusterState, cycle: FilterCycle): Uint8Array {
    const key = staticKeyOf(cycle);
    let codes = this.#staticCache.get(key);
    if (codes === undefined || codes.length !== cluster.peers.length) {
      if (this.#staticCache.size >= MAX_SHAPE_CACHES) this.#staticCache.clear();
      codes = new Uint8Array(cluster.peers.length);
      for (let i = 0; i < codes.length; i++) codes[i] = staticReason(cycle, cluster.peers[i]!);
      this.#staticCache.set(key, codes);
    }
    return codes;
  }

  #cycle(cluster: ClusterState, request: PlacementRequest, shape: Shape, options: CycleOptions, sizing: string | null): ScheduleResult {
    const cycle = this.#filterCycle(cluster, request, shape, options);
    const peers = cluster.peers;
    const n = peers.length;
    if (this.#codes.length < n) {
      this.#codes = new Uint8Array(n * 2);
      this.#feasible = new Int32Array(n * 2);
    }
    const codes = this.#codes;
    const feasible = this.#feasible;
    const counts = this.#counts.fill(0);
    const fixed = this.#staticCodes(cluster, cycle);
    let nFeasible = 0;
    const only = options.only ?? null;
    if (only === null) {
      for (let i = 0; i < n; i++) {
        let code = fixed[i]!;
        if (code === Reason.OK) code = dynamicReason(cycle, peers[i]!);
        codes[i] = code;
        counts[code]!++;
        if (code === Reason.OK) feasible[nFeasible++] = i;
      }
    }
    for (let i = 0; only !== null && i < n; i++) {
      const peer = peers[i]!;
      if (!only.has(peer.id)) {
        codes[i] = 255;
        continue;
      }
      const code = fixed[i] === Reason.OK ? dynamicReason(cycle, peer) : (fixed[i] as ReasonCode);
      codes[i] = code;
      counts[code]!++;
      if (code === Reason.OK) feasible[nFeasible++] = i;
    }
    const considered = only === null ? n : n - countOf(codes, n, 255);

    if (nFeasible < shape.nodes) {
      return this.#unplaced(cluster, request, shape, cycle, codes, counts, considered, nFeasible, sizing);
    }

    // Score.
    const scores = this.#score(cluster, request, shape, cycle, feasible, nFeasible);
    let chosenK: number[] | null;
    if (shape.nodes === 1) {
      chosenK = [this.#best(nFeasible, scores.total)];
    } else {
      const position = new Map<number, number>();
      for (let k = 0; k < nFeasible; k++) position.set(feasible[k]!, k);
      chosenK = this.#gang(cluster, request, shape, feasible, nFeasible, scores.total)?.map((index) => position.get(index)!) ?? null;
    }
    const chosen = chosenK === null ? null : chosenK.map((k) => feasible[k]!);
    if (chosen === null) {
      return this.#unplaced(cluster, request, shape, cycle, codes, counts, considered, nFeasible, sizing, true);
    }

    // Allocate devices.
    const members: PlannedMember[] = [];
    for (const index of chosen) {
      const peer = peers[index]!;
      members.push({ peerId: peer.id, devices: this.#allocate(peer, shape.member, cycle), cpuMilli: shape.member.cpuMilli, memoryMiB: shape.member.memoryMiB });
    }
    const plan: Plan = { jobId: request.jobId, tenant: request.tenant, priority: request.priority, members, preemptions: [] };
    const runnersUp = topK(nFeasible, scores.total, 3, new Set(chosenK));
    const peerScore = (k: number): PeerScore => {
      return {
        peerId: peers[feasible[k]!]!.id,
        total: round2(scores.total[k]!),
        plugins: Object.fromEntries(SCORE_PLUGINS.map((p) => [p, round2(scores.normalized[p][k]!)])) as Record<ScorePluginName, number>,
      };
    };
    const explainChosen = chosenK!.map((k, i) => ({ ...peerScore(k), devices: members[i]!.devices.map(describeGrant) }));
    const removed = removedCounts(cluster, request, shape.member, cycle, codes, counts, n);
    return {
      status: { code: 'Success', reasons: [] },
      plan,
      explain: {
        jobId: request.jobId,
        peers: considered,
        feasible: nFeasible,
        removed,
        shape: describeShape(shape),
        sizing,
        chosen: explainChosen,
        runnersUp: runnersUp.map(peerScore),
        summary: `${formatCount(considered)} peers, ${formatCount(nFeasible)} fit; placed on ${explainChosen.map((c) => c.peerId).join(', ')}`,
      },
    };
  }

  #unplaced(
    cluster: ClusterState,
    request: PlacementRequest,
    shape: Shape,
    cycle: FilterCycle,
    codes: Uint8Array,
    counts: Int32Array,
    considered: number,
    nFeasible: number,
    sizing: string | null,
    noGangSet = false,
  ): ScheduleResult {
    const removed = removedCounts(cluster, request, shape.member, cycle, codes, counts, cluster.peers.length);
    // The job's status is the most hopeful of its peers' reasons: if any peer merely lacks free
    // capacity, the job is Unschedulable (it can run later), not Unresolvable.
    let code: StatusCode = 'UnschedulableAndUnresolvable';
    for (let r = 1; r < REASON_COUNT; r++) {
      if (counts[r]! === 0) continue;
      const s = statusOfReason(r as ReasonCode);
      if (s === 'Wait') code = 'Wait';
      else if (s === 'Unschedulable' && code !== 'Wait') code = 'Unschedulable';
    }
    if (nFeasible > 0 && code === 'UnschedulableAndUnresolvable') code = 'Unschedulable';
    const reasons = removed.map((r) => `${formatCount(r.count)} ${r.reason}`);
    if (shape.nodes > 1) {
      reasons.unshift(noGangSet ? `no set of ${shape.nodes} peers satisfies the gang's spread` : `gang needs ${shape.nodes} peers, ${nFeasible} fit now`);
    }
    if (cycle.quotaProblem !== null) reasons.push(cycle.quotaProblem);
    const summary = `${formatCount(considered)} peers: ${reasons.join(', ')}`;
    return {
      status: { code, reasons },
      plan: null,
      explain: { jobId: request.jobId, peers: considered, feasible: nFeasible, removed, shape: describeShape(shape), sizing, chosen: [], runnersUp: [], summary },
    };
  }

  #score(
    cluster: ClusterState,
    request: PlacementRequest,
    shape: Shape,
    cycle: FilterCycle,
    feasible: Int32Array,
    nFeasible: number,
  ): { total: Float64Array; normalized: Record<ScorePluginName, Float64Array> } {
    const peers = cluster.peers;
    const member = shape.member;
    const key = shapeKeyOf(member, cycle.needKey);
    let cache = this.#caches.get(key);
    if (cache === undefined) {
      if (this.#caches.size >= MAX_SHAPE_CACHES) this.#caches.clear();
      cache = new ShapeCache();
      this.#caches.set(key, cache);
    }
    cache.ensure(peers.length);
    const cacheable = this.policy.deterministic;
    const multiGpu = member.gpus > 1 && member.milli >= MILLI_PER_GPU && member.mig === null;
    if (this.#total.length < nFeasible) {
      this.#raw = emptyPluginArrays(nFeasible * 2);
      this.#normalized = emptyPluginArrays(nFeasible * 2);
      this.#total = new Float64Array(nFeasible * 2);
    }
    const raw = this.#raw;
    const affinityScored = request.peer.preferred.length > 0 || request.peer.avoided.length > 0;
    const preferred = request.peer.preferred;
    const avoided = request.peer.avoided;
    for (let k = 0; k < nFeasible; k++) {
      const index = feasible[k]!;
      const peer = peers[index]!;
      if (!cacheable || cache.versions[index] !== peer.version) {
        const eligible = member.gpus > 0 ? cycle.table!.get(peer) : NO_DEVICES;
        cache.packing[index] = this.policy.score(peer, member, eligible, this.#ctx);
        cache.topology[index] = multiGpu ? topologyQuality(chooseWholeGpus(peer, eligible, member.gpus, member.nvlink)!) : 0;
        cache.versions[index] = cacheable ? peer.version : -1;
      }
      raw.packing[k] = cache.packing[index]!;
      raw.topology[k] = cache.topology[index]!;
      raw.price[k] = peer.pricePerGpuHour === null ? 0 : -peer.pricePerGpuHour;
      let a = 0;
      if (affinityScored) {
        for (const p of preferred) if (labelMatches(peer.labels, p.requirement)) a += p.weight;
        for (const p of avoided) if (labelMatches(peer.labels, p.requirement)) a -= p.weight;
      }
      raw.affinity[k] = a;
    }
    const total = this.#total.fill(0, 0, nFeasible);
    const normalized = this.#normalized;
    for (const plugin of SCORE_PLUGINS) {
      const values = raw[plugin];
      let min = Infinity;
      let max = -Infinity;
      for (let k = 0; k < nFeasible; k++) {
        const v = values[k]!;
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const out = normalized[plugin].fill(0, 0, nFeasible);
      const weight = this.weights[plugin];
      if (max > min) {
        const scale = 100 / (max - min);
        for (let k = 0; k < nFeasible; k++) {
          out[k] = (values[k]! - min) * scale;
          total[k]! += weight * out[k]!;
        }
      }
    }
    return { total, normalized };
  }

  /** Position (in the feasible list) of the highest total; exact ties go to a random one when the scheduler has an Rng. */
  #best(nFeasible: number, total: Float64Array): number {
    let best = 0;
    let ties = 1;
    for (let k = 1; k < nFeasible; k++) {
      const t = total[k]!;
      if (t > total[best]!) {
        best = k;
        ties = 1;
      } else if (t === total[best]! && this.rng !== null) {
        ties++;
        if (this.rng.int(ties) === 0) best = k;
      }
    }
    return best;
  }

  /**
   * A gang's peers: the best `nodes` peers of one zone when some zone has enough (the zone whose
   * best set scores highest), else the best peers from the zones with the most feasible peers
   * (fewest zones); with `spreadOver`, the best peer of each of as many distinct zones as possible.
   */
  #gang(cluster: ClusterState, request: PlacementRequest, shape: Shape, feasible: Int32Array, nFeasible: number, total: Float64Array): number[] | null {
    const peers = cluster.peers;
    const order = rankOrder(feasible, nFeasible, total, this.rng);
    const label = request.spreadOver ?? 'zone';
    const groups = new Map<string, number[]>();
    for (const index of order) {
      // Unlabeled peers: for packing each is its own place (not "one zone" together); for a
      // spread they are one unknown place (they may share a failure domain).
      const value = peers[index]!.labels[label] ?? (request.spreadOver !== null ? '\u0000' : `\u0000${index}`);
      const group = groups.get(value);
      if (group === undefined) groups.set(value, [index]);
      else group.push(index);
    }
    const score = new Map<number, number>();
    for (let k = 0; k < nFeasible; k++) score.set(feasible[k]!, total[k]!);
    if (request.spreadOver !== null) {
      // Round-robin over the groups, best groups first.
      const lists = [...groups.values()];
      if (lists.length < shape.nodes) return null;
      lists.sort((a, b) => score.get(b[0]!)! - score.get(a[0]!)!);
      return lists.slice(0, shape.nodes).map((list) => list[0]!);
    }
    let bestSet: number[] | null = null;
    let bestMean = -Infinity;
    for (const [value, list] of groups) {
      if (value.startsWith('\u0000') || list.length < shape.nodes) continue;
      const set = list.slice(0, shape.nodes);
      const mean = set.reduce((sum, i) => sum + score.get(i)!, 0) / set.length;
      if (mean > bestMean) {
        bestMean = mean;
        bestSet = set;
      }
    }
    if (bestSet !== null) return bestSet;
    // No zone holds the whole gang: fill from the largest groups first (fewest zones).
    const lists = [...groups.values()].sort((a, b) => b.length - a.length || score.get(b[0]!)! - score.get(a[0]!)!);
    const set: number[] = [];
    for (const list of lists) {
      for (const index of list) {
        if (set.length === shape.nodes) break;
        set.push(index);
      }
    }
    return set.length === shape.nodes ? set : null;
  }

  #allocate(peer: PeerState, member: MemberDemand, cycle: FilterCycle): GrantView[] {
    if (member.gpus === 0) return [];
    const eligible = cycle.table!.get(peer);
    if (member.mig !== null) return allocateMig(peer, eligible, member.gpus);
    if (member.milli < MILLI_PER_GPU) {
      const slot = this.policy.shareSlot(peer, member, eligible, this.#ctx);
      return [{ uuid: peer.gpus[slot]!.uuid, milli: member.milli, parentUuid: null }];
    }
    const choice = chooseWholeGpus(peer, eligible, member.gpus, member.nvlink)!;
    return choice.slots.map((slot) => ({ uuid: peer.gpus[slot]!.uuid, milli: MILLI_PER_GPU, parentUuid: null }));
  }

  #preempt(cluster: ClusterState, request: PlacementRequest, shape: Shape, options: CycleOptions, sizing: string | null): ScheduleResult | null {
    const cycle = this.#filterCycle(cluster, request, shape, options);
    if (cycle.quotaProblem !== null) return null;
    const choice = choosePreemption(cluster, request, shape.nodes, cycle, (peer) => {
      const code = filterPeer(cycle, peer);
      return code === Reason.OK || curableByPreemption(code) ? code : null;
    });
    if (choice === null) return null;
    // Plan on a copy with the victims gone, narrowed to the chosen peers.
    const trial = cluster.clone();
    for (const victim of choice.victims) trial.release(victim.jobId);
    const result = this.#cycle(trial, request, shape, { ...options, only: new Set(choice.peerIds), preemption: false }, sizing);
    if (result.plan === null) return null;
    result.plan.preemptions = choice.victims;
    const names = choice.victims.map((v) => `${v.jobId} (priority ${v.priority})`).join(', ');
    result.explain.summary += `; preempting ${names}`;
    return result;
  }
}

function emptyPluginArrays(n: number): Record<ScorePluginName, Float64Array> {
  return { packing: new Float64Array(n), topology: new Float64Array(n), price: new Float64Array(n), affinity: new Float64Array(n) };
}

const NO_DEVICES: Eligible = { gpuSlots: new Int32Array(0), gpuCount: 0, migSlots: new Int32Array(0), misses: {} };

function countOf(codes: Uint8Array, n: number, value: number): number {
  let c = 0;
  for (let i = 0; i < n; i++) if (codes[i] === value) c++;
  return c;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

/** Feasible peer indexes by total score, best first (ties in snapshot order, or shuffled with an Rng). */
function rankOrder(feasible: Int32Array, nFeasible: number, total: Float64Array, rng: Rng | null = null): number[] {
  const ks = Array.from({ length: nFeasible }, (_, k) => k);
  const tie = rng === null ? null : Float64Array.from(ks, () => rng.next());
  ks.sort((a, b) => total[b]! - total[a]! || (tie === null ? a - b : tie[a]! - tie[b]!));
  return ks.map((k) => feasible[k]!);
}

/** Positions of the `k` best feasible peers outside `exclude`, best first. */
function topK(nFeasible: number, total: Float64Array, k: number, exclude: ReadonlySet<number>): number[] {
  const best: number[] = [];
  for (let j = 0; j < nFeasible; j++) {
    if (exclude.has(j)) continue;
    let at = best.length;
    while (at > 0 && total[j]! > total[best[at - 1]!]!) at--;
    if (at < k) {
      best.splice(at, 0, j);
      if (best.length > k) best.pop();
    }
  }
  return best;
}

function allocateMig(peer: PeerState, eligible: Eligible, count: number): GrantView[] {
  // Pack slices onto the GPU that already has the most slices taken, keeping other GPUs' slices free.
  const taken = new Map<string, number>();
  peer.migs.forEach((mig, slot) => {
    if (peer.migFree[slot] === 0) taken.set(mig.parentUuid, (taken.get(mig.parentUuid) ?? 0) + 1);
  });
  const free = [...eligible.migSlots].filter((slot) => peer.migFree[slot] === 1);
  free.sort((a, b) => (taken.get(peer.migs[b]!.parentUuid) ?? 0) - (taken.get(peer.migs[a]!.parentUuid) ?? 0) || a - b);
  return free.slice(0, count).map((slot) => ({ uuid: peer.migs[slot]!.uuid, milli: MILLI_PER_GPU, parentUuid: peer.migs[slot]!.parentUuid }));
}

export function describeGrant(grant: GrantView): string {
  if (grant.parentUuid !== null) return `${grant.uuid} (MIG on ${grant.parentUuid})`;
  return grant.milli === MILLI_PER_GPU ? grant.uuid : `${grant.uuid} (${grant.milli}/1000)`;
}

/** Why the tenant may not take this shape now, or null. */
export function quotaProblem(cluster: ClusterState, request: PlacementRequest, shape: Shape): string | null {
  const tenant = cluster.tenants.get(request.tenant);
  if (tenant === undefined) return null;
  const asked = shape.nodes * shape.member.gpus * (shape.member.mig !== null ? MILLI_PER_GPU : shape.member.milli);
  if (tenant.maxGpus !== null && tenant.heldMilli + asked > tenant.maxGpus * MILLI_PER_GPU) {
    return `tenant ${tenant.name} holds ${tenant.heldMilli / MILLI_PER_GPU} of its ${tenant.maxGpus} GPUs; ${asked / MILLI_PER_GPU} more asked`;
  }
  if (tenant.maxGpuHours !== null && asked > 0 && tenant.gpuHoursUsed >= tenant.maxGpuHours) {
    return `tenant ${tenant.name} has used its ${tenant.maxGpuHours} GPU-hours`;
  }
  return null;
}

/** Per-reason counts, with device misses split by what the devices lacked. */
function removedCounts(
  cluster: ClusterState,
  request: PlacementRequest,
  member: MemberDemand,
  cycle: FilterCycle,
  codes: Uint8Array,
  counts: Int32Array,
  n: number,
): RemovedCount[] {
  const out: RemovedCount[] = [];
  for (let r = 1; r < REASON_COUNT; r++) {
    if (counts[r] === 0 || r === Reason.DEVICES) continue;
    out.push({ filter: FILTER_OF[r]!, reason: describeReason(r as ReasonCode, request, member), count: counts[r]!, code: statusOfReason(r as ReasonCode) });
  }
  if (counts[Reason.DEVICES]! > 0) {
    const byText = new Map<string, number>();
    const textOfClass = new Map<number, string>();
    for (let i = 0; i < n; i++) {
      if (codes[i] !== Reason.DEVICES) continue;
      const peer = cluster.peers[i]!;
      let text = textOfClass.get(peer.deviceClassId);
      if (text === undefined) {
        text = describeDeviceMiss(peer, cycle.table!.get(peer), member);
        textOfClass.set(peer.deviceClassId, text);
      }
      byText.set(text, (byText.get(text) ?? 0) + 1);
    }
    for (const [reason, count] of byText) out.push({ filter: 'DeviceClass', reason, count, code: 'UnschedulableAndUnresolvable' });
  }
  out.sort((a, b) => b.count - a.count);
  return out;
}

function emptyExplain(jobId: string, peers: number, reason: string, sizing: string | null): Explanation {
  return { jobId, peers, feasible: 0, removed: [], shape: '-', sizing, chosen: [], runnersUp: [], summary: `${formatCount(peers)} peers: ${reason}` };
}

function sizingNote(request: PlacementRequest, shapes: readonly Shape[]): string {
  const estimate = request.sizing!.estimate;
  const tried = shapes.map(describeShape).join(' | ') || 'none';
  return `model needs ${describeEstimate(estimate)}; shapes: ${tried}`;
}
