/**
 * The training job shipped in examples/train: it really learns, it checkpoints and commits, and
 * a resumed run continues exactly where the saved one stopped.
 */
import { afterAll, describe, expect, test } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SeededRng } from '../../src/core/index.ts';
import { defaultSupervisorNode, JobLauncher } from '../../src/node/job-launcher.ts';
import { killOrphanJobs } from '../../src/node/job-procs.ts';
import { systemClock } from '../../src/node/system.ts';
import { JobRun } from '../../src/runner/index.ts';

const TRAIN = join(import.meta.dirname, '../../examples/train/train.ts');
const NODE = defaultSupervisorNode();
const root = mkdtempSync(join(tmpdir(), 'fabric-train-'));
let seq = 0;

afterAll(() => {
  killOrphanJobs('train-test');
  rmSync(root, { recursive: true, force: true });
});

function dir(name: string): string {
  const d = join(root, `${name}-${++seq}`);
  mkdirSync(d, { recursive: true });
  return d;
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function train(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(NODE[0]!, [...NODE.slice(1), TRAIN, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const losses = (out: string) => [...out.matchAll(/^step (\d+)\/\d+ loss ([\d.]+) accuracy ([\d.]+)$/gm)].map((m) => ({ step: Number(m[1]), loss: Number(m[2]), accuracy: Number(m[3]) }));

function checkpoint(d: string): { step: number; params: Record<string, number[]>; adam: { t: number }; rngState: number } {
  return JSON.parse(readFileSync(join(d, 'model.json'), 'utf8'));
}

describe('examples/train', () => {
  test('the loss really goes down and the spirals are told apart', async () => {
    const r = await train(['--steps', '250', '--log-every', '50']);
    expect(r.code).toBe(0);
    const seen = losses(r.stdout);
    expect(seen.map((s) => s.step)).toEqual([0, 50, 100, 150, 200, 250]);
    const first = seen[0]!;
    const last = seen.at(-1)!;
    expect(first.loss).toBeGreaterThan(1);
    expect(last.loss).toBeLessThan(first.loss / 4);
    expect(last.accuracy).toBeGreaterThan(0.85);
    // Not just at the end: the loss falls from one report to the next over the first half.
    expect(seen[1]!.loss).toBeLessThan(first.loss);
    expect(seen[2]!.loss).toBeLessThan(seen[1]!.loss);
  });

  test('checkpoints every N steps, commits each, and a resumed run ends with the same weights as one never stopped', async () => {
    const straight = dir('straight');
    const a = await train(['--steps', '60', '--checkpoint-every', '20'], { FABRIC_CHECKPOINT_DIR: straight });
    expect(a.code).toBe(0);

    const first = dir('first');
    const commits = join(first, 'commits.txt');
    const hook = join(first, 'commit.sh');
    // The platform's commit command, stood in for by a script that records what it was asked.
    writeFileSync(hook, `#!/bin/sh\ntest -s "$FABRIC_CHECKPOINT_DIR/model.json" || exit 9\necho "$* env=$FABRIC_CHECKPOINT_STEP" >> ${commits}\n`);
    chmodSync(hook, 0o755);
    const b1 = await train(['--steps', '40', '--checkpoint-every', '20'], { FABRIC_CHECKPOINT_DIR: first, FABRIC_CHECKPOINT_COMMIT: hook });
    expect(b1.code).toBe(0);
    expect(b1.stdout).toContain('checkpoint step 20 saved\ncheckpoint step 20 committed\n');
    expect(readFileSync(commits, 'utf8')).toBe('--step 20 env=20\n--step 40 env=40\n');
    expect(checkpoint(first).step).toBe(40);

    const restore = dir('restore');
    cpSync(join(first, 'model.json'), join(restore, 'model.json'));
    const second = dir('second');
    const b2 = await train(['--steps', '60', '--checkpoint-every', '20'], { FABRIC_CHECKPOINT_DIR: second, FABRIC_RESTORE_DIR: restore });
    expect(b2.code).toBe(0);
    expect(b2.stdout.split('\n')[0]).toBe(`resumed from step 40 (loss ${losses(b1.stdout).at(-1)!.loss.toFixed(4)})`);
    expect(losses(b2.stdout)[0]!.step).toBe(50);
    const resumed = checkpoint(second);
    const uninterrupted = checkpoint(straight);
    expect(resumed.step).toBe(60);
    expect(resumed).toEqual(uninterrupted);
  });

  test('on SIGTERM it checkpoints the step it is at and exits 143', async () => {
    const ck = dir('term');
    const child = spawn(NODE[0]!, [...NODE.slice(1), TRAIN, '--steps', '100000', '--checkpoint-every', '1000', '--step-delay-ms', '5', '--log-every', '5'], {
      env: { PATH: process.env.PATH ?? '', FABRIC_CHECKPOINT_DIR: ck },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (/^step 10\//m.test(out) && child.signalCode === null && !child.killed) child.kill('SIGTERM');
    });
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    expect(code).toBe(143);
    const stoppedAt = Number(/^stopping at step (\d+): SIGTERM$/m.exec(out)?.[1]);
    expect(stoppedAt).toBeGreaterThanOrEqual(10);
    expect(checkpoint(ck).step).toBe(stoppedAt);
  });

  test('a restore directory without a checkpoint, or bad arguments, fail loudly', async () => {
    const r = await train(['--steps', '10'], { FABRIC_RESTORE_DIR: dir('empty') });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot resume: .*model\.json/);
    const negative = await train(['--steps=-3']);
    expect(negative.code).toBe(2);
    expect(negative.stderr).toMatch(/bad arguments: steps/);
    const unknown = await train(['--stpes', '3']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/bad arguments: .*--stpes/);
  });
});

describe('examples/train under the runner', () => {
  test('cancelled mid-run, then run again from its checkpoint: it resumes where it was stopped', async () => {
    const launcher = new JobLauncher({ owner: 'train-test' });
    const work = dir('work');
    const ckpt = join(work, 'ckpt');
    const logDir = join(work, 'logs');
    const spec = (restoreDir?: string) => ({
      jobId: 'train-demo',
      argv: [...NODE, TRAIN, '--steps', '400', '--checkpoint-every', '20', '--step-delay-ms', '5', '--log-every', '20'],
      cwd: work,
      logDir,
      env: { base: { PATH: process.env.PATH ?? '' }, devices: [], checkpointDir: ckpt, restoreDir },
      stopGraceMs: 10_000,
    });
    const first = new JobRun(spec(), { launcher, clock: systemClock, rng: new SeededRng(1) });
    first.start();
    const deadline = Date.now() + 30_000;
    const log = () => {
      try {
        return readFileSync(join(logDir, 'stdout.log'), 'utf8');
      } catch {
        return '';
      }
    };
    while (!/checkpoint step 40 saved/.test(log())) {
      if (Date.now() > deadline) throw new Error(`no checkpoint in time; log: ${log()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    first.stop('cancelled', 'test');
    const r1 = await first.result;
    expect(r1.outcome).toBe('cancelled');
    expect(r1.exitCode).toBe(143); // it checkpointed on SIGTERM and left on its own, before any SIGKILL
    const saved = checkpoint(ckpt).step;
    expect(saved).toBeGreaterThanOrEqual(40);

    const restore = join(work, 'restore');
    mkdirSync(restore);
    cpSync(join(ckpt, 'model.json'), join(restore, 'model.json'));
    const second = new JobRun({ ...spec(restore), firstAttempt: 2 }, { launcher, clock: systemClock, rng: new SeededRng(1) });
    second.start();
    const r2 = await second.result;
    expect(r2.outcome).toBe('succeeded');
    expect(log()).toContain(`resumed from step ${saved} `);
    expect(checkpoint(ckpt).step).toBe(400);
    expect(log()).toMatch(/done: step 400 loss [\d.]+ accuracy 0\.9\d+\n$/);
    await launcher.close();
  });
});
