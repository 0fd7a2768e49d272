/**
 * The real launcher, on real processes: a supervisor per job, process groups, capped logs, and
 * jobs that end when their daemon is killed with -9.
 */
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { SeededRng } from '../../src/core/index.ts';
import { JobLauncher, defaultSupervisorNode } from '../../src/node/job-launcher.ts';
import { readLogRange, readLogTail } from '../../src/node/job-logs.ts';
import { processAlive, killOrphanJobs } from '../../src/node/job-procs.ts';
import { systemClock } from '../../src/node/system.ts';
import { JobRun, type LaunchRequest, type ProcessExit } from '../../src/runner/index.ts';

const root = mkdtempSync(join(tmpdir(), 'fabric-launcher-'));
let seq = 0;
const launcher = new JobLauncher({ owner: 'launcher-test' });

afterEach(async () => {
  await launcher.close();
});
afterAll(() => {
  killOrphanJobs('launcher-test');
  killOrphanJobs('fake-daemon');
  rmSync(root, { recursive: true, force: true });
});

function jobDir(): string {
  const dir = join(root, `job-${++seq}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function request(dir: string, script: string, over: Partial<LaunchRequest> = {}): LaunchRequest {
  return {
    jobId: `job-${seq}`,
    attempt: 1,
    argv: ['/bin/sh', '-c', script],
    cwd: dir,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    logDir: join(dir, 'logs'),
    logMaxBytes: 64 * 1024,
    ...over,
  };
}

interface Launched {
  pid: Promise<number>;
  exit: Promise<ProcessExit>;
  signal: (sig: 'SIGTERM' | 'SIGKILL') => void;
}

function launch(req: LaunchRequest, on: JobLauncher = launcher): Launched {
  let onPid!: (pid: number) => void;
  let onExit!: (e: ProcessExit) => void;
  const pid = new Promise<number>((r) => (onPid = r));
  const exit = new Promise<ProcessExit>((r) => (onExit = r));
  const handle = on.launch(req, { onStart: onPid, onExit });
  return { pid, exit, signal: (sig) => handle.signal(sig) };
}

async function waitFor<T>(what: string, fn: () => T | undefined | false, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function readPid(path: string): number | undefined {
  if (!existsSync(path)) return undefined;
  const n = Number.parseInt(readFileSync(path, 'utf8').trim(), 10);
  return Number.isInteger(n) && n > 1 ? n : undefined;
}

const parentOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'latin1').split(') ')[1]!.split(' ')[1]);

/** A job shell that starts a child in its group and one that escapes into its own session, and records their pids. */
const FAMILY = [
  'sleep 1000 & echo $! > child.pid',
  `setsid /bin/sh -c 'echo $$ > escaped.pid; exec sleep 1000' &`,
  'while [ ! -s escaped.pid ]; do sleep 0.05; done',
].join('\n');

async function family(dir: string): Promise<{ child: number; escaped: number }> {
  const child = await waitFor('child pid', () => readPid(join(dir, 'child.pid')));
  const escaped = await waitFor('escaped pid', () => readPid(join(dir, 'escaped.pid')));
  return { child, escaped };
}

describe('JobLauncher', () => {
  test('runs the command in its directory with exactly the given environment; output goes to the log files', async () => {
    const dir = jobDir();
    process.env.FABRIC_TEST_DAEMON_ONLY = 'must not leak';
    const job = launch(request(dir, 'pwd; env | sort; echo to-stderr >&2; exit 3', { env: { PATH: process.env.PATH ?? '', GREETING: 'hello job' } }));
    delete process.env.FABRIC_TEST_DAEMON_ONLY;
    const pid = await job.pid;
    expect(pid).toBeGreaterThan(1);
    expect(await job.exit).toEqual({ kind: 'exited', code: 3 });
    const out = readFileSync(join(dir, 'logs', 'stdout.log'), 'utf8');
    expect(out.split('\n')[0]).toBe(dir);
    expect(out).toContain('GREETING=hello job');
    expect(out).toMatch(/^FABRIC_RUN_TOKEN=launcher-test\.[0-9a-f]{24}$/m);
    expect(out).not.toContain('FABRIC_TEST_DAEMON_ONLY');
    expect(readFileSync(join(dir, 'logs', 'stderr.log'), 'utf8')).toBe('to-stderr\n');
  });

  test('a command that does not exist, or a missing working directory, fails to start', async () => {
    const dir = jobDir();
    const missing = launch(request(dir, '', { argv: ['fabric-no-such-command-xyz', '--flag'] }));
    expect(await missing.exit).toEqual({ kind: 'spawn-failed', message: 'fabric-no-such-command-xyz: command not found' });
    const noDir = launch(request(dir, 'true', { cwd: join(dir, 'nope') }));
    expect(await noDir.exit).toMatchObject({ kind: 'spawn-failed', message: expect.stringContaining(`working directory ${join(dir, 'nope')}`) });
  });

  test('SIGTERM reaches the whole process group, and what escaped the group too', async () => {
    const dir = jobDir();
    const job = launch(request(dir, `${FAMILY}\nwait`));
    const pid = await job.pid;
    const { child, escaped } = await family(dir);
    expect([pid, child, escaped].every(processAlive)).toBe(true);
    job.signal('SIGTERM');
    expect(await job.exit).toEqual({ kind: 'signaled', signal: 'SIGTERM' });
    await waitFor('the family to be gone', () => ![pid, child, escaped].some(processAlive));
  });

  test('when the main process exits, what it left running is ended', async () => {
    const dir = jobDir();
    const job = launch(request(dir, `${FAMILY}\nexit 0`));
    await job.pid;
    const exit = await job.exit;
    expect(exit).toEqual({ kind: 'exited', code: 0 });
    const { child, escaped } = await family(dir);
    await waitFor('leftovers to be gone', () => !processAlive(child) && !processAlive(escaped));
  });

  test('a killed supervisor takes its job with it and is reported as lost', async () => {
    const dir = jobDir();
    const job = launch(request(dir, `${FAMILY}\nwait`));
    const pid = await job.pid;
    const { child, escaped } = await family(dir);
    const supervisor = parentOf(pid);
    expect(supervisor).not.toBe(process.pid);
    process.kill(supervisor, 'SIGKILL');
    expect(await job.exit).toMatchObject({ kind: 'supervisor-lost', message: expect.stringContaining('killed by SIGKILL') });
    await waitFor('the family to be gone', () => ![pid, child, escaped].some(processAlive));
  });

  test('output beyond the cap keeps the newest lines and stays within the cap', async () => {
    const dir = jobDir();
    const script = 'i=0; while [ $i -lt 4000 ]; do echo "progress line $i of a chatty job"; i=$((i+1)); done; echo last-line';
    const job = launch(request(dir, script, { logMaxBytes: 16 * 1024 }));
    expect(await job.exit).toEqual({ kind: 'exited', code: 0 });
    const logs = join(dir, 'logs');
    expect(statSync(join(logs, 'stdout.log')).size + statSync(join(logs, 'stdout.log.1')).size).toBeLessThanOrEqual(16 * 1024 + 240);
    expect(readLogTail(logs, 'stdout', 64).data.toString()).toMatch(/progress line 3999 of a chatty job\nlast-line\n$/);
    const all = readLogRange(logs, 'stdout', 0, 1 << 20);
    expect(all.dropped).toBeGreaterThan(0);
    expect(all.size).toBe(all.dropped + all.data.length);
  });

  test('close() ends every job and waits for them', async () => {
    const local = new JobLauncher({ owner: 'launcher-test' });
    const a = launch(request(jobDir(), 'sleep 1000'), local);
    const b = launch(request(jobDir(), 'trap "" TERM; sleep 1000'), local);
    const pids = await Promise.all([a.pid, b.pid]);
    expect(local.liveCount).toBe(2);
    await local.close();
    expect(local.liveCount).toBe(0);
    expect(await a.exit).toEqual({ kind: 'signaled', signal: 'SIGKILL' });
    expect(await b.exit).toEqual({ kind: 'signaled', signal: 'SIGKILL' });
    expect(pids.some(processAlive)).toBe(false);
  });
});

describe('JobRun on real processes', () => {
  test('retries a failing command, then fails; each attempt appends to the same logs', async () => {
    const dir = jobDir();
    const run = new JobRun(
      {
        jobId: 'retry-job',
        argv: ['/bin/sh', '-c', 'echo "attempt $FABRIC_ATTEMPT of $FABRIC_JOB_ID"; exit 4'],
        cwd: dir,
        logDir: join(dir, 'logs'),
        env: { base: { PATH: process.env.PATH ?? '' }, devices: [], checkpointDir: join(dir, 'ckpt') },
        retry: { maxAttempts: 3, backoffBaseMs: 20, backoffCapMs: 100, backoffFactor: 2, jitter: true },
      },
      { launcher, clock: systemClock, rng: new SeededRng(9) },
    );
    run.start();
    const result = await run.result;
    expect(result).toMatchObject({ outcome: 'failed', exitCode: 4, reason: 'exited with code 4 (all 3 attempts failed)' });
    expect(readFileSync(join(dir, 'logs', 'stdout.log'), 'utf8')).toBe('attempt 1 of retry-job\nattempt 2 of retry-job\nattempt 3 of retry-job\n');
  });

  test('cancel of a job that ignores SIGTERM ends in SIGKILL after the grace period', async () => {
    const dir = jobDir();
    const run = new JobRun(
      {
        jobId: 'stubborn',
        argv: ['/bin/sh', '-c', `trap "" TERM\n${FAMILY}\necho ready\nwait`],
        cwd: dir,
        logDir: join(dir, 'logs'),
        env: { base: { PATH: process.env.PATH ?? '' }, devices: [], checkpointDir: join(dir, 'ckpt') },
        stopGraceMs: 300,
      },
      { launcher, clock: systemClock, rng: new SeededRng(9) },
    );
    run.start();
    const { child, escaped } = await family(dir);
    const pid = await waitFor('the job to run', () => run.pid ?? undefined);
    run.stop('cancelled', 'cancelled by test');
    const result = await run.result;
    expect(result.outcome).toBe('cancelled');
    expect(result.attempts[0]!.exit).toEqual({ kind: 'signaled', signal: 'SIGKILL' });
    await waitFor('the family to be gone', () => ![pid, child, escaped].some(processAlive));
  });
});

describe('a job never outlives its daemon', () => {
  test('kill -9 of the daemon ends the job, its child, and a child that escaped its group', async () => {
    const dir = jobDir();
    const req = request(dir, `${FAMILY}\nwait`);
    // A stand-in daemon: a separate Node process that starts one job through the real launcher.
    const script = [
      `import { JobLauncher } from ${JSON.stringify(pathToFileURL(join(import.meta.dirname, '../../src/node/job-launcher.ts')).href)};`,
      `const launcher = new JobLauncher({ owner: 'fake-daemon' });`,
      `launcher.launch(${JSON.stringify(req)}, {`,
      `  onStart: (pid) => process.stdout.write(JSON.stringify({ started: pid }) + '\\n'),`,
      `  onExit: (exit) => process.stdout.write(JSON.stringify({ exit }) + '\\n'),`,
      `});`,
      `setInterval(() => {}, 60_000);`,
    ].join('\n');
    const [node, ...nodeArgs] = defaultSupervisorNode();
    const daemon = spawn(node!, [...nodeArgs, '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    daemon.stdout.on('data', (d: Buffer) => (out += d.toString()));
    daemon.stderr.on('data', (d: Buffer) => (err += d.toString()));
    try {
      const jobPid = await waitFor(`the job to start (daemon said: ${out} ${err})`, () => {
        const m = /\{"started":(\d+)\}/.exec(out);
        return m ? Number(m[1]) : undefined;
      });
      const { child, escaped } = await family(dir);
      const supervisor = parentOf(jobPid);
      expect(parentOf(supervisor)).toBe(daemon.pid);
      expect([jobPid, child, escaped, supervisor].every(processAlive)).toBe(true);

      process.kill(daemon.pid!, 'SIGKILL');

      await waitFor('job, child, escaped child and supervisor to be gone', () => ![jobPid, child, escaped, supervisor].some(processAlive));
      expect(out).not.toContain('"exit"'); // nobody was left to tell
    } finally {
      if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    }
  });

  test('a job whose lease is not renewed is killed by its supervisor; renewals keep it, but only for the time they grant', async () => {
    const leased = new JobLauncher({ owner: 'launcher-test', leaseMs: 600 });
    try {
      // Not renewed: killed within the lease.
      const lapsed = launch(request(jobDir(), 'sleep 30'), leased);
      await lapsed.pid;
      expect(await lapsed.exit).toEqual({ kind: 'signaled', signal: 'SIGKILL' });
      // Renewed for a full lease every 100 ms: alive well past one lease.
      const kept = launch(request(jobDir(), 'sleep 30'), leased);
      const pid = await kept.pid;
      const renewals = setInterval(() => leased.renewLeases(600), 100);
      await new Promise((r) => setTimeout(r, 1_500));
      expect(processAlive(pid)).toBe(true);
      // Renewed, but each renewal grants only what remains (the daemon's own lease running out): it ends.
      clearInterval(renewals);
      const deadline = Date.now() + 300;
      const shrinking = setInterval(() => leased.renewLeases(Math.max(0, deadline - Date.now())), 50);
      expect(await kept.exit).toEqual({ kind: 'signaled', signal: 'SIGKILL' });
      clearInterval(shrinking);
    } finally {
      await leased.close();
    }
  });
});
