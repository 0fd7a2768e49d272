/**
 * Packing policies: the score plugin that decides how jobs are packed onto peers, and, for a
 * share of one GPU, which GPU it lands on. Four live side by side so the benchmark can run them
 * through the same pipeline:
 *
 * - `ours` (the default): fragmentation gradient descent with an exact, unrounded gradient, plus
 *   a projected host-CPU/memory shortage term, a scarcity price on GPUs that constrained jobs
 *   depend on, and a best-fit tie-break. See `oursPolicy`.
 * - `fgd`: Fragmentation Gradient Descent as published (Weng et al., USENIX ATC'23): a peer's
 *   fragmentation is the free GPU capacity that a typical job could not use; a job goes where it
 *   raises that least. Scored like the authors' simulator (sigmoid of the change, cut to an integer
 *   0–100 Kubernetes score), so equal scores tie.
 * - `bestfit`: the least free CPU and GPU left after placing (the paper's baseline: half CPU,
 *   half GPU, normalized by 128 cores and 8 GPUs, integer score).
 * - `random`: any peer that fits.
 *
 * Fragmentation needs a picture of the jobs to come: a WorkloadMix ("typical pods" in the
 * paper), the job shapes of recent jobs with their shares (FGD keeps the most common ones covering
 * 95%; ours keeps them all and tells them apart by host memory too).
 */
import type { Rng } from '../../core/index.ts';
import type { ClusterState, PeerState } from '../cluster.ts';
import { MILLI_PER_GPU, type DeviceConstraint, type MemberDemand } from '../spec.ts';
import { EligibilityCache, EligibleTable, eligibleGpuSlots, needKey, type DeviceNeed, type Eligible } from './eligibility.ts';

export interface WorkloadClass {
  gpus: number;
  milli: number;
  cpuMilli: number;
  memoryMiB: number;
  /** Device constraint of the class, or null for any GPU. */
  need: DeviceNeed | null;
  /** How often the class arrives, as a share of all jobs (the classes' shares sum to 1). */
  share: number;
}

export interface WorkloadMix {
  classes: readonly WorkloadClass[];
}

export interface WorkloadSample {
  member: MemberDemand;
  device: DeviceConstraint;
}

/**
 * The typical job shapes of a workload: identical (GPUs, thousandths, CPU, device constraint and,
 * with `byMemory`, host memory) shapes are one class; the most common classes are kept until they
 * cover `coverage` of the jobs (FGD's default: 95%, classes without memory), and their shares
 * renormalized.
 */
export function workloadMixOf(samples: readonly WorkloadSample[], options: { coverage?: number; byMemory?: boolean } = {}): WorkloadMix {
  const coverage = options.coverage ?? 0.95;
  const byMemory = options.byMemory ?? false;
  const counts = new Map<string, { cls: Omit<WorkloadClass, 'share'>; count: number }>();
  for (const { member, device } of samples) {
    const constrained = device.vendor !== null || device.models !== null || device.selector !== null;
    const need: DeviceNeed | null =
      constrained || member.minMemoryMiB > 0 ? { constraint: device, milli: member.milli, mig: null, minMemoryMiB: member.minMemoryMiB } : null;
    const memoryMiB = byMemory ? member.memoryMiB : 0;
    const key = `${member.gpus}|${member.milli}|${member.cpuMilli}|${memoryMiB}|${need === null ? '' : needKey(need)}`;
    const entry = counts.get(key);
    if (entry !== undefined) entry.count++;
    else counts.set(key, { cls: { gpus: member.gpus, milli: member.milli, cpuMilli: member.cpuMilli, memoryMiB, need }, count: 1 });
  }
  const sorted = [...counts.values()].sort((a, b) => b.count - a.count);
  const total = samples.length;
  const kept: { cls: Omit<WorkloadClass, 'share'>; count: number }[] = [];
  let covered = 0;
  for (const entry of sorted) {
    if (covered >= coverage * total) break;
    kept.push(entry);
    covered += entry.count;
  }
  return { classes: kept.map(({ cls, count }) => ({ ...cls, share: count / covered })) };
}

/** What a policy may use besides the peer: the eligibility cache, a seeded Rng, the workload mix. */
export interface PackingContext {
  eligibility: EligibilityCache;
  rng: Rng | null;
  mix: WorkloadMix;
  /** The cluster being scheduled (set by the Scheduler each cycle). */
  cluster: ClusterState | null;
}

export interface PackingPolicy {
  readonly name: string;
  /** Whether a score depends only on the peer's state and the demand (so it may be cached per peer version). */
  readonly deterministic: boolean;
  /** Higher is better; called for peers that fit the member. */
  score(peer: PeerState, member: MemberDemand, eligible: Eligible, ctx: PackingContext): number;
  /** The GPU slot a share goes to on `peer` (one with at least `member.milli` free). */
  shareSlot(peer: PeerState, member: MemberDemand, eligible: Eligible, ctx: PackingContext): number;
}

// ---- shared helpers ----

/** The eligible GPU with the least room that still fits the share (FGD's simulator "best"). */
export function bestFitShareSlot(peer: PeerState, member: MemberDemand, eligible: Eligible): number {
  const slots = eligibleGpuSlots(peer, eligible);
  let best = -1;
  for (let i = 0; i < slots.length; i++) {
    const slot = slots[i]!;
    const free = peer.free[slot]!;
    if (free >= member.milli && (best === -1 || free < peer.free[best]!)) best = slot;
  }
  return best;
}

/** A uniformly random eligible GPU that fits the share (the first one without an Rng). */
export function randomShareSlot(peer: PeerState, member: MemberDemand, eligible: Eligible, rng: Rng | null): number {
  const slots = eligibleGpuSlots(peer, eligible);
  let chosen = -1;
  let seen = 0;
  for (let i = 0; i < slots.length; i++) {
    if (peer.free[slots[i]!]! < member.milli) continue;
    seen++;
    if (chosen === -1 || (rng !== null && rng.int(seen) === 0)) chosen = slots[i]!;
  }
  return chosen;
}

const MAX_SPEC_CPU_MILLI = 128_000;
const MAX_SPEC_GPU_MILLI = 8 * MILLI_PER_GPU;

function memberMilli(member: MemberDemand): number {
  return member.mig !== null ? 0 : member.gpus * member.milli;
}

// ---- fragmentation ----

/**
 * Fragmentation of a peer for a workload mix, in thousandths of a GPU: for each class, the free
 * GPU capacity it could not use (all of it when the class cannot run on the peer at all, else the
 * free capacity of GPUs too full or not eligible for it), weighted by the class's share. The free
 * vector and host capacity are passed in so that "after" states can be evaluated without changing
 * the peer.
 */
export class FragmentationMeter {
  readonly #mix: WorkloadMix;
  readonly #weights: Float64Array;
  readonly #countMemory: boolean;
  readonly #keys: (string | null)[];
  /** Weight of the projected host shortage term, and CPU / memory the mix asks per thousandth of GPU. */
  projection: { weight: number; cpuPerMilli: number; memoryPerMilli: number } | null = null;

  /**
   * @param weightOf each class's weight given its share (FGD: the share itself)
   * @param countMemory whether a class that lacks host memory counts as unable to run
   */
  constructor(mix: WorkloadMix, weightOf: (cls: WorkloadClass) => number, countMemory: boolean) {
    this.#mix = mix;
    const raw = mix.classes.map(weightOf);
    const sum = raw.reduce((a, b) => a + b, 0) || 1;
    this.#weights = Float64Array.from(raw, (w) => w / sum);
    this.#countMemory = countMemory;
    this.#keys = mix.classes.map((cls) => (cls.need === null ? null : needKey(cls.need)));
  }

  #tables: (EligibleTable | null)[] = [];
  #generation = -1;
  #cache: EligibilityCache | null = null;

  #tablesFor(eligibility: EligibilityCache): (EligibleTable | null)[] {
    if (this.#cache !== eligibility || this.#generation !== eligibility.generation) {
      this.#cache = eligibility;
      this.#generation = eligibility.generation;
      this.#tables = this.#mix.classes.map((cls, c) => (cls.need === null ? null : eligibility.table(cls.need, this.#keys[c]!)));
    }
    return this.#tables;
  }

  measure(peer: PeerState, free: Int32Array, cpuFree: number, memoryFree: number, eligibility: EligibilityCache): number {
    const n = free.length;
    let total = 0;
    for (let i = 0; i < n; i++) total += free[i]!;
    if (total === 0) return 0;
    let frag = 0;
    const tables = this.#tablesFor(eligibility);
    const projection = this.projection;
    if (projection !== null) {
      // GPU capacity that the host's CPU (memory) cannot feed at the mix's ratio.
      const cpuShort = projection.cpuPerMilli > 0 ? total - cpuFree / projection.cpuPerMilli : 0;
      const memoryShort = this.#countMemory && projection.memoryPerMilli > 0 ? total - memoryFree / projection.memoryPerMilli : 0;
      frag += projection.weight * Math.max(0, cpuShort, memoryShort);
    }
    const classes = this.#mix.classes;
    for (let c = 0; c < classes.length; c++) {
      const cls = classes[c]!;
      const w = this.#weights[c]!;
      if (cls.gpus === 0) {
        frag += w * total;
        continue;
      }
      const hostOk = cpuFree >= cls.cpuMilli && (!this.#countMemory || memoryFree >= cls.memoryMiB);
      if (!hostOk) {
        frag += w * total;
        continue;
      }
      let fit = 0;
      let unusable = 0;
      if (cls.need === null) {
        for (let i = 0; i < n; i++) {
          const f = free[i]!;
          if (f >= cls.milli) fit++;
          else unusable += f;
        }
      } else {
        const eligible = tables[c]!.get(peer);
        if (eligible.gpuSlots === null) {
          for (let i = 0; i < n; i++) {
            const f = free[i]!;
            if (f >= cls.milli) fit++;
            else unusable += f;
          }
        } else {
          const slots = eligible.gpuSlots;
          let eligibleFree = 0;
          for (let j = 0; j < slots.length; j++) {
            const f = free[slots[j]!]!;
            eligibleFree += f;
            if (f >= cls.milli) fit++;
            else unusable += f;
          }
          unusable += total - eligibleFree;
        }
      }
      frag += w * (fit >= cls.gpus ? unusable : total);
    }
    return frag;
  }
}

/**
 * Caches a peer's fragmentation per version: the "before" of every gradient. Indexed by the
 * peer's position in its cluster.
 */
export class FragmentationCache {
  #versions = new Float64Array(0);
  #values = new Float64Array(0);

  get(peer: PeerState, compute: () => number): number {
    const i = peer.index;
    if (i >= this.#versions.length) {
      const size = Math.max(i + 1, this.#versions.length * 2, 64);
      const versions = new Float64Array(size).fill(-1);
      versions.set(this.#versions);
      const values = new Float64Array(size);
      values.set(this.#values);
      this.#versions = versions;
      this.#values = values;
    }
    if (this.#versions[i] === peer.version) return this.#values[i]!;
    const value = compute();
    this.#versions[i] = peer.version;
    this.#values[i] = value;
    return value;
  }
}

/**
 * The change in fragmentation if `member` lands on `peer` (negative: fragmentation drops), and for
 * a share, the GPU that gives the smallest change. `transform` maps the raw change to the score.
 */
export class GradientScorer {
  readonly meter: FragmentationMeter;
  readonly #before = new FragmentationCache();
  #scratch = new Int32Array(64);
  readonly #seen = new Int32Array(64);

  constructor(meter: FragmentationMeter) {
    this.meter = meter;
  }

  before(peer: PeerState, eligibility: EligibilityCache): number {
    return this.#before.get(peer, () => this.meter.measure(peer, peer.free, peer.cpuFree, peer.memoryFree, eligibility));
  }

  /**
   * Fragmentation after `member`; for a share, on the GPU that `pickSlot` prefers (it is offered
   * each candidate GPU in slot order with the fragmentation it would leave, and answers whether
   * that candidate replaces the best so far). Returns [after, slot].
   */
  after(peer: PeerState, member: MemberDemand, eligible: Eligible, eligibility: EligibilityCache, pickSlot: (slot: number, after: number) => boolean): [number, number] {
    const n = peer.free.length;
    if (this.#scratch.length < n) this.#scratch = new Int32Array(n * 2);
    const scratch = this.#scratch.subarray(0, n);
    scratch.set(peer.free);
    const cpu = peer.cpuFree - member.cpuMilli;
    const memory = peer.memoryFree - member.memoryMiB;
    if (member.mig !== null || member.gpus === 0) {
      return [this.meter.measure(peer, scratch, cpu, memory, eligibility), -1];
    }
    if (member.milli >= MILLI_PER_GPU) {
      // Whole GPUs: every free whole GPU is the same to fragmentation; take the first k eligible.
      const slots = eligibleGpuSlots(peer, eligible);
      let left = member.gpus;
      for (let i = 0; i < slots.length && left > 0; i++) {
        if (scratch[slots[i]!] === MILLI_PER_GPU) {
          scratch[slots[i]!] = 0;
          left--;
        }
      }
      return [this.meter.measure(peer, scratch, cpu, memory, eligibility), -1];
    }
    const slots = eligibleGpuSlots(peer, eligible);
    let bestAfter = Infinity;
    let bestSlot = -1;
    // GPUs with equal free thousandths leave equal fragmentation: only the first of each level is
    // measured (every policy keeps the first of equals).
    const seen = this.#seen;
    let nSeen = 0;
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      const f = peer.free[slot]!;
      if (f < member.milli) continue;
      let duplicate = false;
      for (let j = 0; j < nSeen; j++) if (seen[j] === f) duplicate = true;
      if (duplicate) continue;
      if (nSeen < seen.length) seen[nSeen++] = f;
      scratch[slot] = f - member.milli;
      const after = this.meter.measure(peer, scratch, cpu, memory, eligibility);
      scratch[slot] = f;
      if (pickSlot(slot, after)) {
        bestAfter = after;
        bestSlot = slot;
      }
    }
    return [bestAfter, bestSlot];
  }
}

// ---- the policies ----

export function randomPolicy(): PackingPolicy {
  return {
    name: 'random',
    deterministic: false,
    score: (_peer, _member, _eligible, ctx) => (ctx.rng === null ? 0 : ctx.rng.next()),
    // As the paper's Random baseline: any GPU the share fits on.
    shareSlot: (peer, member, eligible, ctx) => randomShareSlot(peer, member, eligible, ctx.rng),
  };
}

/** The FGD paper's BestFit baseline, scored as its simulator does (integer 0–100). */
export function bestFitPolicy(): PackingPolicy {
  return {
    name: 'bestfit',
    deterministic: true,
    score: (peer, member) => {
      const cpuLeft = Math.max(0, peer.cpuFree - member.cpuMilli) / MAX_SPEC_CPU_MILLI;
      const gpuLeft = Math.max(0, peer.freeMilliTotal - memberMilli(member)) / MAX_SPEC_GPU_MILLI;
      return Math.trunc((1 - (0.5 * cpuLeft + 0.5 * gpuLeft)) * 100);
    },
    shareSlot: (peer, member, eligible) => bestFitShareSlot(peer, member, eligible),
  };
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/**
 * FGD as published: score = ⌊100 · sigmoid((frag before − frag after) / 1000)⌋, the typical jobs
 * weighted by how often they come, CPU (not memory) deciding whether a class can run; a share
 * goes to the first GPU with the highest such score.
 */
export function fgdPolicy(mix: WorkloadMix): PackingPolicy {
  const scorer = new GradientScorer(new FragmentationMeter(mix, (cls) => cls.share, false));
  const quantized = (before: number, after: number): number => Math.trunc(sigmoid((before - after) / 1000) * 100);
  const evaluate = (peer: PeerState, member: MemberDemand, eligible: Eligible, ctx: PackingContext): [number, number] => {
    const before = scorer.before(peer, ctx.eligibility);
    let bestScore = -Infinity;
    const [after, slot] = scorer.after(peer, member, eligible, ctx.eligibility, (_slot, candidateAfter) => {
      const score = quantized(before, candidateAfter);
      if (score > bestScore) {
        bestScore = score;
        return true;
      }
      return false;
    });
    return [quantized(before, after), slot];
  };
  return {
    name: 'fgd',
    deterministic: true,
    score: (peer, member, eligible, ctx) => evaluate(peer, member, eligible, ctx)[0],
    shareSlot: (peer, member, eligible, ctx) => evaluate(peer, member, eligible, ctx)[1],
  };
}

/**
 * Opportunity cost of each peer's GPUs: how much of the workload can run only on devices like
 * them. For every device constraint in the mix (a model list, a vendor, a selector), its pressure
 * is its share of the GPU demand over its share of the fabric's GPUs (demand 17% of the mix on 13%
 * of the GPUs: 1.3); a peer's price is the sum of the pressures of the constraints its GPUs
 * satisfy, scaled by how many of them do. Computed once per cluster (device classes).
 */
class ScarcityPrices {
  readonly #mix: WorkloadMix;
  #classes: unknown = null;
  #pressures: { need: DeviceNeed; key: string; pressure: number }[] = [];
  readonly #byDeviceClass = new Map<number, number>();

  constructor(mix: WorkloadMix) {
    this.#mix = mix;
  }

  price(peer: PeerState, ctx: PackingContext): number {
    const cluster = ctx.cluster;
    if (cluster === null || peer.gpus.length === 0) return 0;
    if (this.#classes !== cluster.classes) this.#prepare(cluster.peers, cluster.classes, ctx.eligibility);
    let price = this.#byDeviceClass.get(peer.deviceClassId);
    if (price === undefined) {
      price = 0;
      for (const { need, key, pressure } of this.#pressures) price += (pressure * ctx.eligibility.of(peer, need, key).gpuCount) / peer.gpus.length;
      this.#byDeviceClass.set(peer.deviceClassId, price);
    }
    return price;
  }

  #prepare(peers: readonly PeerState[], classes: unknown, eligibility: EligibilityCache): void {
    this.#classes = classes;
    this.#byDeviceClass.clear();
    const demandAll = this.#mix.classes.reduce((sum, cls) => sum + cls.share * cls.gpus * cls.milli, 0);
    const supplyAll = peers.reduce((sum, peer) => sum + peer.gpus.length, 0);
    const byConstraint = new Map<string, { need: DeviceNeed; demand: number }>();
    for (const cls of this.#mix.classes) {
      if (cls.need === null || cls.gpus === 0) continue;
      // Pressure is about which devices qualify, whatever share of one the class takes.
      const need: DeviceNeed = { ...cls.need, milli: MILLI_PER_GPU, mig: null, minMemoryMiB: cls.need.minMemoryMiB };
      const key = needKey(need);
      const entry = byConstraint.get(key) ?? { need, demand: 0 };
      entry.demand += cls.share * cls.gpus * cls.milli;
      byConstraint.set(key, entry);
    }
    this.#pressures = [];
    if (demandAll <= 0 || supplyAll === 0) return;
    for (const [key, { need, demand }] of byConstraint) {
      let supply = 0;
      for (const peer of peers) supply += eligibility.of(peer, need, key).gpuCount;
      if (supply > 0) this.#pressures.push({ need, key, pressure: demand / demandAll / (supply / supplyAll) });
    }
  }
}

/**
 * How much of the CPU that CPU-only jobs ask counts in the CPU a free GPU should keep beside it.
 * They compete for the same host CPU, but can run on any host (a CPU-rich one, or one whose GPUs
 * are all taken), so counting them fully overstates the need and ignoring them understates it;
 * a fifth was the best on the trace's CPU-heavy pod lists without hurting the others.
 */
const CPU_ONLY_FACTOR = 0.2;

/**
 * Our policy: fragmentation gradient descent with three additions and an exact gradient. The
 * score of putting a member on a peer is
 *
 *   (F(before) − F(after)) − price(peer) · thousandths taken − tiny best-fit tie-break
 *
 * where F, a peer's fragmentation, is FGD's (the free GPU capacity each class of the mix could
 * not use, weighted by how often the class comes, the whole mix rather than its top 95%) plus:
 *
 * 1. Host shortage: the GPU capacity that the peer's free CPU (or host memory) cannot feed at the
 *    mix's own CPU-per-GPU ratio (CPU-only jobs counted at CPU_ONLY_FACTOR),
 *    max(0, free GPU − free CPU / ratio). FGD only notices a
 *    starved GPU once no class fits; this sees it coming, so CPU-heavy jobs go to CPU-rich peers
 *    (on the Alibaba trace: 2-GPU T4 hosts with 104 cores rather than 8-GPU hosts with 96).
 *    A class also counts as unable to run when host memory is short (FGD looks at CPU only).
 * 2. Scarcity price (ScarcityPrices): taking a GPU that constrained jobs depend on costs its
 *    pressure per thousandth, so unconstrained jobs leave scarce models to the jobs that can run
 *    nowhere else (gpuspec33 on the trace: 12% unallocated with FGD, 5% with this).
 * 3. Ties (equal gradient and price) go to the peer left with the least free GPU, then CPU, and
 *    a share to the fullest GPU that fits: empty peers stay empty for large jobs.
 *
 * The gradient is not rounded: FGD's simulator scores ⌊100·sigmoid(Δ/1000)⌋, which makes many
 * peers tie.
 */
export function oursPolicy(mix: WorkloadMix): PackingPolicy {
  const meter = new FragmentationMeter(mix, (cls) => cls.share, true);
  const gpuClasses = mix.classes.filter((cls) => cls.gpus > 0);
  const gpuDemand = gpuClasses.reduce((sum, cls) => sum + cls.share * cls.gpus * cls.milli, 0);
  if (gpuDemand > 0) {
    const gpuJobsCpu = gpuClasses.reduce((sum, cls) => sum + cls.share * cls.cpuMilli, 0);
    const cpuJobsCpu = mix.classes.filter((cls) => cls.gpus === 0).reduce((sum, cls) => sum + cls.share * cls.cpuMilli, 0);
    meter.projection = {
      weight: 1,
      cpuPerMilli: (gpuJobsCpu + CPU_ONLY_FACTOR * cpuJobsCpu) / gpuDemand,
      memoryPerMilli: gpuClasses.reduce((sum, cls) => sum + cls.share * cls.memoryMiB, 0) / gpuDemand,
    };
  }
  const scorer = new GradientScorer(meter);
  const prices = new ScarcityPrices(mix);
  // Scaled to stay below a thousandth of a GPU of gradient: it only orders equals.
  const tieBreak = (peer: PeerState, member: MemberDemand): number => {
    const gpuLeft = (peer.freeMilliTotal - memberMilli(member)) / (MAX_SPEC_GPU_MILLI * 4);
    const cpuLeft = (peer.cpuFree - member.cpuMilli) / (MAX_SPEC_CPU_MILLI * 16);
    return -(gpuLeft + cpuLeft) * 0.5;
  };
  const evaluate = (peer: PeerState, member: MemberDemand, eligible: Eligible, ctx: PackingContext): [number, number] => {
    const before = scorer.before(peer, ctx.eligibility);
    let bestSlotFree = Infinity;
    let bestSlotAfter = Infinity;
    const [after, slot] = scorer.after(peer, member, eligible, ctx.eligibility, (candidate, candidateAfter) => {
      // Among GPUs with equal gradient, the fullest one (best fit).
      const free = peer.free[candidate]!;
      if (candidateAfter < bestSlotAfter - 1e-9 || (Math.abs(candidateAfter - bestSlotAfter) <= 1e-9 && free < bestSlotFree)) {
        bestSlotAfter = candidateAfter;
        bestSlotFree = free;
        return true;
      }
      return false;
    });
    const price = prices.price(peer, ctx) * memberMilli(member);
    return [before - after - price + tieBreak(peer, member), slot];
  };
  return {
    name: 'ours',
    deterministic: true,
    score: (peer, member, eligible, ctx) => evaluate(peer, member, eligible, ctx)[0],
    shareSlot: (peer, member, eligible, ctx) => evaluate(peer, member, eligible, ctx)[1],
  };
}

export const POLICY_NAMES = ['ours', 'fgd', 'bestfit', 'random'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

export function makePolicy(name: PolicyName, mix: WorkloadMix): PackingPolicy {
  switch (name) {
    case 'ours':
      return oursPolicy(mix);
    case 'fgd':
      return fgdPolicy(mix);
    case 'bestfit':
      return bestFitPolicy();
    case 'random':
      return randomPolicy();
  }
}
