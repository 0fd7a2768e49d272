/**
 * Runs one seed and turns its outcome into a verdict: the report on success, or the violated
 * invariant (an unexpected exception from the core or the driver counts as one) with the exact
 * command that replays it.
 */
import { Cluster, type SimOptions, type SimReport } from './cluster.ts';
import { InvariantViolation, type InvariantName } from './invariants.ts';

export type SeedResult =
  | { ok: true; report: SimReport }
  | {
      ok: false;
      seed: number;
      invariant: InvariantName | 'exception';
      message: string;
      /** Where it happened: events processed and simulated time. */
      step: number;
      simMs: number;
      traceHash: number;
    };

export const DEFAULT_STEPS = 6000;

export function runSeed(options: SimOptions): SeedResult {
  const cluster = new Cluster(options);
  try {
    return { ok: true, report: cluster.run() };
  } catch (err) {
    const base = { ok: false as const, seed: options.seed, step: cluster.stepsTaken(), simMs: cluster.scheduler.now(), traceHash: cluster.traceHash() };
    if (err instanceof InvariantViolation) return { ...base, invariant: err.invariant, message: err.message };
    const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
    return { ...base, invariant: 'exception', message };
  }
}

/** The command line that replays a run of `options` exactly. */
export function replayCommand(options: Pick<SimOptions, 'seed' | 'steps' | 'bug' | 'joiners' | 'atomicSyncs'>): string {
  const flags = [`--seed ${options.seed}`];
  if (options.steps !== DEFAULT_STEPS) flags.push(`--steps ${options.steps}`);
  if (options.bug !== undefined) flags.push(`--bug ${options.bug}`);
  if (options.joiners === 'empty') flags.push('--empty-joiners');
  if (options.atomicSyncs === true) flags.push('--atomic-syncs');
  return `npm run sim -- ${flags.join(' ')} --verbose`;
}

export function describeFailure(r: Extract<SeedResult, { ok: false }>, options: Omit<SimOptions, 'seed'>): string {
  return [
    `seed ${r.seed} FAILED at step ${r.step} (t=${r.simMs} ms): ${r.invariant}`,
    `  ${r.message.split('\n').join('\n  ')}`,
    `  replay: ${replayCommand({ ...options, seed: r.seed })}`,
  ].join('\n');
}

/** Runs `count` seeds from `from`; the failures, described. */
export function runSeeds(from: number, count: number, options: Omit<SimOptions, 'seed'>): string[] {
  const failures: string[] = [];
  for (let seed = from; seed < from + count; seed++) {
    const r = runSeed({ ...options, seed });
    if (!r.ok) failures.push(describeFailure(r, options));
  }
  return failures;
}
