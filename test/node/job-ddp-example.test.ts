/**
 * examples/pytorch-ddp under the real runner, as a gang of two allocations that meet through
 * the rendezvous variables fabric sets. Needs a Python with PyTorch (CPU is enough); on a
 * machine without one (CI installs none) the test is skipped and only the syntax is checked.
 * It runs only with FABRIC_TEST_TORCH=1 (e.g. `FABRIC_TEST_TORCH=1 npm test -- test/node/job-ddp-example.test.ts`).
 */
import { afterAll, describe, expect, test } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SeededRng } from '../../src/core/index.ts';
import { JobLauncher } from '../../src/node/job-launcher.ts';
import { killOrphanJobs } from '../../src/node/job-procs.ts';
import { systemClock } from '../../src/node/system.ts';
import { JobRun, type RunSpec } from '../../src/runner/index.ts';

const SCRIPT = join(import.meta.dirname, '../../examples/pytorch-ddp/train.py');

function pythonWith(module: string | null): string | undefined {
  for (const py of ['python3', '/usr/bin/python3']) {
    const r = spawnSync(py, ['-c', module === null ? 'pass' : `import ${module}`], { stdio: 'ignore', timeout: 60_000 });
    if (r.status === 0) return py;
  }
  return undefined;
}
const python = pythonWith(null);
// Importing torch takes tens of seconds and the run needs a quiet machine: opt in with FABRIC_TEST_TORCH=1.
const torchPython = process.env['FABRIC_TEST_TORCH'] === '1' ? pythonWith('torch') : undefined;

const root = mkdtempSync(join(tmpdir(), 'fabric-ddp-'));
afterAll(() => {
  killOrphanJobs('ddp-test');
  rmSync(root, { recursive: true, force: true });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

describe('examples/pytorch-ddp', () => {
  test.skipIf(python === undefined)('is valid Python', () => {
    const r = spawnSync(python!, ['-c', 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])', SCRIPT], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  test.skipIf(torchPython === undefined)(
    'a gang of two allocations trains together, checkpoints from rank 0, and resumes from the restore dir',
    async () => {
      const launcher = new JobLauncher({ owner: 'ddp-test' });
      const runGang = (phase: string, port: number, steps: number, restoreDir?: string) =>
        [0, 1].map((rank) => {
          const work = join(root, `${phase}-${rank}`);
          mkdirSync(work, { recursive: true });
          const spec: RunSpec = {
            jobId: `ddp-${phase}`,
            argv: [torchPython!, SCRIPT, '--steps', String(steps), '--checkpoint-every', '40', '--log-every', '40'],
            cwd: work,
            logDir: join(work, 'logs'),
            env: {
              base: { PATH: process.env.PATH ?? '', OMP_NUM_THREADS: '1' },
              devices: [],
              checkpointDir: join(work, 'ckpt'),
              restoreDir,
              gang: { masterAddr: '127.0.0.1', masterPort: port, nodeRank: rank, nodes: 2 },
            },
          };
          const run = new JobRun(spec, { launcher, clock: systemClock, rng: new SeededRng(rank) });
          run.start();
          return { run, work };
        });
      const stdout = (work: string) => readFileSync(join(work, 'logs', 'stdout.log'), 'utf8');

      const first = runGang('first', await freePort(), 80);
      const results = await Promise.all(first.map((g) => g.run.result));
      expect(results.map((r) => r.outcome), stdout(first[0]!.work) + readFileSync(join(first[0]!.work, 'logs', 'stderr.log'), 'utf8')).toEqual(['succeeded', 'succeeded']);
      expect(stdout(first[0]!.work)).toMatch(/^step 40\/80 loss [\d.]+ accuracy [\d.]+ world 2\ncheckpoint step 40 saved\n/m);
      expect(stdout(first[1]!.work)).toBe(''); // rank 1 neither logs nor checkpoints

      const second = runGang('second', await freePort(), 120, join(first[0]!.work, 'ckpt'));
      const resumed = await Promise.all(second.map((g) => g.run.result));
      expect(resumed.map((r) => r.outcome)).toEqual(['succeeded', 'succeeded']);
      expect(stdout(second[0]!.work)).toMatch(/^resumed from step 80\nstep 120\/120 /);
      await launcher.close();
    },
    120_000,
  );
});
