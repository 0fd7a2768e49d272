/**
 * `npm run sim -- --seeds N [--from S] [--steps K] [--bug B] [--empty-joiners] [--atomic-syncs] [--keep-going] [--verbose]`
 * `npm run sim -- --seed S [--steps K] [--verbose]`   (replays one seed, printing its trace)
 *
 * Runs seeds one after another, progress on stderr; on the first failure prints the seed, the
 * violated invariant and the command that replays it exactly, and exits 1.
 */
import { parseArgs } from 'node:util';
import type { SimOptions } from './cluster.ts';
import type { DriverBug } from './driver.ts';
import { DEFAULT_STEPS, describeFailure, runSeed } from './run.ts';

const BUGS: readonly DriverBug[] = ['send-before-persist', 'sync-lies', 'forget-vote', 'ack-on-propose', 'local-reads'];

const { values } = parseArgs({
  options: {
    seeds: { type: 'string' },
    seed: { type: 'string' },
    from: { type: 'string' },
    steps: { type: 'string' },
    bug: { type: 'string' },
    verbose: { type: 'boolean', default: false },
    'keep-going': { type: 'boolean', default: false },
    'empty-joiners': { type: 'boolean', default: false },
    'atomic-syncs': { type: 'boolean', default: false },
  },
  strict: true,
});

function int(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) {
    process.stderr.write(`--${name} must be a non-negative integer, got ${raw}\n`);
    process.exit(2);
  }
  return n;
}

const bug = values.bug as DriverBug | undefined;
if (bug !== undefined && !BUGS.includes(bug)) {
  process.stderr.write(`--bug must be one of ${BUGS.join(', ')}\n`);
  process.exit(2);
}
const steps = int('steps', values.steps, DEFAULT_STEPS);
const single = values.seed !== undefined;
const from = single ? int('seed', values.seed, 0) : int('from', values.from, 1);
const count = single ? 1 : int('seeds', values.seeds, 100);
const log = values.verbose ? (line: string) => process.stdout.write(`${line}\n`) : undefined;

const options: Omit<SimOptions, 'seed'> = {
  steps,
  ...(bug !== undefined ? { bug } : {}),
  ...(log !== undefined ? { log } : {}),
  ...(values['empty-joiners'] ? { joiners: 'empty' as const } : {}),
  ...(values['atomic-syncs'] ? { atomicSyncs: true } : {}),
};

const started = Date.now();
const coverage = new Map<string, number>();
let failures = 0;
let lastProgress = started;
for (let seed = from; seed < from + count; seed++) {
  const result = runSeed({ ...options, seed });
  if (!result.ok) {
    failures++;
    process.stdout.write(`${describeFailure(result, options)}\n`);
    if (!values['keep-going']) break;
    continue;
  }
  for (const [what, n] of Object.entries(result.report.coverage)) coverage.set(what, (coverage.get(what) ?? 0) + n);
  if (single) {
    const r = result.report;
    process.stdout.write(
      `seed ${r.seed} ok: ${r.steps} steps, ${r.simMs} ms simulated, ${r.nodes} nodes, ${r.leaders} leaders, ${r.commits} commits, ` +
        `${r.acked} acked writes, ${r.operations} client ops, ${r.crashes} crashes, ${r.confChanges} conf changes, trace ${r.traceHash.toString(16)}\n`,
    );
  }
  const now = Date.now();
  if (now - lastProgress > 2000 || seed === from + count - 1) {
    lastProgress = now;
    const done = seed - from + 1;
    process.stderr.write(`${done}/${count} seeds (${from}..${seed}), ${failures} failed, ${((now - started) / 1000).toFixed(1)} s\n`);
  }
}
const elapsed = ((Date.now() - started) / 1000).toFixed(1);
if (coverage.size > 0) {
  const lines = [...coverage.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([what, n]) => `  ${what}: ${n}`);
  process.stderr.write(`exercised:\n${lines.join('\n')}\n`);
}
if (failures > 0) {
  process.stderr.write(`FAILED: ${failures} seed(s) violated an invariant (${elapsed} s)\n`);
  process.exit(1);
}
if (!single) process.stdout.write(`${count} seeds from ${from}: no violation, ${elapsed} s\n`);
