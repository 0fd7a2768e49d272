/**
 * Trace replay for `npm run bench -- placement`: the Alibaba GPU cluster trace through the
 * production scheduler (src/placement), in the setup of the FGD paper (Weng et al., USENIX ATC'23)
 * as its authors' simulator runs it (fixtures/SOURCES.md, "traces/"):
 *
 * - the cluster: the 1,213 GPU nodes of `openb_node_list_gpu_node.csv`, one peer each (CPU, host
 *   memory, GPUs of one model);
 * - the workload: a pod list, shuffled, then resampled to 130% of the cluster's GPU capacity as
 *   the simulator's workload tuning does (too little: clones of random pods are appended at the end
 *   while the total stays within 130%; too much: random pods are removed until it fits);
 * - arrival only: pods are placed one after another and never leave; a pod that fits nowhere fails;
 * - the figure: unallocated GPU % = 100 − allocated GPU thousandths / total GPU thousandths × 100
 *   at the moment the arrived GPU demand reaches 100% of capacity;
 * - each pod is a job spec (`gpus` 0.46 for a 460-thousandths share, `models` from `gpu_spec`,
 *   `cpu`, `memory`) parsed and resolved by placement's own spec code, and placed by the
 *   Scheduler with one of the packing policies; the "typical pods" mix of the fragmentation
 *   policies is learned from the pod list as the simulator learns it.
 *
 * Per seed, every policy sees the same resampled and shuffled pod sequence. GPU memory sizes of
 * the nodes are the products' (the trace's G2/G3 are undisclosed; no pod asks for GPU memory, so
 * the sizes change nothing here).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SeededRng } from '../src/core/index.ts';
import type { Device } from '../src/devices/model.ts';
import { ClusterState } from '../src/placement/cluster.ts';
import { makePolicy, workloadMixOf, type PolicyName, type WorkloadMix } from '../src/placement/scheduler/packing.ts';
import { Scheduler } from '../src/placement/scheduler/schedule.ts';
import type { PeerView } from '../src/placement/snapshot.ts';
import { MILLI_PER_GPU, requestFromSpec, type JobSpecInput, type PlacementRequest } from '../src/placement/spec.ts';

export const TRACE_DIR = join(import.meta.dirname, '..', 'fixtures', 'traces');
const NODE_LIST = join(TRACE_DIR, 'alibaba-gpu-v2023', 'openb_node_list_gpu_node.csv');
const PUBLISHED = join(TRACE_DIR, 'fgd', 'derived_unallocated_gpu_pct_at_arrived100.csv');

/** The simulator's workload tuning ratio: 130% of the GPU capacity arrives. */
export const TUNE_RATIO = 1.3;
/** The seeds of the published runs (42…51); seed i of ours is 42 + i. */
export const FIRST_SEED = 42;

const GPU_MEMORY_MIB: Readonly<Record<string, number>> = {
  A10: 23_028,
  P100: 16_280,
  T4: 15_360,
  V100M16: 16_384,
  V100M32: 32_768,
  G2: 24_576,
  G3: 32_768,
};

export interface TraceNode {
  name: string;
  cpuMilli: number;
  memoryMiB: number;
  gpus: number;
  model: string;
}

export interface TracePod {
  name: string;
  cpuMilli: number;
  memoryMiB: number;
  numGpu: number;
  gpuMilli: number;
  gpuSpec: string;
}

function readCsv(path: string): Record<string, string>[] {
  const lines = readFileSync(path, 'utf8').split('\n').filter((line) => line.trim() !== '');
  const header = lines[0]!.split(',');
  return lines.slice(1).map((line) => {
    const cells = line.split(',');
    return Object.fromEntries(header.map((h, i) => [h, cells[i] ?? '']));
  });
}

export function loadNodes(): TraceNode[] {
  return readCsv(NODE_LIST).map((row) => ({
    name: row['sn']!,
    cpuMilli: Number(row['cpu_milli']),
    memoryMiB: Number(row['memory_mib']),
    gpus: Number(row['gpu']),
    model: row['model']!,
  }));
}

export function workloadPath(workload: string): string {
  return join(TRACE_DIR, 'alibaba-gpu-v2023', `${workload}.csv`);
}

export function loadPods(workload: string): TracePod[] {
  return readCsv(workloadPath(workload)).map((row) => ({
    name: row['name']!,
    cpuMilli: Number(row['cpu_milli']),
    memoryMiB: Number(row['memory_mib']),
    numGpu: Number(row['num_gpu']),
    gpuMilli: Number(row['gpu_milli']),
    gpuSpec: row['gpu_spec'] ?? '',
  }));
}

/** Published unallocated GPU % at arrived 100%, per workload and policy (FGD authors' runs). */
export function loadPublished(): Map<string, Record<string, number>> {
  const out = new Map<string, Record<string, number>>();
  for (const row of readCsv(PUBLISHED)) {
    const figures: Record<string, number> = {};
    for (const [column, value] of Object.entries(row)) {
      const policy = /^\d\d-(.+)$/.exec(column)?.[1];
      if (policy !== undefined) figures[policy] = Number(value);
    }
    out.set(row['workload']!, figures);
  }
  return out;
}

export function podMilli(pod: TracePod): number {
  return pod.numGpu * pod.gpuMilli;
}

export function peersOf(nodes: readonly TraceNode[]): PeerView[] {
  return nodes.map((node) => {
    const devices: Device[] = Array.from({ length: node.gpus }, (_, index) => ({
      index,
      uuid: `GPU-${node.name}-${index}`,
      vendor: 'nvidia',
      model: node.model,
      memoryMiB: GPU_MEMORY_MIB[node.model] ?? 16_384,
      migEnabled: false,
      migInstances: [],
    }));
    return {
      peerId: node.name,
      labels: { spot: 'false' },
      zone: null,
      region: null,
      cloud: null,
      pricePerGpuHour: null,
      spot: false,
      cpuMilli: node.cpuMilli,
      memoryMiB: node.memoryMiB,
      devices,
      links: [],
      schedulable: true,
    };
  });
}

/** A trace pod as a fabric job spec. */
export function specOf(pod: TracePod): JobSpecInput {
  const spec: JobSpecInput = { cpu: pod.cpuMilli / 1000, memory: pod.memoryMiB };
  if (pod.numGpu === 1 && pod.gpuMilli < MILLI_PER_GPU) spec.gpus = pod.gpuMilli / MILLI_PER_GPU;
  else if (pod.numGpu > 0) spec.gpus = pod.numGpu;
  const models = [...new Set(pod.gpuSpec.split('|').filter((m) => m !== ''))];
  if (models.length > 0) spec.models = models;
  return spec;
}

/**
 * The simulator's workload tuning: append random clones while the next one keeps the total within
 * `ratio` × capacity, or remove random pods until the total is within it.
 */
export function tunePods(pods: readonly TracePod[], capacityMilli: number, ratio: number, rng: SeededRng): TracePod[] {
  const target = ratio * capacityMilli;
  const out = [...pods];
  let total = out.reduce((sum, pod) => sum + podMilli(pod), 0);
  if (total > target) {
    while (total > target && out.length > 0) {
      const [removed] = out.splice(rng.int(out.length), 1);
      total -= podMilli(removed!);
    }
    return out;
  }
  for (;;) {
    const pod = pods[rng.int(pods.length)]!;
    if (total + podMilli(pod) > target) break;
    out.push(pod);
    total += podMilli(pod);
  }
  return out;
}

export interface Workload {
  name: string;
  nodes: TraceNode[];
  pods: TracePod[];
  /** The mix FGD learns: classes by (GPUs, thousandths, CPU, model list). */
  fgdMix: WorkloadMix;
  /** The mix our policy learns: all classes (not the top 95%), split by host memory as well. */
  oursMix: WorkloadMix;
  capacityMilli: number;
}

const requestCache = new Map<string, PlacementRequest>();

/** The placement request of a pod, through the spec schema (memoized per distinct shape). */
export function requestOf(pod: TracePod): PlacementRequest {
  const key = `${pod.cpuMilli}|${pod.memoryMiB}|${pod.numGpu}|${pod.gpuMilli}|${pod.gpuSpec}`;
  let request = requestCache.get(key);
  if (request === undefined) {
    request = requestFromSpec(specOf(pod), key);
    requestCache.set(key, request);
  }
  return request;
}

export function loadWorkload(name: string): Workload {
  const nodes = loadNodes();
  const pods = loadPods(name);
  const samples = pods.map((pod) => {
    const request = requestOf(pod);
    return { member: request.member, device: request.device };
  });
  return {
    name,
    nodes,
    pods,
    fgdMix: workloadMixOf(samples),
    oursMix: workloadMixOf(samples, { coverage: 1, byMemory: true }),
    capacityMilli: nodes.reduce((sum, node) => sum + node.gpus * MILLI_PER_GPU, 0),
  };
}

/**
 * The pod sequence of one seed, in the simulator's order: the pod list shuffled, then tuned to
 * 130% (random clones appended at the end, or random pods removed).
 */
export function sequenceOf(workload: Workload, seed: number): TracePod[] {
  const rng = new SeededRng(seed);
  return tunePods(rng.shuffle([...workload.pods]), workload.capacityMilli, TUNE_RATIO, rng);
}

export interface ReplayResult {
  policy: PolicyName;
  seed: number;
  unallocatedGpuPct: number;
  placed: number;
  failed: number;
  /** Pods scheduled until arrived demand reached 100%. */
  pods: number;
  ms: number;
}

/** Replays one pod sequence with one policy until arrived GPU demand reaches 100% of capacity. */
export function replay(workload: Workload, sequence: readonly TracePod[], policy: PolicyName, seed: number): ReplayResult {
  const started = performance.now();
  const mix = policy === 'ours' ? workload.oursMix : workload.fgdMix;
  // Ties go to the first peer in snapshot order except for Random: that is how the FGD authors'
  // simulator reached its published figures (with kube-scheduler's random tie-break among equal
  // scores its FGD leaves about twice as many GPUs unallocated on this trace).
  const rng = policy === 'random' ? new SeededRng(seed * 7919 + 1) : null;
  const scheduler = new Scheduler({ policy: makePolicy(policy, mix), mix, rng, preemption: false });
  const cluster = ClusterState.fromSnapshot({ peers: peersOf(workload.nodes), allocations: [], tenants: [], now: 0 });
  let arrived = 0;
  let allocated = 0;
  let placed = 0;
  let failed = 0;
  let i = 0;
  for (; i < sequence.length && arrived < workload.capacityMilli; i++) {
    const pod = sequence[i]!;
    arrived += podMilli(pod);
    const request = requestOf(pod);
    const result = scheduler.schedule(cluster, request);
    if (result.plan === null) {
      failed++;
      continue;
    }
    const jobId = `${pod.name}#${i}`;
    cluster.place(
      { jobId, epoch: 1, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: 0 },
      result.plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
    );
    allocated += result.plan.members.reduce((sum, m) => sum + m.devices.reduce((s, d) => s + d.milli, 0), 0);
    placed++;
  }
  return {
    policy,
    seed,
    unallocatedGpuPct: 100 - (allocated / workload.capacityMilli) * 100,
    placed,
    failed,
    pods: i,
    ms: performance.now() - started,
  };
}
