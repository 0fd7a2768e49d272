/**
 * The job agent's lease against a fake control plane and a fake runner, on fake timers: an idle
 * host asks for no lease; an allocation that arrives without one asks at once and starts only
 * once granted (never spinning while the leader does not answer); a host renews while it runs
 * jobs and for a lease period after; a host whose renewals fail stops its jobs after the lease.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type Logger, type Rng } from '../../src/core/index.ts';
import { FabricStateMachine, encodeCommand, type Command } from '../../src/placement/fsm/index.ts';
import type { JobRunner, RunResult } from '../../src/runner/index.ts';
import type { CommandRequest, ControlPlane } from '../../src/node/control-plane.ts';
import { DEFAULT_LEASE_MS, FENCE_STOP_GRACE_MS, JobAgent } from '../../src/node/job-agent.ts';

const SELF = 'peer-self';

type Grant = { commit: number } | null;

/** A follower's control plane: commands apply at once; lease requests answered by `lease`. */
class FakeControl {
  readonly id = SELF;
  readonly state = new FabricStateMachine();
  index = 0;
  role: 'leader' | 'follower' = 'follower';
  /** Answers a lease request (the default grants at once with the commit index). */
  lease: () => Promise<Grant> = () => Promise.resolve({ commit: this.index });
  /** When each lease request was made (fake ms). */
  readonly leaseRequests: number[] = [];
  readonly #listeners = new Set<() => void>();

  localStatus(): ReturnType<ControlPlane['localStatus']> {
    return { member: 'voter', role: this.role, leader: 'peer-leader', term: 1, voters: [SELF], learners: [], commit: this.index, applied: this.index, source: 'local', lastIndex: this.index };
  }

  onApplied(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  apply(request: CommandRequest): ReturnType<FabricStateMachine['apply']> {
    const result = this.state.apply(++this.index, encodeCommand({ ...request, at: Date.now() } as Command));
    for (const l of this.#listeners) l();
    return result;
  }

  async submit(request: CommandRequest): Promise<{ index: number; result: ReturnType<FabricStateMachine['apply']> }> {
    const result = this.apply(request);
    return { index: this.index, result };
  }

  renewLease(): Promise<Grant> {
    this.leaseRequests.push(Date.now());
    return this.lease();
  }
}

interface FakeRun {
  jobId: string;
  pid: number | null;
  result: Promise<RunResult>;
  end(outcome: RunResult['outcome']): void;
  stops: { outcome: string; graceMs: number | undefined }[];
}

/** Runs that end when told to (or when stopped). */
class FakeRunner {
  readonly runs: FakeRun[] = [];
  readonly #live = new Map<string, FakeRun>();
  onStart: (jobId: string) => void = () => {};

  start(spec: { jobId: string }): FakeRun {
    let resolve!: (r: RunResult) => void;
    const run: FakeRun = {
      jobId: spec.jobId,
      pid: 4242,
      result: new Promise((r) => (resolve = r)),
      stops: [],
      end: (outcome) => {
        if (this.#live.get(spec.jobId) !== run) return;
        this.#live.delete(spec.jobId);
        resolve({ outcome, reason: null, exitCode: outcome === 'succeeded' ? 0 : null, attempts: [] });
      },
    };
    this.runs.push(run);
    this.#live.set(spec.jobId, run);
    this.onStart(spec.jobId);
    return run;
  }

  get(jobId: string): FakeRun | undefined {
    return this.#live.get(jobId);
  }

  stop(jobId: string, outcome: string, _reason: string, graceMs?: number): boolean {
    const run = this.#live.get(jobId);
    if (run === undefined) return false;
    run.stops.push({ outcome, graceMs });
    return true;
  }

  async stopAll(): Promise<RunResult[]> {
    for (const run of [...this.#live.values()]) run.end('lost');
    return [];
  }
}

const rng: Rng = { next: () => 0.5 } as unknown as Rng;

describe('job agent lease', () => {
  let dir: string;
  let control: FakeControl;
  let runner: FakeRunner;
  let agent: JobAgent;
  let logged: { level: string; msg: string }[];
  let supervisorRenewals: number[];

  const logger = (): Logger => {
    const at = (level: string) => (obj: Record<string, unknown> | string, msg?: string) => logged.push({ level, msg: typeof obj === 'string' ? obj : (msg ?? '') });
    const log: Logger = { child: () => log, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
    return log;
  };
  const fenceLogs = () => logged.filter((l) => /no word from the raft leader|in touch with the raft leader again/.test(l.msg));

  let jobs = 0;
  /** A job placed on this host; returns its id. */
  const place = (): string => {
    const jobId = `job-${++jobs}`;
    expect(control.apply({ type: 'job.submit', requestId: `rq-${jobId}`, actor: 'test', jobId, tenant: 'default', name: jobId, priority: 0, preemptible: false, spec: { gpus: 0, command: ['true'] } }).ok).toBe(true);
    expect(control.apply({ type: 'alloc.place', requestId: `${jobId}:place:1`, actor: 'leader', jobId, epoch: 1, allocations: [{ peerId: SELF, devices: [] }] }).ok).toBe(true);
    return jobId;
  };
  const requestsWithin = (from: number, to: number) => control.leaseRequests.filter((t) => t >= from && t < to).length;

  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 });
    dir = mkdtempSync(join(tmpdir(), 'job-agent-'));
    control = new FakeControl();
    runner = new FakeRunner();
    logged = [];
    supervisorRenewals = [];
    agent = new JobAgent({
      peerId: SELF,
      control: control as unknown as ControlPlane,
      runner: runner as unknown as JobRunner,
      devices: () => [],
      jobsDir: dir,
      baseEnv: {},
      checkpointCommit: 'true',
      extraEnv: {},
      gangAddress: () => undefined,
      renewLeases: (validForMs) => supervisorRenewals.push(validForMs),
      rng,
      log: logger(),
    });
    // A started run reports `running`, as the real runner's first attempt would.
    runner.onStart = (jobId) => queueMicrotask(() => agent.onRunEvent({ type: 'attempt-started', jobId, attempt: 1, pid: 4242, at: Date.now() }));
  });

  afterEach(async () => {
    await agent.stop();
    vi.useRealTimers();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an idle host sends no lease requests and logs nothing about the leader', async () => {
    agent.start();
    await vi.advanceTimersByTimeAsync(2_000);
    // Jobs elsewhere (and their commits) are no reason to ask either.
    expect(control.apply({ type: 'job.submit', requestId: 'rq-x', actor: 'test', jobId: 'x', tenant: 'default', name: 'x', priority: 0, preemptible: false, spec: { gpus: 0, command: ['true'] } }).ok).toBe(true);
    expect(control.apply({ type: 'alloc.place', requestId: 'x:place:1', actor: 'leader', jobId: 'x', epoch: 1, allocations: [{ peerId: 'peer-other', devices: [] }] }).ok).toBe(true);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(control.leaseRequests).toEqual([]);
    expect(runner.runs).toEqual([]);
    expect(fenceLogs()).toEqual([]);
  });

  it('an allocation without a lease asks for one at once and starts its job only once granted', async () => {
    let grant!: (g: Grant) => void;
    control.lease = () => new Promise((resolve) => (grant = resolve));
    agent.start();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(control.leaseRequests).toEqual([]);
    const placedAt = Date.now();
    const jobId = place();
    await vi.advanceTimersByTimeAsync(0);
    expect(control.leaseRequests).toEqual([placedAt]); // at once, not at the next renewal tick
    await vi.advanceTimersByTimeAsync(600);
    expect(control.leaseRequests).toHaveLength(1); // one request in flight at a time
    expect(runner.runs).toEqual([]); // no job without a lease
    control.lease = () => Promise.resolve({ commit: control.index });
    const grantedAt = Date.now();
    grant({ commit: control.index });
    await vi.advanceTimersByTimeAsync(0);
    expect(runner.runs.map((r) => r.jobId)).toEqual([jobId]);
    expect(Date.now()).toBe(grantedAt); // started on the grant, not at the next periodic reconcile
    // The lease counts from when the granted request was sent: 600 ms of it are gone already.
    expect(supervisorRenewals.at(-1)).toBeLessThanOrEqual(DEFAULT_LEASE_MS - 600);
    expect(fenceLogs()).toEqual([]);
  });

  it('a grant whose commit index this replica has not applied yet waits for the replica', async () => {
    control.lease = () => Promise.resolve({ commit: control.index + 5 });
    agent.start();
    place();
    await vi.advanceTimersByTimeAsync(500);
    expect(control.leaseRequests.length).toBeGreaterThan(0);
    expect(runner.runs).toEqual([]);
    for (let i = 0; i < 5; i++) control.apply({ type: 'job.submit', requestId: `rq-o${i}`, actor: 'test', jobId: `o${i}`, tenant: 'default', name: 'o', priority: 0, preemptible: false, spec: { gpus: 0, command: ['true'] } });
    await vi.advanceTimersByTimeAsync(0);
    expect(runner.runs).toHaveLength(1);
  });

  it('a leader that does not answer is asked at the renewal rate, not on every commit', async () => {
    control.lease = () => Promise.resolve(null);
    agent.start();
    place();
    const from = Date.now();
    // Commits keep coming (each runs a reconcile); the agent must not ask once per commit.
    for (let i = 0; i < 40; i++) {
      control.apply({ type: 'job.submit', requestId: `rq-n${i}`, actor: 'test', jobId: `n${i}`, tenant: 'default', name: 'n', priority: 0, preemptible: false, spec: { gpus: 0, command: ['true'] } });
      await vi.advanceTimersByTimeAsync(25);
    }
    const n = requestsWithin(from, from + 1_000);
    expect(n).toBeGreaterThanOrEqual(4);
    expect(n).toBeLessThanOrEqual(9); // at most one per half renewal period
    for (let i = 1; i < control.leaseRequests.length; i++) expect(control.leaseRequests[i]! - control.leaseRequests[i - 1]!).toBeGreaterThanOrEqual(125);
    expect(runner.runs).toEqual([]);
    expect(fenceLogs()).toEqual([]); // it had no jobs to stop: not fenced
  });

  it('renews every period while a job runs, for a lease period after it ends, then stops asking', async () => {
    agent.start();
    const jobId = place();
    await vi.advanceTimersByTimeAsync(0);
    expect(runner.runs).toHaveLength(1);
    expect(control.state.job(jobId)?.state).toBe('running');
    const runFrom = Date.now();
    await vi.advanceTimersByTimeAsync(2_000);
    const whileRunning = requestsWithin(runFrom, Date.now());
    expect(whileRunning).toBeGreaterThanOrEqual(7);
    expect(whileRunning).toBeLessThanOrEqual(9);
    expect(supervisorRenewals.length).toBeGreaterThan(10);
    expect(Math.min(...supervisorRenewals)).toBeGreaterThan(0);

    runner.runs[0]!.end('succeeded');
    await vi.advanceTimersByTimeAsync(0);
    expect(control.state.job(jobId)?.state).toBe('succeeded');
    const endedAt = Date.now();
    await vi.advanceTimersByTimeAsync(1_500);
    expect(requestsWithin(endedAt, Date.now())).toBeGreaterThanOrEqual(4); // the tail
    await vi.advanceTimersByTimeAsync(1_000);
    const quietFrom = Date.now();
    await vi.advanceTimersByTimeAsync(3_000);
    expect(requestsWithin(quietFrom, Date.now())).toBe(0);

    // Its lease has lapsed meanwhile; a new job asks at once again, and no fencing is logged.
    const next = place();
    await vi.advanceTimersByTimeAsync(0);
    expect(control.leaseRequests.at(-1)).toBe(Date.now());
    expect(runner.runs.map((r) => r.jobId)).toEqual([jobId, next]);
    expect(fenceLogs()).toEqual([]);
  });

  it('a job that ends and another that arrives within the tail start without waiting for a request', async () => {
    agent.start();
    place();
    await vi.advanceTimersByTimeAsync(500);
    runner.runs[0]!.end('succeeded');
    await vi.advanceTimersByTimeAsync(500);
    control.lease = () => new Promise(() => {}); // the leader goes quiet; the lease still holds
    const next = place();
    await vi.advanceTimersByTimeAsync(0);
    expect(runner.runs.map((r) => r.jobId)).toContain(next);
  });

  it('a host running a job whose renewals fail stops it after the lease, then runs again once in touch', async () => {
    agent.start();
    const jobId = place();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(runner.runs).toHaveLength(1);
    const run = runner.runs[0]!;
    control.lease = () => Promise.resolve(null);
    const failingFrom = Date.now();
    await vi.advanceTimersByTimeAsync(DEFAULT_LEASE_MS - 500);
    expect(run.stops).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(run.stops).toContainEqual({ outcome: 'lost', graceMs: FENCE_STOP_GRACE_MS });
    expect(logged.filter((l) => /no word from the raft leader/.test(l.msg))).toHaveLength(1);
    // While fenced it keeps asking (at the renewal rate), and starts nothing.
    expect(requestsWithin(failingFrom, Date.now())).toBeGreaterThanOrEqual(8);
    run.end('lost');
    await vi.advanceTimersByTimeAsync(1_000);
    expect(runner.runs).toHaveLength(1);
    expect(control.leaseRequests.at(-1)).toBeGreaterThan(Date.now() - 300);
    control.lease = () => Promise.resolve({ commit: control.index });
    await vi.advanceTimersByTimeAsync(300);
    expect(logged.filter((l) => /in touch with the raft leader again/.test(l.msg))).toHaveLength(1);
    expect(runner.runs.map((r) => r.jobId)).toEqual([jobId, jobId]); // its allocation is still here: it runs again
  });

  it('the leader holds its own lease without asking anyone', async () => {
    control.role = 'leader';
    control.lease = () => Promise.resolve(null); // a remote request would fail
    agent.start();
    place();
    await vi.advanceTimersByTimeAsync(0);
    expect(runner.runs).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(runner.runs[0]!.stops).toEqual([]);
    expect(fenceLogs()).toEqual([]);
  });

  it('stopped, it asks for nothing more', async () => {
    agent.start();
    place();
    await vi.advanceTimersByTimeAsync(500);
    await agent.stop();
    const n = control.leaseRequests.length;
    await vi.advanceTimersByTimeAsync(2_000);
    expect(control.leaseRequests).toHaveLength(n);
  });
});
