/**
 * `npm run bench -- placement [--workload NAME|all] [--seeds N] [--policies a,b] [--json]`
 * replays the Alibaba GPU trace in the FGD paper's setup through the production scheduler with our
 * packing policy and our implementations of FGD, BestFit and Random side by side, and prints them
 * beside the FGD authors' published figures (placement-trace.ts says how).
 *
 * `npm run bench -- placement --speed [--placements N] [--jobs N] [--json]`: placements per second
 * of the pure scheduler on a synthetic 10,000-GPU fabric (placement-speed.ts), then committed
 * placements per second through Raft with 3 voters on the same fabric (placement-commit.ts).
 *
 * JSON (last stdout line): `{"workload", "seeds", "policies": {"ours": {"unallocated_gpu_pct", …},
 * …}, "published": {"FGD", "BestFit", …}}`; with `--workload all`, `{"seeds", "workloads": {NAME:
 * {"policies", "published"}}}`; with `--speed`, the speed figures: `placements_per_s` and
 * `committed_placements_per_s` with their targets and ratios.
 */
import { parseArgs } from 'node:util';
import { POLICY_NAMES, type PolicyName } from '../src/placement/scheduler/packing.ts';
import { TARGET_COMMITTED_PLACEMENTS_PER_S, runCommitted, type CommitFigures } from './placement-commit.ts';
import { runSpeed, type SpeedFigures } from './placement-speed.ts';
import { FIRST_SEED, loadPublished, loadWorkload, replay, sequenceOf, type ReplayResult } from './placement-trace.ts';

export const PLACEMENT_USAGE = `npm run bench -- placement [--json] [--workload NAME|all] [--seeds N] [--policies ours,fgd,bestfit,random]
npm run bench -- placement --speed [--json] [--placements N] [--peers N] [--jobs N]

Trace replay (FGD paper setup): unallocated GPU % when arrived demand reaches 100% of capacity,
mean over seeds 42, 43, … (default workload openb_pod_list_default, 10 seeds).
--speed: placements per second of the pure scheduler, 1,250 peers × 8 GPUs by default (--placements
timed placements, default 20000), then committed placements per second through Raft with 3 voters
over libp2p on loopback, on the same fabric (--jobs submitted and placed, default 4000).`;

export const TARGET_PLACEMENTS_PER_S = 10_000;

export interface PlacementBenchOptions {
  speed: boolean;
  workload: string;
  seeds: number;
  policies: PolicyName[];
  placements: number;
  peers: number;
  /** Jobs placed through Raft in the committed half of --speed. */
  jobs: number;
}

export function parsePlacementArgs(args: string[]): PlacementBenchOptions {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      speed: { type: 'boolean', default: false },
      workload: { type: 'string', default: 'openb_pod_list_default' },
      seeds: { type: 'string', default: '10' },
      policies: { type: 'string', default: POLICY_NAMES.join(',') },
      placements: { type: 'string', default: '20000' },
      peers: { type: 'string', default: '1250' },
      jobs: { type: 'string', default: '4000' },
    },
  });
  const positive = (name: string, text: string): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${JSON.stringify(text)}`);
    return n;
  };
  const policies = values.policies.split(',').map((p) => p.trim());
  for (const p of policies) {
    if (!(POLICY_NAMES as readonly string[]).includes(p)) throw new Error(`--policies: unknown policy ${JSON.stringify(p)} (known: ${POLICY_NAMES.join(', ')})`);
  }
  return {
    speed: values.speed,
    workload: values.workload,
    seeds: positive('seeds', values.seeds),
    policies: policies as PolicyName[],
    placements: positive('placements', values.placements),
    peers: positive('peers', values.peers),
    jobs: positive('jobs', values.jobs),
  };
}

interface PolicyFigures {
  unallocated_gpu_pct: number;
  per_seed: number[];
  failed_pods: number;
  ms_per_replay: number;
}

interface WorkloadFigures {
  policies: Partial<Record<PolicyName, PolicyFigures>>;
  published: Record<string, number>;
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

function runWorkload(name: string, options: PlacementBenchOptions, published: Map<string, Record<string, number>>, progress: (line: string) => void): WorkloadFigures {
  const workload = loadWorkload(name);
  const results = new Map<PolicyName, ReplayResult[]>();
  for (let i = 0; i < options.seeds; i++) {
    const seed = FIRST_SEED + i;
    const sequence = sequenceOf(workload, seed);
    const line: string[] = [];
    for (const policy of options.policies) {
      const result = replay(workload, sequence, policy, seed);
      results.set(policy, [...(results.get(policy) ?? []), result]);
      line.push(`${policy} ${result.unallocatedGpuPct.toFixed(2)}%`);
    }
    progress(`placement: ${name} seed ${seed}: ${line.join(', ')}`);
  }
  const policies: Partial<Record<PolicyName, PolicyFigures>> = {};
  for (const [policy, runs] of results) {
    const values = runs.map((r) => r.unallocatedGpuPct);
    policies[policy] = {
      unallocated_gpu_pct: round2(values.reduce((a, b) => a + b, 0) / values.length),
      per_seed: values.map(round2),
      failed_pods: Math.round(runs.reduce((a, r) => a + r.failed, 0) / runs.length),
      ms_per_replay: Math.round(runs.reduce((a, r) => a + r.ms, 0) / runs.length),
    };
  }
  return { policies, published: published.get(name) ?? {} };
}

const PUBLISHED_NAME: Readonly<Record<PolicyName, string>> = { ours: '', fgd: 'FGD', bestfit: 'BestFit', random: 'Random' };

function workloadTable(name: string, figures: WorkloadFigures): string[] {
  const lines = [`${name}: unallocated GPU % at arrived demand = 100% (lower is better)`];
  const fgd = figures.published['FGD'];
  for (const [policy, f] of Object.entries(figures.policies) as [PolicyName, PolicyFigures][]) {
    const pub = figures.published[PUBLISHED_NAME[policy]];
    const vsFgd = fgd === undefined ? '' : `  ${((f.unallocated_gpu_pct / fgd - 1) * 100).toFixed(1).padStart(6)}% vs published FGD`;
    lines.push(`  ${policy.padEnd(8)} ${f.unallocated_gpu_pct.toFixed(2).padStart(6)}   published ${pub === undefined ? '   -  ' : pub.toFixed(2).padStart(6)}${vsFgd}`);
  }
  const published = Object.entries(figures.published);
  if (published.length > 0) lines.push(`  published (FGD authors' simulator): ${published.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  return lines;
}

export async function runPlacementBench(
  options: PlacementBenchOptions,
  io: { progress: (line: string) => void },
): Promise<{ figures: Record<string, unknown>; table: string }> {
  if (options.speed) {
    io.progress(`placement speed: ${options.peers} peers × 8 GPUs, ${options.placements} timed placements, one thread`);
    const figures: SpeedFigures = runSpeed({ peers: options.peers, gpusPerPeer: 8, placements: options.placements, seed: 1 }, io.progress);
    const committed: CommitFigures = await runCommitted({ peers: options.peers, gpusPerPeer: 8, jobs: options.jobs, seed: 1 }, io.progress);
    const ratio = (x: number, of: number): number => Math.round((x / of) * 100) / 100;
    const table = [
      `placement speed: ${figures.gpus} GPUs on ${figures.peers} peers, full scoring, one thread`,
      `  placements/s ${figures.placements_per_s} (target ≥ ${TARGET_PLACEMENTS_PER_S}; ${(figures.placements_per_s / TARGET_PLACEMENTS_PER_S).toFixed(2)}× target)`,
      `  per CPU-second ${figures.placements_per_cpu_s}; machine load ${figures.load_per_core} per core`,
      `  cycle p50 ${figures.cycle_p50_us} µs, p99 ${figures.cycle_p99_us} µs; fabric ${figures.utilization_pct}% allocated`,
      `committed through Raft (${committed.raft_voters} voters on threads of one process, libp2p on loopback): ${committed.committed_placed} of ${committed.committed_jobs} jobs in ${committed.committed_seconds} s`,
      `  committed placements/s ${committed.committed_placements_per_s} (target ≥ ${TARGET_COMMITTED_PLACEMENTS_PER_S}; ${ratio(committed.committed_placements_per_s, TARGET_COMMITTED_PLACEMENTS_PER_S).toFixed(2)}× target; ${ratio(committed.committed_placements_per_s, figures.placements_per_s).toFixed(2)}× the pure scheduler)`,
      `  submits acknowledged after ${committed.committed_submit_seconds} s; ${committed.committed_gpus_allocated} GPUs allocated; ${committed.committed_refused_proposals} proposals refused; ${committed.committed_overbooked_devices} devices over-booked`,
      `  per CPU-second (all three voters) ${committed.committed_placements_per_cpu_s}; machine load ${committed.committed_load_per_core} per core`,
    ].join('\n');
    return {
      figures: {
        ...figures,
        target_placements_per_s: TARGET_PLACEMENTS_PER_S,
        placements_vs_target: ratio(figures.placements_per_s, TARGET_PLACEMENTS_PER_S),
        ...committed,
        target_committed_placements_per_s: TARGET_COMMITTED_PLACEMENTS_PER_S,
        committed_vs_target: ratio(committed.committed_placements_per_s, TARGET_COMMITTED_PLACEMENTS_PER_S),
        committed_vs_scheduler: ratio(committed.committed_placements_per_s, figures.placements_per_s),
      },
      table,
    };
  }
  const published = loadPublished();
  if (options.workload === 'all') {
    const workloads: Record<string, WorkloadFigures> = {};
    const lines: string[] = [];
    for (const name of published.keys()) {
      workloads[name] = runWorkload(name, options, published, io.progress);
      lines.push(...workloadTable(name, workloads[name]));
    }
    return { figures: { seeds: options.seeds, workloads }, table: lines.join('\n') };
  }
  if (!published.has(options.workload)) {
    io.progress(`placement: no published figures for ${options.workload}; replaying it anyway`);
  }
  const figures = runWorkload(options.workload, options, published, io.progress);
  return {
    figures: { workload: options.workload, seeds: options.seeds, policies: figures.policies, published: figures.published },
    table: workloadTable(options.workload, figures).join('\n'),
  };
}
