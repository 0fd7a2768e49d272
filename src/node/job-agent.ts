/**
 * The job agent: what every host does with the allocations the replicated state gives it, in the
 * manner of a kubelet. It reconciles its replica against the processes it runs: an allocation of
 * this peer whose job is placed or running, at the job's current epoch, gets a run; a run whose
 * allocation is gone (cancelled, re-placed, released) is stopped. What the runs do is reported
 * back as `job.transition` commands, with request ids made of (job, attempt, state) so that a
 * report retried after a leader change is applied once.
 *
 * Fencing: a host holds a lease from the Raft leader, renewed by a request every 250 ms and
 * counted from when the granted request was sent. Without a renewal for `leaseMs` it stops every
 * job it runs and starts none until it has one again; its job supervisors kill their jobs on
 * their own once the daemon stops renewing them (a frozen daemon). The leader re-places a job
 * only when the mesh holds its host dead and no lease request has arrived from it for longer
 * than the lease plus the stop grace (placement-service.ts), so the old run has ended before the
 * new one can start: a job never runs twice at once, even across a partition. (Clock RATES
 * must agree within the margin; absolute clocks need not.)
 *
 * Only a host that needs a lease asks for one: while it runs jobs or its replica holds
 * allocations it is to run, and for one lease period after the last (a job that ends and the
 * next that arrives do not start and stop the renewals). An idle host sends no lease requests
 * (with many hosts they would be most of the leader's traffic); one that gets an allocation
 * without a valid lease asks at once and starts the job when the grant comes. A host without a
 * lease and without jobs is not fenced: it has nothing to stop.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { errorMessage, type Logger, type Rng } from '../core/index.ts';
import type { Device } from '../devices/model.ts';
import type { Allocation, Checkpoint, DeviceGrant, Job } from '../placement/fsm/index.ts';
import {
  assignDevices,
  decideRetry,
  NO_RETRY,
  RetryPolicySchema,
  type JobRun,
  type JobRunner,
  type RunEvent,
  type RunResult,
  type AttemptFailure,
} from '../runner/index.ts';
import type { ControlPlane, CommandRequest } from './control-plane.ts';

/** A whole GPU, in the thousandths that device grants count in. */
const MILLI_PER_GPU = 1000;

/** Without word from the leader this long, a host stops its jobs. */
export const DEFAULT_LEASE_MS = 2_000;
/** How often a host asks the leader to renew its lease. */
const LEASE_RENEW_MS = 250;
/** How often the supervisors' leases are passed on (each renewal grants only what remains). */
const RENEW_SUPERVISORS_MS = 100;
/** SIGTERM to SIGKILL when fenced: short, the job may already run elsewhere soon. */
export const FENCE_STOP_GRACE_MS = 500;

export interface JobAgentOptions {
  peerId: string;
  control: ControlPlane;
  runner: JobRunner;
  /** This host's devices, as discovered now. */
  devices(): readonly Device[];
  /** Where jobs live on this host: `<jobsDir>/<jobId>/{work,logs,checkpoint,restore}`. */
  jobsDir: string;
  /** The environment jobs start from (the daemon's, normally). */
  baseEnv: Readonly<Record<string, string | undefined>>;
  /** The shell command a job runs to commit a checkpoint (FABRIC_CHECKPOINT_COMMIT). */
  checkpointCommit: string;
  /** More FABRIC_* variables (how the commit command finds this daemon). */
  extraEnv: Readonly<Record<string, string>>;
  /** The host address other members of a gang reach this one at (MASTER_ADDR when this is rank 0). */
  gangAddress(peerId: string): string | undefined;
  /** Renews the supervisors' lease on every job here for `validForMs` (what remains of this host's lease). */
  renewLeases(validForMs: number): void;
  /** Restores a committed checkpoint (fetching chunks as needed) and says into which directory. */
  restore?(job: Readonly<Job>, checkpoint: Readonly<Checkpoint>): Promise<string>;
  rng: Rng;
  log: Logger;
  leaseMs?: number;
}

interface Local {
  jobId: string;
  epoch: number;
  attempt: number;
  run: JobRun;
  /** What its allocation granted it here: a run holds these until its last process has ended. */
  devices: readonly DeviceGrant[];
  /** Stopped by this agent (cancel, preemption, re-placement, fencing): its end is not the job's news. */
  stoppedByUs: boolean;
}

export class JobAgent {
  readonly #o: JobAgentOptions;
  readonly #log: Logger;
  readonly #leaseMs: number;
  readonly #local = new Map<string, Local>();
  /**
   * Job → epoch whose run ended here by itself (its end is reported, not yet applied): the
   * allocation is still in the replica until the report commits, and must not start again.
   */
  readonly #finished = new Map<string, number>();
  /** Reports not yet acknowledged by the leader, by request id. */
  readonly #pending = new Map<string, CommandRequest>();
  /** Jobs whose run waits for a stopping run of another job to free its devices: job → that job. */
  readonly #waitingFor = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  #fenced = false;
  /** Send time of the latest lease request the leader granted (wall ms). */
  #leaseAt = 0;
  /**
   * The leader's commit index when it granted the latest lease. New runs start only once this
   * replica has applied that far: a host back from a freeze or a partition must first learn
   * that its jobs were placed elsewhere meanwhile, not start them again from a stale replica.
   */
  #leaseIndex = 0;
  /** When the supervisors' leases were last renewed (wall ms). */
  #renewedAt = 0;
  #leaseTimer: NodeJS.Timeout | undefined;
  #renewing = false;
  /** When the latest lease request was sent (wall ms): an immediate one waits the renewal period after it. */
  #askedAt = 0;
  /** Until when this host keeps its lease renewed (wall ms): a lease period past the last time it had jobs. */
  #needLeaseUntil = 0;
  #stopped = false;
  #reconciling = false;
  #again = false;

  constructor(opts: JobAgentOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS;
  }

  start(): void {
    mkdirSync(this.#o.jobsDir, { recursive: true });
    this.#unsubscribe = this.#o.control.onApplied(() => this.reconcile());
    this.#timer = setInterval(() => this.reconcile(), 200);
    this.#leaseTimer = setInterval(() => {
      // Skipped right after an immediate request (reconcile asks at once when a job waits for a lease).
      if (this.#needsLease() && Date.now() - this.#askedAt >= LEASE_RENEW_MS / 2) void this.#renewLease();
    }, LEASE_RENEW_MS);
  }

  /** Whether this host keeps its lease renewed now: it runs jobs, or had (or was given) some within a lease period. */
  #needsLease(): boolean {
    return this.#local.size > 0 || Date.now() < this.#needLeaseUntil;
  }

  /**
   * The lease counts from when a granted request was SENT: the leader received it later, and
   * re-places this host's jobs only once it has heard no request for lease + stop grace + margin,
   * by which time this host has stopped them (its supervisors too, if this daemon is frozen).
   */
  async #renewLease(): Promise<void> {
    if (this.#renewing || this.#stopped) return;
    this.#renewing = true;
    let regained = false;
    try {
      const sent = Date.now();
      this.#askedAt = sent;
      const grant = await this.#o.control.renewLease(Math.min(1_000, this.#leaseMs / 2));
      if (grant !== null) {
        regained = Date.now() - this.#leaseAt >= this.#leaseMs; // no valid lease until this grant
        this.#leaseAt = Math.max(this.#leaseAt, sent);
        this.#leaseIndex = Math.max(this.#leaseIndex, grant.commit);
      }
    } finally {
      this.#renewing = false;
    }
    // Jobs waiting for this lease start now, not at the next periodic reconcile.
    if (regained) this.reconcile();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearInterval(this.#leaseTimer);
    this.#unsubscribe?.();
    await this.#o.runner.stopAll('lost', 'the daemon is stopping', FENCE_STOP_GRACE_MS);
  }

  /** Jobs running here now. */
  running(): { jobId: string; epoch: number; attempt: number; pid: number | null }[] {
    return [...this.#local.values()].map((l) => ({ jobId: l.jobId, epoch: l.epoch, attempt: l.attempt, pid: l.run.pid }));
  }

  /** Where a job's logs are on this host. */
  logDir(jobId: string): string {
    return join(this.#o.jobsDir, jobId, 'logs');
  }

  checkpointDir(jobId: string): string {
    return join(this.#o.jobsDir, jobId, 'checkpoint');
  }

  reconcile(): void {
    if (this.#stopped) return;
    if (this.#reconciling) {
      this.#again = true;
      return;
    }
    this.#reconciling = true;
    try {
      this.#reconcileOnce();
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, 'job reconcile failed');
    } finally {
      this.#reconciling = false;
    }
    if (this.#again) {
      this.#again = false;
      setImmediate(() => this.reconcile());
    }
  }

  #reconcileOnce(): void {
    const control = this.#o.control;
    const status = control.localStatus();
    if (status.role === 'leader') this.#leaseAt = Date.now(); // the leader holds its own lease while it leads
    const state = control.state;
    const wanted = new Map<string, { alloc: Allocation; job: Readonly<Job> }>();
    for (const alloc of state.allocationsOn(this.#o.peerId)) {
      const job = state.job(alloc.jobId);
      if (job === undefined || job.epoch !== alloc.epoch || (job.state !== 'placed' && job.state !== 'running')) continue;
      wanted.set(job.id, { alloc, job });
    }
    // A lease is needed while jobs run here or are to (a run that ended by itself, its report not
    // applied yet, is not to run again), and for a lease period after.
    let busy = this.#local.size > 0;
    for (const { alloc, job } of wanted.values()) if (this.#finished.get(job.id) !== alloc.epoch) busy = true;
    if (busy) this.#needLeaseUntil = Math.max(this.#needLeaseUntil, Date.now() + this.#leaseMs);
    const inTouch = status.member !== 'none' && Date.now() - this.#leaseAt < this.#leaseMs;
    if (!inTouch) {
      if (this.#local.size > 0) {
        if (!this.#fenced) this.#log.warn({ jobs: [...this.#local.keys()] }, 'no word from the raft leader within the lease: stopping every job here');
        this.#fenced = true;
        for (const l of this.#local.values()) this.#stopLocal(l, 'lost', 'this host lost touch with the fabric leader', FENCE_STOP_GRACE_MS);
      } else if (this.#fenced && !busy) {
        // Its jobs have ended and none is left for it: an idle host, not a fenced one.
        this.#fenced = false;
        this.#log.debug({}, 'fenced host has no jobs left: idle without a lease');
      }
      // An idle host keeps no lease, but its reports (a run that ended as it went idle) still go.
      if (!this.#fenced) this.#flushReports();
      // Jobs are waiting for a lease: ask now rather than at the next renewal, but never more
      // often than the renewal period (the timer asks too, and a failed request is retried by it).
      if (busy && !this.#renewing && Date.now() - this.#askedAt >= LEASE_RENEW_MS) void this.#renewLease();
      return;
    }
    if (this.#fenced) this.#log.info({}, 'in touch with the raft leader again');
    this.#fenced = false;
    // Reconciles run on every burst of applied entries; the supervisors need a renewal far less often.
    if (Date.now() - this.#renewedAt >= RENEW_SUPERVISORS_MS) {
      this.#renewedAt = Date.now();
      this.#o.renewLeases(this.#leaseAt + this.#leaseMs - Date.now());
    }
    this.#flushReports();
    // Stop what is no longer ours (or is ours at another epoch): SIGTERM, and SIGKILL after the
    // stop grace. A preempted job was released by the leader (its reason names the preemptor):
    // the grace is its time to checkpoint, and its checkpoint is still accepted, for its epoch
    // has not moved on and the run is still listed here until its last process has ended.
    for (const l of this.#local.values()) {
      const w = wanted.get(l.jobId);
      if (w !== undefined && w.alloc.epoch === l.epoch) continue;
      const job = state.job(l.jobId);
      const cancelled = job?.state === 'cancelled';
      const why = cancelled ? (job?.reason ?? 'cancelled') : job?.epoch === l.epoch && job.reason !== null ? job.reason : 'the job was released or placed elsewhere';
      this.#stopLocal(l, cancelled ? 'cancelled' : 'restarting', why);
    }
    for (const jobId of this.#finished.keys()) if (wanted.get(jobId)?.alloc.epoch !== this.#finished.get(jobId)) this.#finished.delete(jobId);
    // Start what is ours and not running (once the previous run of the job has fully ended),
    // once this replica is as recent as the leader was when it granted the lease.
    if (status.applied < this.#leaseIndex) return;
    for (const { alloc, job } of wanted.values()) {
      if (this.#local.has(job.id) || this.#o.runner.get(job.id) !== undefined || this.#finished.get(job.id) === alloc.epoch) continue;
      // The devices may have been taken from a run that is still stopping here (a preempted or
      // cancelled job checkpointing in its grace): the new run waits until that one has ended,
      // so two jobs never hold one GPU at once, however late this host saw the release.
      const busy = this.#heldByOthers(job.id, alloc.devices);
      if (busy !== null) {
        if (this.#waitingFor.get(job.id) !== busy.jobId) this.#log.info({ jobId: job.id, device: busy.uuid, heldBy: busy.jobId }, 'job waits for a stopping run to release its device');
        this.#waitingFor.set(job.id, busy.jobId);
        continue;
      }
      this.#waitingFor.delete(job.id);
      this.#startRun(alloc, job);
    }
    for (const jobId of this.#waitingFor.keys()) if (!wanted.has(jobId)) this.#waitingFor.delete(jobId);
  }

  /**
   * A device of `grants` that runs of other jobs here still hold beyond what it can share (more
   * than a whole GPU together, a GPU asked whole while a MIG slice of it is in use, or a slice
   * while the GPU is in use whole); null when every device is free for `jobId`.
   */
  #heldByOthers(jobId: string, grants: readonly DeviceGrant[]): { uuid: string; jobId: string } | null {
    for (const grant of grants) {
      let milli = grant.milli;
      for (const l of this.#local.values()) {
        if (l.jobId === jobId) continue;
        for (const held of l.devices) {
          const same = held.uuid === grant.uuid;
          const sliceOfAsked = grant.parentUuid === null && held.parentUuid === grant.uuid;
          const askedSliceOfHeld = grant.parentUuid !== null && held.uuid === grant.parentUuid;
          if (sliceOfAsked || askedSliceOfHeld) return { uuid: grant.parentUuid ?? grant.uuid, jobId: l.jobId };
          if (same) milli += held.milli;
        }
        if (milli > MILLI_PER_GPU) return { uuid: grant.uuid, jobId: l.jobId };
      }
    }
    return null;
  }

  #startRun(alloc: Allocation, job: Readonly<Job>): void {
    const spec = job.spec as Record<string, unknown>;
    const argv = Array.isArray(spec['command']) ? (spec['command'] as string[]) : [];
    const base = join(this.#o.jobsDir, job.id);
    const work = typeof spec['workdir'] === 'string' ? spec['workdir'] : join(base, 'work');
    const checkpointDir = typeof spec['checkpointDir'] === 'string' ? spec['checkpointDir'] : this.checkpointDir(job.id);
    const attempt = job.attempt;
    const peerIds = job.attempts.at(-1)?.peerIds ?? [this.#o.peerId];
    const rank = Math.max(0, peerIds.indexOf(this.#o.peerId));
    let run: JobRun;
    try {
      if (argv.length === 0) throw new Error('the job has no command');
      for (const dir of [work, checkpointDir, this.logDir(job.id)]) mkdirSync(dir, { recursive: true });
      const devices = assignDevices(alloc.devices, this.#o.devices());
      const env = typeof spec['env'] === 'object' && spec['env'] !== null ? (spec['env'] as Record<string, string>) : {};
      const master = peerIds.length > 1 ? this.#o.gangAddress(peerIds[0]!) : undefined;
      if (peerIds.length > 1 && master === undefined) throw new Error(`the gang's first member ${peerIds[0]} has no reachable address`);
      run = this.#o.runner.start(
        {
          jobId: job.id,
          argv,
          cwd: work,
          logDir: this.logDir(job.id),
          firstAttempt: attempt,
          retry: NO_RETRY, // retries are the fabric's: a failed attempt is re-placed, maybe elsewhere
          env: {
            base: { ...this.#o.baseEnv, ...env },
            devices,
            ...(peerIds.length > 1 ? { gang: { masterAddr: master!, masterPort: gangPort(job.id, alloc.epoch), nodeRank: rank, nodes: peerIds.length } } : {}),
            checkpointDir,
            checkpointCommit: this.#o.checkpointCommit,
            extra: { ...this.#o.extraEnv, FABRIC_EPOCH: String(alloc.epoch) },
          },
        },
        { prepareAttempt: () => this.#prepare(job) },
      );
    } catch (err) {
      this.#log.warn({ jobId: job.id, err: errorMessage(err) }, 'cannot start the job');
      this.#report(job.id, attempt, 'failed', `cannot start on ${this.#o.peerId}: ${errorMessage(err)}`);
      return;
    }
    const local: Local = { jobId: job.id, epoch: alloc.epoch, attempt, run, devices: alloc.devices, stoppedByUs: false };
    this.#local.set(job.id, local);
    this.#log.info({ jobId: job.id, attempt, epoch: alloc.epoch, rank }, 'job starting');
    void run.result.then((result) => this.#ended(local, result, rank));
  }

  /** Before the process starts: restore the job's latest committed checkpoint, if it has one. */
  async #prepare(job: Readonly<Job>): Promise<{ restoreDir?: string }> {
    const latest = this.#o.control.state.checkpoints(job.id).at(-1);
    if (latest === undefined || this.#o.restore === undefined) return {};
    const dir = await this.#o.restore(job, latest);
    this.#log.info({ jobId: job.id, step: latest.step, dir }, 'checkpoint restored');
    return { restoreDir: dir };
  }

  /** Run events: a started attempt is news for the state. */
  onRunEvent(event: RunEvent): void {
    if (event.type !== 'attempt-started') return;
    const local = this.#local.get(event.jobId);
    if (local === undefined || local.stoppedByUs) return;
    this.#report(local.jobId, local.attempt, 'running', null);
  }

  #ended(local: Local, result: RunResult, rank: number): void {
    if (this.#local.get(local.jobId) === local) this.#local.delete(local.jobId);
    if (!local.stoppedByUs && !this.#stopped) {
      this.#finished.set(local.jobId, local.epoch);
      const last = result.attempts.at(-1);
      if (result.outcome === 'succeeded') {
        // A gang is done when its first member is; the others' ends are not the job's.
        if (rank === 0) this.#report(local.jobId, local.attempt, 'succeeded', null, 0);
      } else if (result.outcome === 'failed') {
        const job = this.#o.control.state.job(local.jobId);
        const policy = RetryPolicySchema.safeParse((job?.spec as Record<string, unknown> | undefined)?.['retry'] ?? { maxAttempts: 1 });
        const failure: AttemptFailure = last?.exit?.kind === 'exited' ? 'exit-code' : last?.exit?.kind === 'signaled' ? 'signal' : last?.exit?.kind === 'spawn-failed' ? 'spawn-failed' : 'supervisor-lost';
        const decision = decideRetry(policy.success ? policy.data : NO_RETRY, local.attempt, failure, this.#o.rng);
        const why = result.reason ?? 'the job failed';
        if (decision.retry) this.#report(local.jobId, local.attempt, 'restarting', `${why}; retrying after ${decision.delayMs} ms`, result.exitCode ?? undefined, decision.delayMs);
        else this.#report(local.jobId, local.attempt, 'failed', `${why} (${decision.why})`, result.exitCode ?? undefined);
      }
    }
    this.reconcile();
  }

  #stopLocal(local: Local, outcome: 'cancelled' | 'lost' | 'restarting', reason: string, graceMs?: number): void {
    if (local.stoppedByUs && graceMs === undefined) return;
    local.stoppedByUs = true;
    this.#o.runner.stop(local.jobId, outcome, reason, graceMs);
  }

  /** Queues a transition for the leader; `retryInMs` delays it (the backoff before a re-placement). */
  #report(jobId: string, attempt: number, to: 'running' | 'succeeded' | 'failed' | 'restarting', reason: string | null, exitCode?: number, retryInMs = 0): void {
    const requestId = `${jobId}:${attempt}:${to}`;
    const request: CommandRequest = {
      type: 'job.transition',
      requestId,
      actor: this.#o.peerId,
      jobId,
      attempt,
      to,
      ...(reason !== null ? { reason: reason.slice(0, 1024) } : {}),
      ...(exitCode !== undefined ? { exitCode } : {}),
    };
    const send = () => {
      this.#pending.set(requestId, request);
      this.#flushReports();
    };
    if (retryInMs > 0) setTimeout(send, retryInMs).unref();
    else send();
  }

  #flushing = false;
  #flushReports(): void {
    if (this.#flushing || this.#pending.size === 0 || this.#stopped) return;
    this.#flushing = true;
    void (async () => {
      try {
        for (const [id, request] of [...this.#pending]) {
          try {
            const { result } = await this.#o.control.submit(request, { timeoutMs: 5_000 });
            // Refusals are final (a stale attempt, a job cancelled meanwhile): nothing to retry.
            if (!result.ok) this.#log.debug({ request: id, code: result.code, message: result.message }, 'job report refused');
            this.#pending.delete(id);
          } catch (err) {
            this.#log.debug({ request: id, err: errorMessage(err) }, 'job report not delivered yet');
            return;
          }
        }
      } finally {
        this.#flushing = false;
      }
    })();
  }
}

/** The rendezvous port of a gang: the same on every member, different between jobs and epochs. */
export function gangPort(jobId: string, epoch: number): number {
  let h = epoch * 2654435761;
  for (let i = 0; i < jobId.length; i++) h = (Math.imul(h ^ jobId.charCodeAt(i), 16777619) >>> 0);
  return 29_500 + (h % 10_000);
}
