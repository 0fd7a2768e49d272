import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { isFabricError, ManualClock, SeededRng } from '../../src/core/index.ts';
import { JobRun, JobRunner, type JobRunDeps, type RetryPolicy, type RunEvent, type RunResult, type RunSpec } from '../../src/runner/index.ts';
import { FakeLauncher } from './fake-launcher.ts';

const retry3: RetryPolicy = { maxAttempts: 3, backoffBaseMs: 1000, backoffCapMs: 60_000, backoffFactor: 2, jitter: false };

function spec(over: Partial<RunSpec> = {}): RunSpec {
  return {
    jobId: 'job-1',
    argv: ['python3', 'train.py'],
    cwd: '/work/job-1',
    logDir: '/logs/job-1',
    env: { base: { PATH: '/usr/bin' }, devices: [], checkpointDir: '/ckpt/job-1' },
    stopGraceMs: 5000,
    ...over,
  };
}

function setup(over: Partial<RunSpec> = {}, deps: Partial<JobRunDeps> = {}) {
  const clock = new ManualClock(0);
  const launcher = new FakeLauncher();
  const events: RunEvent[] = [];
  const run = new JobRun(spec(over), { launcher, clock, rng: new SeededRng(1), onEvent: (e) => events.push(e), ...deps });
  let result: RunResult | null = null;
  void run.result.then((r) => {
    result = r;
  });
  const states = () => events.filter((e) => e.type === 'state').map((e) => e.state);
  return { clock, launcher, events, run, states, result: () => result };
}

const flush = () => new Promise<void>((r) => setImmediate(r));

describe('JobRun lifecycle', () => {
  test('a job that exits 0 goes placed → running → succeeded with its environment and logs', async () => {
    const { launcher, run, states, result, events } = setup();
    run.start();
    expect(run.state).toBe('placed');
    expect(launcher.launched).toHaveLength(1);
    const req = launcher.last.request;
    expect(req).toMatchObject({ jobId: 'job-1', attempt: 1, argv: ['python3', 'train.py'], cwd: '/work/job-1', logDir: '/logs/job-1', logMaxBytes: 16 * 1024 * 1024 });
    expect(req.env).toMatchObject({ PATH: '/usr/bin', FABRIC_JOB_ID: 'job-1', FABRIC_ATTEMPT: '1', FABRIC_CHECKPOINT_DIR: '/ckpt/job-1', CUDA_VISIBLE_DEVICES: '' });
    launcher.last.start(4242);
    expect(run.state).toBe('running');
    expect(run.pid).toBe(4242);
    launcher.last.end({ kind: 'exited', code: 0 });
    await flush();
    expect(states()).toEqual(['placed', 'running', 'succeeded']);
    expect(result()).toMatchObject({ outcome: 'succeeded', exitCode: 0, reason: null });
    expect(result()!.attempts).toEqual([{ attempt: 1, pid: 4242, startedAt: 0, endedAt: 0, exit: { kind: 'exited', code: 0 }, outcome: 'succeeded', reason: null }]);
    expect(events.map((e) => e.type)).toEqual(['state', 'attempt-started', 'state', 'attempt-ended', 'state']);
    expect(run.done).toBe(true);
  });

  test('a failing job is retried with exponential backoff, then fails for good', async () => {
    const { clock, launcher, run, states, result, events } = setup({ retry: retry3 });
    run.start();
    launcher.last.start(100);
    launcher.last.end({ kind: 'exited', code: 1 });
    expect(run.state).toBe('restarting');
    clock.advance(999);
    expect(launcher.launched).toHaveLength(1);
    clock.advance(1);
    expect(launcher.launched).toHaveLength(2);
    expect(launcher.last.request.attempt).toBe(2);
    expect(launcher.last.request.env.FABRIC_ATTEMPT).toBe('2');
    launcher.last.start(101);
    launcher.last.end({ kind: 'signaled', signal: 'SIGSEGV' });
    clock.advance(1999);
    expect(launcher.launched).toHaveLength(2);
    clock.advance(1);
    launcher.last.start(102);
    launcher.last.end({ kind: 'exited', code: 7 });
    await flush();
    expect(states()).toEqual(['placed', 'running', 'restarting', 'running', 'restarting', 'running', 'failed']);
    expect(result()).toMatchObject({ outcome: 'failed', exitCode: 7, reason: 'exited with code 7 (all 3 attempts failed)' });
    expect(result()!.attempts.map((a) => [a.attempt, a.outcome, a.reason])).toEqual([
      [1, 'restarting', 'exited with code 1'],
      [2, 'restarting', 'killed by SIGSEGV'],
      [3, 'failed', 'exited with code 7'],
    ]);
    const retryIns = events.flatMap((e) => (e.type === 'attempt-ended' ? [e.retryInMs] : []));
    expect(retryIns).toEqual([1000, 2000, null]);
    expect(clock.pendingTimers()).toBe(0);
  });

  test('a retry that succeeds ends the run as succeeded', async () => {
    const { clock, launcher, run, result } = setup({ retry: retry3 });
    run.start();
    launcher.last.start(1);
    launcher.last.end({ kind: 'exited', code: 3 });
    clock.advance(1000);
    launcher.last.start(2);
    launcher.last.end({ kind: 'exited', code: 0 });
    await flush();
    expect(result()).toMatchObject({ outcome: 'succeeded', exitCode: 0 });
    expect(result()!.attempts).toHaveLength(2);
  });

  test('a command that cannot start fails at once, whatever the retry policy', async () => {
    const { launcher, run, result } = setup({ retry: retry3 });
    run.start();
    launcher.last.end({ kind: 'spawn-failed', message: 'pyhton3: command not found' });
    await flush();
    expect(launcher.launched).toHaveLength(1);
    expect(result()).toMatchObject({ outcome: 'failed', reason: 'could not start: pyhton3: command not found', exitCode: null });
  });

  test('a lost supervisor counts as a failure and is retried', () => {
    const { launcher, run } = setup({ retry: retry3 });
    run.start();
    launcher.last.start(1);
    launcher.last.end({ kind: 'supervisor-lost', message: 'job supervisor was killed by SIGKILL' });
    expect(run.state).toBe('restarting');
  });

  test('FABRIC_ATTEMPT counts from firstAttempt (the fabric placement attempt)', () => {
    const { launcher, run } = setup({ firstAttempt: 4, retry: { ...retry3, maxAttempts: 2 } });
    run.start();
    expect(launcher.last.request.env.FABRIC_ATTEMPT).toBe('4');
  });

  test('a bad environment is refused when the run is made, not at its first attempt', () => {
    expect(() => setup({ env: { base: {}, devices: [], checkpointDir: '/c', gang: { masterAddr: 'h', masterPort: 1, nodeRank: 5, nodes: 2 } } })).toThrow(/node rank/);
    expect(() => setup({ argv: [] })).toThrow(/empty command/);
  });
});

describe('stopping a run', () => {
  test('cancel: SIGTERM, then SIGKILL once the grace period is over; cancelled never retries', async () => {
    const { clock, launcher, run, states, result } = setup({ retry: retry3 });
    run.start();
    launcher.last.start(77);
    run.stop('cancelled', 'cancelled by ada');
    expect(launcher.last.signals).toEqual(['SIGTERM']);
    clock.advance(4999);
    expect(launcher.last.signals).toEqual(['SIGTERM']);
    clock.advance(1);
    expect(launcher.last.signals).toEqual(['SIGTERM', 'SIGKILL']);
    launcher.last.end({ kind: 'signaled', signal: 'SIGKILL' });
    await flush();
    expect(states()).toEqual(['placed', 'running', 'cancelled']);
    expect(result()).toMatchObject({ outcome: 'cancelled', reason: 'cancelled by ada' });
    clock.advance(600_000);
    expect(launcher.launched).toHaveLength(1);
  });

  test('a job that exits on SIGTERM is not killed, and its timer is gone; exit 0 after cancel is still cancelled', async () => {
    const { clock, launcher, run, result } = setup();
    run.start();
    launcher.last.start(77);
    run.stop('cancelled', 'user');
    launcher.last.end({ kind: 'exited', code: 0 });
    await flush();
    expect(clock.pendingTimers()).toBe(0);
    expect(launcher.last.signals).toEqual(['SIGTERM']);
    expect(result()).toMatchObject({ outcome: 'cancelled', exitCode: 0 });
  });

  test('cancel while waiting to retry ends the run at once', async () => {
    const { clock, launcher, run, result } = setup({ retry: retry3 });
    run.start();
    launcher.last.start(1);
    launcher.last.end({ kind: 'exited', code: 1 });
    run.stop('cancelled', 'user');
    await flush();
    expect(result()).toMatchObject({ outcome: 'cancelled' });
    expect(clock.pendingTimers()).toBe(0);
    clock.advance(100_000);
    expect(launcher.launched).toHaveLength(1);
  });

  test('a stop before the process has started signals it as soon as it starts', async () => {
    const { launcher, run, result } = setup();
    run.start();
    run.stop('lost', 'fenced: no leader for 10 s');
    expect(launcher.last.signals).toEqual([]);
    launcher.last.start(9);
    expect(launcher.last.signals).toEqual(['SIGTERM']);
    launcher.last.end({ kind: 'signaled', signal: 'SIGTERM' });
    await flush();
    expect(result()).toMatchObject({ outcome: 'lost', reason: 'fenced: no leader for 10 s' });
  });

  test('a stop before the process could start ends the run with the stop outcome', async () => {
    const { launcher, run, result } = setup();
    run.start();
    run.stop('cancelled', 'user');
    launcher.last.end({ kind: 'spawn-failed', message: 'nope' });
    await flush();
    expect(result()).toMatchObject({ outcome: 'cancelled' });
  });

  test('stopping again with no grace kills at once; cancelled outranks a preemption', async () => {
    const { clock, launcher, run, result } = setup();
    run.start();
    launcher.last.start(5);
    run.stop('restarting', 'preempted by job-9');
    run.stop('cancelled', 'user', 0);
    expect(launcher.last.signals).toEqual(['SIGTERM', 'SIGKILL']);
    expect(clock.pendingTimers()).toBe(0);
    run.stop('lost', 'fenced');
    launcher.last.end({ kind: 'signaled', signal: 'SIGKILL' });
    await flush();
    expect(result()).toMatchObject({ outcome: 'cancelled', reason: 'user' });
  });

  test('a shorter grace on a second stop moves the SIGKILL earlier; a longer one changes nothing', () => {
    const { clock, launcher, run } = setup();
    run.start();
    launcher.last.start(5);
    run.stop('restarting', 'preempted', 10_000);
    run.stop('restarting', 'preempted', 20_000);
    clock.advance(2000);
    run.stop('cancelled', 'user', 1000);
    clock.advance(999);
    expect(launcher.last.signals).toEqual(['SIGTERM']);
    clock.advance(1);
    expect(launcher.last.signals).toEqual(['SIGTERM', 'SIGKILL']);
  });

  test('a run stopped before it started ends without launching anything', async () => {
    const { launcher, run, result } = setup();
    run.stop('cancelled', 'user');
    await flush();
    expect(result()).toMatchObject({ outcome: 'cancelled' });
    expect(launcher.launched).toHaveLength(0);
    expect(() => run.start()).toThrow(/started twice/);
  });

  test('callbacks that come again or late change nothing', async () => {
    const { launcher, run, result, events } = setup();
    run.start();
    launcher.last.start(5);
    launcher.last.end({ kind: 'exited', code: 0 });
    const count = events.length;
    launcher.last.replay();
    run.stop('cancelled', 'too late');
    await flush();
    expect(events).toHaveLength(count);
    expect(result()).toMatchObject({ outcome: 'succeeded' });
  });
});

describe('preparing attempts', () => {
  test('the hook names the restore directory of each attempt', async () => {
    const asked: number[] = [];
    const { clock, launcher, run } = setup(
      { retry: retry3, env: { base: {}, devices: [], checkpointDir: '/c', restoreDir: '/restore/first' } },
      {
        prepareAttempt: async (attempt) => {
          asked.push(attempt);
          return attempt === 1 ? {} : { restoreDir: `/restore/step-${attempt * 10}`, extraEnv: { FABRIC_EPOCH: '3' } };
        },
      },
    );
    run.start();
    expect(launcher.launched).toHaveLength(0);
    await flush();
    expect(launcher.last.request.env.FABRIC_RESTORE_DIR).toBe('/restore/first');
    launcher.last.start(1);
    launcher.last.end({ kind: 'exited', code: 1 });
    clock.advance(1000);
    await flush();
    expect(asked).toEqual([1, 2]);
    expect(launcher.last.request.env).toMatchObject({ FABRIC_RESTORE_DIR: '/restore/step-20', FABRIC_EPOCH: '3', FABRIC_ATTEMPT: '2' });
  });

  test('a failed preparation is a failed attempt under the retry policy', async () => {
    let calls = 0;
    const { clock, launcher, run, result } = setup(
      { retry: { ...retry3, maxAttempts: 2 } },
      {
        prepareAttempt: async () => {
          calls++;
          throw new Error('no replica holds chunk 3f2a');
        },
      },
    );
    run.start();
    await flush();
    expect(run.state).toBe('restarting');
    clock.advance(1000);
    await flush();
    expect(calls).toBe(2);
    expect(launcher.launched).toHaveLength(0);
    expect(result()).toMatchObject({ outcome: 'failed', reason: 'could not prepare attempt 2: no replica holds chunk 3f2a (all 2 attempts failed)' });
  });

  test('a stop during preparation ends the run at once and nothing is launched after', async () => {
    let release!: () => void;
    const { launcher, run, result } = setup({}, { prepareAttempt: () => new Promise((r) => (release = () => r({}))) });
    run.start();
    run.stop('cancelled', 'user');
    await flush();
    expect(result()).toMatchObject({ outcome: 'cancelled' });
    release();
    await flush();
    expect(launcher.launched).toHaveLength(0);
  });
});

describe('JobRunner', () => {
  function runner() {
    const clock = new ManualClock(0);
    const launcher = new FakeLauncher();
    const events: RunEvent[] = [];
    return { clock, launcher, events, runner: new JobRunner({ launcher, clock, rng: new SeededRng(5), onEvent: (e) => events.push(e) }) };
  }

  test('one run per job at a time; a finished job can run again', async () => {
    const { launcher, runner: r } = runner();
    const run = r.start(spec());
    expect(() => r.start(spec())).toThrow(/already running/);
    try {
      r.start(spec());
    } catch (err) {
      expect(isFabricError(err, 'BAD_INPUT')).toBe(true);
    }
    launcher.last.start(1);
    launcher.last.end({ kind: 'exited', code: 0 });
    await run.result;
    expect(r.get('job-1')).toBeUndefined();
    const again = r.start(spec());
    expect(r.get('job-1')).toBe(again);
  });

  test('stop and stopAll reach the runs; stopAll waits for every process to end', async () => {
    const { launcher, runner: r, events } = runner();
    launcher.onSignal = (proc, sig) => proc.end({ kind: 'signaled', signal: sig });
    r.start(spec({ jobId: 'a' }));
    r.start(spec({ jobId: 'b' }));
    r.start(spec({ jobId: 'c' }));
    launcher.launched.forEach((p, i) => p.start(10 + i));
    expect(r.stop('a', 'cancelled', 'user')).toBe(true);
    expect(r.stop('zzz', 'cancelled', 'user')).toBe(false);
    const results = await r.stopAll('lost', 'fenced');
    expect(results.map((x) => x.outcome).sort()).toEqual(['lost', 'lost']);
    expect(r.list()).toHaveLength(0);
    expect(events.filter((e) => e.type === 'state' && e.state === 'cancelled')).toHaveLength(1);
  });
});

describe('JobRun under random schedules', () => {
  type Step =
    | { op: 'start' }
    | { op: 'exit'; code: number }
    | { op: 'crash' }
    | { op: 'spawnFail' }
    | { op: 'stop'; outcome: 'cancelled' | 'lost' | 'restarting' | 'failed'; grace: number }
    | { op: 'advance'; ms: number };
  const step: fc.Arbitrary<Step> = fc.oneof(
    fc.constant<Step>({ op: 'start' }),
    fc.integer({ min: 0, max: 3 }).map<Step>((code) => ({ op: 'exit', code })),
    fc.constant<Step>({ op: 'crash' }),
    fc.constant<Step>({ op: 'spawnFail' }),
    fc.record({ op: fc.constant('stop' as const), outcome: fc.constantFrom('cancelled' as const, 'lost' as const, 'restarting' as const, 'failed' as const), grace: fc.integer({ min: 0, max: 3000 }) }),
    fc.integer({ min: 0, max: 5000 }).map<Step>((ms) => ({ op: 'advance', ms })),
  );

  test('never two processes at once, nothing launched after a stop, one result, a clean end', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 40 }), fc.integer({ min: 1, max: 4 }), async (steps, maxAttempts) => {
        const { clock, launcher, run, events } = setup({ retry: { ...retry3, maxAttempts, jitter: true }, stopGraceMs: 1500 });
        launcher.onSignal = (proc, sig) => {
          if (sig === 'SIGKILL') proc.end({ kind: 'signaled', signal: 'SIGKILL' });
        };
        run.start();
        let stopped = false;
        let launchedAtStop = 0;
        let pid = 1;
        for (const s of steps) {
          const cur = launcher.launched.at(-1);
          const pending = cur !== undefined && cur.exit === null;
          switch (s.op) {
            case 'start':
              if (pending && cur.pid === null) cur.start(pid++);
              break;
            case 'exit':
              if (pending && cur.pid !== null) cur.end({ kind: 'exited', code: s.code });
              break;
            case 'crash':
              if (pending && cur.pid !== null) cur.end({ kind: 'signaled', signal: 'SIGSEGV' });
              break;
            case 'spawnFail':
              if (pending && cur.pid === null) cur.end({ kind: 'spawn-failed', message: 'x' });
              break;
            case 'stop':
              if (!stopped) launchedAtStop = launcher.launched.length;
              stopped = true;
              run.stop(s.outcome, 'test', s.grace);
              break;
            case 'advance':
              clock.advance(s.ms);
              break;
          }
          expect(launcher.live.length).toBeLessThanOrEqual(1);
          expect(launcher.launched.filter((p) => p.exit === null).length).toBeLessThanOrEqual(1);
          if (stopped) expect(launcher.launched.length).toBeLessThanOrEqual(launchedAtStop);
          expect(launcher.launched.length).toBeLessThanOrEqual(maxAttempts);
        }
        // Drain: stop, let the process start if it was about to, let SIGKILL land.
        run.stop('cancelled', 'drain', 0);
        const cur = launcher.launched.at(-1);
        if (cur && cur.exit === null && cur.pid === null) cur.start(pid++);
        clock.advance(10_000);
        await flush();
        expect(run.done).toBe(true);
        expect(clock.pendingTimers()).toBe(0);
        const result = await run.result;
        const states = events.flatMap((e) => (e.type === 'state' ? [e.state] : []));
        expect(states.at(-1)).toBe(result.outcome);
        const firstTerminal = states.findIndex((st) => ['succeeded', 'failed', 'cancelled', 'lost'].includes(st));
        if (firstTerminal >= 0) expect(firstTerminal).toBe(states.length - 1);
        expect(result.attempts.every((a) => a.outcome !== null)).toBe(true);
        expect(launcher.live).toHaveLength(0);
      }),
      { numRuns: 300 },
    );
  });
});
