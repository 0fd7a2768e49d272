/**
 * Raw speed of the pure scheduler for `npm run bench -- placement --speed`: a synthetic fabric of
 * 1,250 peers × 8 GPUs (10,000 GPUs: H100-class devices, all-to-all NVLink, 128 cores, 1 TiB,
 * five zones, prices, some spot peers), kept 80–90% busy by a stream of jobs that arrive and
 * leave. Every cycle runs the full pipeline over every peer (no sampling of peers, unlike
 * Kubernetes' percentageOfNodesToScore): filters, all score plugins with our packing policy,
 * device allocation, plan; the plan is then applied to the cluster state. One thread.
 *
 * The figure: placements per second of wall-clock time over the timed cycles (cycles that find no
 * room count as cycles, not placements), with placements per CPU-second and the machine's load
 * beside it, since a shared machine slows the wall clock. Committing through Raft on the same
 * fabric is measured in placement-commit.ts (`committed_placements_per_s`, same command).
 */
import { availableParallelism, loadavg } from 'node:os';
import { SeededRng } from '../src/core/index.ts';
import type { Device, Link } from '../src/devices/model.ts';
import { ClusterState } from '../src/placement/cluster.ts';
import { makePolicy, workloadMixOf } from '../src/placement/scheduler/packing.ts';
import { Scheduler } from '../src/placement/scheduler/schedule.ts';
import type { PeerView } from '../src/placement/snapshot.ts';
import { MILLI_PER_GPU, requestFromSpec, type JobSpecInput, type PlacementRequest } from '../src/placement/spec.ts';

export interface SpeedOptions {
  peers: number;
  gpusPerPeer: number;
  /** Timed placements. */
  placements: number;
  seed: number;
}

export interface SpeedFigures {
  peers: number;
  gpus: number;
  placements: number;
  cycles: number;
  placements_per_s: number;
  cycle_p50_us: number;
  cycle_p99_us: number;
  /** Placements per second of CPU time this process used: what a quiet machine's wall clock shows. */
  placements_per_cpu_s: number;
  /** One-minute load average per core at the end: above 1, other work shared the cores and the wall-clock figure is low. */
  load_per_core: number;
  /** GPU thousandths allocated at the end, as % of capacity. */
  utilization_pct: number;
  policy: string;
}

const ZONES = ['eu-1', 'eu-2', 'us-1', 'us-2', 'ap-1'];

export function syntheticPeers(count: number, gpus: number, rng: SeededRng): PeerView[] {
  const links: Link[] = [];
  for (let a = 0; a < gpus; a++) for (let b = a + 1; b < gpus; b++) links.push({ a, b, kind: 'nvlink', width: 18 });
  return Array.from({ length: count }, (_, p) => {
    const devices: Device[] = Array.from({ length: gpus }, (_, index) => ({
      index,
      uuid: `GPU-${p.toString(16).padStart(8, '0')}-${index}`,
      vendor: 'nvidia',
      model: p % 5 === 4 ? 'NVIDIA A100-SXM4-80GB' : 'NVIDIA H100 80GB HBM3',
      memoryMiB: 81_559,
      numaNode: index < gpus / 2 ? 0 : 1,
      computeCapability: p % 5 === 4 ? '8.0' : '9.0',
      migEnabled: false,
      migInstances: [],
    }));
    const zone = ZONES[p % ZONES.length]!;
    const spot = rng.next() < 0.2;
    return {
      peerId: `peer-${p}`,
      labels: { zone, spot: String(spot), rack: `r${p % 40}` },
      zone,
      region: zone.slice(0, 2),
      cloud: 'bench',
      pricePerGpuHour: 2 + rng.int(200) / 100,
      spot,
      cpuMilli: 128_000,
      memoryMiB: 1_048_576,
      devices,
      links,
      schedulable: true,
    };
  });
}

/** The synthetic job mix: mostly one GPU, shares, some 2/4/8-GPU jobs and CPU-only ones. */
export function jobSpec(rng: SeededRng): JobSpecInput {
  const r = rng.next();
  const spotTolerant = rng.next() < 0.5;
  if (r < 0.35) return { gpus: 1, cpu: 8, memory: '64GiB', spotTolerant };
  if (r < 0.6) return { gpus: [0.25, 0.5, 0.125][rng.int(3)]!, cpu: 2, memory: '16GiB', spotTolerant };
  if (r < 0.75) return { gpus: 2, cpu: 16, memory: '128GiB', spotTolerant };
  if (r < 0.87) return { gpus: 4, cpu: 32, memory: '256GiB', interconnect: 'nvlink', spotTolerant };
  if (r < 0.93) return { gpus: 8, cpu: 64, memory: '512GiB', interconnect: 'nvlink', spotTolerant };
  if (r < 0.96) return { gpus: 1, models: ['H100'], cpu: 8, memory: '64GiB', spotTolerant };
  return { cpu: 4, memory: '8GiB', spotTolerant };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export function runSpeed(options: SpeedOptions, progress: (line: string) => void): SpeedFigures {
  const rng = new SeededRng(options.seed);
  const peers = syntheticPeers(options.peers, options.gpusPerPeer, rng);
  const cluster = ClusterState.fromSnapshot({ peers, allocations: [], tenants: [], now: 0 });
  const capacity = options.peers * options.gpusPerPeer * MILLI_PER_GPU;

  // A pool of distinct requests (parsed once, as the leader would hold them) drawn in sequence.
  const pool: PlacementRequest[] = Array.from({ length: 512 }, (_, i) => requestFromSpec(jobSpec(rng), `shape-${i}`));
  const mix = workloadMixOf(pool.map((r) => ({ member: r.member, device: r.device })), { coverage: 1, byMemory: true });
  const scheduler = new Scheduler({ policy: makePolicy('ours', mix), mix, preemption: false });

  const running: { jobId: string; milli: number }[] = [];
  let allocated = 0;
  let next = 0;
  let placed = 0;
  let cycles = 0;
  const samples: number[] = [];
  const warmup = Math.ceil(options.placements / 4);
  const total = warmup + options.placements;
  let timedStart = 0;
  let cpuStart = process.cpuUsage();
  let timedPlaced = 0;
  let timedCycles = 0;
  for (let i = 0; placed < total; i++) {
    // Departures keep the fabric between 80% and 90% allocated, oldest first.
    if (allocated > 0.9 * capacity) {
      while (allocated > 0.8 * capacity && running.length > 0) {
        const job = running.shift()!;
        cluster.release(job.jobId);
        allocated -= job.milli;
      }
    }
    if (placed === warmup && timedStart === 0) {
      timedStart = performance.now();
      cpuStart = process.cpuUsage();
      progress(`placement speed: warmed up (${warmup} placements), timing ${options.placements}`);
    }
    const request = pool[next++ % pool.length]!;
    const started = performance.now();
    const result = scheduler.schedule(cluster, request);
    cycles++;
    if (result.plan !== null) {
      const jobId = `job-${i}`;
      cluster.place(
        { jobId, epoch: 1, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: 0 },
        result.plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
      );
      const milli = result.plan.members.reduce((sum, m) => sum + m.devices.reduce((s, d) => s + d.milli, 0), 0);
      running.push({ jobId, milli });
      allocated += milli;
      placed++;
    }
    if (timedStart > 0) {
      samples.push((performance.now() - started) * 1000);
      timedCycles++;
      if (result.plan !== null) timedPlaced++;
    }
  }
  const seconds = (performance.now() - timedStart) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  samples.sort((a, b) => a - b);
  return {
    peers: options.peers,
    gpus: options.peers * options.gpusPerPeer,
    placements: timedPlaced,
    cycles: timedCycles,
    placements_per_s: Math.round(timedPlaced / seconds),
    cycle_p50_us: Math.round(percentile(samples, 50)),
    cycle_p99_us: Math.round(percentile(samples, 99)),
    placements_per_cpu_s: Math.round(timedPlaced / cpuSeconds),
    load_per_core: Math.round((loadavg()[0]! / availableParallelism()) * 100) / 100,
    utilization_pct: Math.round((allocated / capacity) * 1000) / 10,
    policy: 'ours',
  };
}
