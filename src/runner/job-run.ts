/**
 * JobRun: the life of one allocation on this host, from its first start to its last exit.
 *
 *   placed ──start──▶ running ──exit 0──────────────────────────▶ succeeded
 *                        │ ──exit ≠ 0 / crash, retries left──▶ restarting ──backoff──▶ running …
 *                        │ ──exit ≠ 0 / crash, none left─────────────────────────────▶ failed
 *                        └ ──stop(outcome)──SIGTERM──grace──SIGKILL──exit──────────────▶ outcome
 *
 * `stop` ends the run with the outcome its caller names: `cancelled` (the user asked),
 * `lost` (this host was fenced off), `restarting` (preempted: the fabric places it again),
 * `failed` (the daemon gave up on it). A stopped run never retries. Stopping sends SIGTERM to the
 * job's process group, then SIGKILL after the grace period; a second stop with `graceMs: 0`
 * kills at once.
 *
 * Pure: processes through a ProcessLauncher, time through a Clock, jitter through an Rng. The
 * run's states are job state names (see placement/fsm/state.ts), so the daemon reports them as is.
 */
import { FabricError, errorMessage, silentLogger, type Clock, type Logger, type Rng, type Timer } from '../core/index.ts';
import { buildJobEnv, type JobEnvInput } from './env.ts';
import { describeExit, type LaunchRequest, type ProcessExit, type ProcessHandle, type ProcessLauncher } from './launcher.ts';
import { decideRetry, NO_RETRY, type AttemptFailure, type RetryPolicy } from './retry.ts';

/** The job states a run passes through (a subset of the fabric's job states). */
export type RunState = 'placed' | 'running' | 'restarting' | 'succeeded' | 'failed' | 'cancelled' | 'lost';

/** How a run ends: by itself (succeeded, failed) or stopped (cancelled, lost, restarting, failed). */
export type RunOutcome = 'succeeded' | 'failed' | 'cancelled' | 'lost' | 'restarting';

/** What a caller may stop a run as. */
export type StopOutcome = 'cancelled' | 'lost' | 'restarting' | 'failed';

/** 16 MiB per stream: two segments of 8 MiB (see src/node/job-logs.ts). */
export const DEFAULT_LOG_MAX_BYTES = 16 * 1024 * 1024;
/** What Kubernetes gives a pod between SIGTERM and SIGKILL is 30 s; a training step is rarely longer than 10. */
export const DEFAULT_STOP_GRACE_MS = 10_000;

export interface RunSpec {
  jobId: string;
  argv: readonly string[];
  cwd: string;
  logDir: string;
  logMaxBytes?: number;
  /** The environment contract (see env.ts); `restoreDir` there applies to the first attempt. */
  env: Omit<JobEnvInput, 'jobId' | 'attempt'>;
  /** Local retries on this host (default: none; the fabric may re-place the job instead). */
  retry?: RetryPolicy;
  stopGraceMs?: number;
  /** Number of the first attempt (FABRIC_ATTEMPT), e.g. the fabric's placement attempt. Default 1. */
  firstAttempt?: number;
}

/** What an attempt may change before it starts: where to resume from, more FABRIC_* variables. */
export interface AttemptSetup {
  restoreDir?: string | undefined;
  extraEnv?: Readonly<Record<string, string>> | undefined;
}

export interface AttemptRecord {
  attempt: number;
  pid: number | null;
  startedAt: number | null;
  endedAt: number | null;
  exit: ProcessExit | null;
  outcome: RunOutcome | null;
  reason: string | null;
}

export interface RunResult {
  outcome: RunOutcome;
  reason: string | null;
  /** Exit code of the last attempt, where it exited by itself. */
  exitCode: number | null;
  attempts: AttemptRecord[];
}

export type RunEvent =
  | { type: 'state'; jobId: string; state: RunState; attempt: number; at: number; reason: string | null }
  | { type: 'attempt-started'; jobId: string; attempt: number; pid: number; at: number }
  | { type: 'attempt-ended'; jobId: string; record: AttemptRecord; retryInMs: number | null; at: number };

export interface JobRunDeps {
  launcher: ProcessLauncher;
  clock: Clock;
  rng: Rng;
  log?: Logger;
  onEvent?: (event: RunEvent) => void;
  /**
   * Called before every attempt (awaited): e.g. restore the latest committed checkpoint and
   * name its directory. A rejection fails that attempt (the retry policy then decides).
   * Without it every attempt gets the spec's `restoreDir`.
   */
  prepareAttempt?: (attempt: number) => Promise<AttemptSetup>;
}

type Phase =
  | { kind: 'idle' }
  | { kind: 'preparing'; attempt: number }
  | { kind: 'launching'; attempt: number; handle: ProcessHandle }
  | { kind: 'running'; attempt: number; handle: ProcessHandle; killTimer: Timer | null; killAt: number | null }
  | { kind: 'backoff'; attempt: number; timer: Timer }
  | { kind: 'done' };

const STOP_RANK: Readonly<Record<StopOutcome, number>> = { restarting: 0, failed: 1, lost: 2, cancelled: 3 };

function failureOf(exit: ProcessExit): AttemptFailure {
  switch (exit.kind) {
    case 'exited':
      return 'exit-code';
    case 'signaled':
      return 'signal';
    case 'spawn-failed':
      return 'spawn-failed';
    case 'supervisor-lost':
      return 'supervisor-lost';
  }
}

export class JobRun {
  readonly jobId: string;
  readonly #spec: RunSpec;
  readonly #deps: JobRunDeps;
  readonly #log: Logger;
  readonly #policy: RetryPolicy;
  readonly #grace: number;
  readonly #first: number;
  #phase: Phase = { kind: 'idle' };
  #state: RunState = 'placed';
  #stop: { outcome: StopOutcome; reason: string } | null = null;
  /** Grace asked for by a stop that came before the process started. */
  #pendingGrace: number | null = null;
  #attempts: AttemptRecord[] = [];
  #result: RunResult | null = null;
  #resolve!: (r: RunResult) => void;
  /** Resolves once, when the run has ended and no process of it is left running. */
  readonly result: Promise<RunResult>;

  constructor(spec: RunSpec, deps: JobRunDeps) {
    if (spec.argv.length === 0 || spec.argv[0] === '') throw new FabricError('BAD_INPUT', `job ${spec.jobId}: empty command`);
    if (spec.cwd === '' || spec.logDir === '') throw new FabricError('BAD_INPUT', `job ${spec.jobId}: working and log directories are required`);
    this.jobId = spec.jobId;
    this.#spec = spec;
    this.#deps = deps;
    this.#log = (deps.log ?? silentLogger).child({ module: 'runner', jobId: spec.jobId });
    this.#policy = spec.retry ?? NO_RETRY;
    this.#grace = Math.max(0, spec.stopGraceMs ?? DEFAULT_STOP_GRACE_MS);
    this.#first = spec.firstAttempt ?? 1;
    this.result = new Promise((resolve) => {
      this.#resolve = resolve;
    });
    // Fail early on a bad environment (unknown vendor mix, bad gang numbers): a constructor error, not a failed attempt.
    buildJobEnv({ ...spec.env, jobId: spec.jobId, attempt: this.#first });
  }

  get state(): RunState {
    return this.#state;
  }

  get done(): boolean {
    return this.#result !== null;
  }

  /** Every attempt so far, the live one last. Copies. */
  get attempts(): AttemptRecord[] {
    return this.#attempts.map((a) => ({ ...a }));
  }

  /** The pid (and process group) of the live attempt's process, if one runs. */
  get pid(): number | null {
    const last = this.#attempts.at(-1);
    return this.#phase.kind === 'running' && last ? last.pid : null;
  }

  /** Starts the first attempt. Once only. */
  start(): void {
    if (this.#phase.kind !== 'idle') throw new FabricError('INTERNAL', `job ${this.jobId}: started twice`);
    this.#emitState('placed', this.#first, null);
    this.#begin(this.#first);
  }

  /**
   * Ends the run as `outcome`: SIGTERM to the process group, SIGKILL after `graceMs` (default
   * the spec's). A run waiting to retry ends at once. Calling it again may shorten the grace
   * (0: SIGKILL now) and may raise the outcome (cancelled > lost > failed > restarting).
   */
  stop(outcome: StopOutcome, reason: string, graceMs = this.#grace): void {
    if (this.#result !== null) return;
    if (this.#stop === null || STOP_RANK[outcome] > STOP_RANK[this.#stop.outcome]) this.#stop = { outcome, reason };
    const phase = this.#phase;
    switch (phase.kind) {
      case 'idle':
        this.#finish(this.#stop.outcome, this.#stop.reason, null);
        return;
      case 'backoff':
        phase.timer.cancel();
        this.#finish(this.#stop.outcome, this.#stop.reason, null);
        return;
      case 'preparing':
        // No process yet: end now; what the preparation brings back is ignored.
        this.#endAttempt(phase.attempt, null, this.#stop.outcome, this.#stop.reason);
        this.#finish(this.#stop.outcome, this.#stop.reason, null);
        return;
      case 'launching':
        // The process may be about to start: it is signalled as soon as it does (or ends the run if it cannot).
        this.#pendingGrace = Math.min(this.#pendingGrace ?? Number.POSITIVE_INFINITY, Math.max(0, graceMs));
        return;
      case 'running':
        this.#signalStop(phase, Math.max(0, graceMs));
        return;
      case 'done':
        return;
    }
  }

  #signalStop(phase: Extract<Phase, { kind: 'running' }>, graceMs: number): void {
    const killAt = this.#deps.clock.now() + graceMs;
    if (phase.killAt !== null && phase.killAt <= killAt) return; // already on its way, at least as fast
    const first = phase.killAt === null;
    phase.killTimer?.cancel();
    phase.killTimer = null;
    phase.killAt = killAt;
    if (graceMs === 0) {
      this.#log.info({ attempt: phase.attempt }, 'stopping job: SIGKILL to its process group');
      phase.handle.signal('SIGKILL');
      return;
    }
    if (first) {
      this.#log.info({ attempt: phase.attempt, graceMs }, 'stopping job: SIGTERM to its process group');
      phase.handle.signal('SIGTERM');
    }
    phase.killTimer = this.#deps.clock.setTimer(graceMs, () => {
      if (this.#phase !== phase) return;
      this.#log.warn({ attempt: phase.attempt }, 'job still running after its grace period: SIGKILL to its process group');
      phase.handle.signal('SIGKILL');
    });
  }

  #begin(attempt: number): void {
    this.#attempts.push({ attempt, pid: null, startedAt: null, endedAt: null, exit: null, outcome: null, reason: null });
    const prepare = this.#deps.prepareAttempt;
    if (prepare === undefined) {
      this.#launch(attempt, {});
      return;
    }
    this.#phase = { kind: 'preparing', attempt };
    let pending: Promise<AttemptSetup>;
    try {
      pending = prepare(attempt);
    } catch (err) {
      pending = Promise.reject(err);
    }
    pending.then(
      (setup) => {
        if (this.#phase.kind !== 'preparing' || this.#phase.attempt !== attempt) return;
        this.#launch(attempt, setup);
      },
      (err: unknown) => {
        if (this.#phase.kind !== 'preparing' || this.#phase.attempt !== attempt) return;
        this.#afterFailure(attempt, null, 'prepare-failed', `could not prepare attempt ${attempt}: ${errorMessage(err)}`);
      },
    );
  }

  #launch(attempt: number, setup: AttemptSetup): void {
    if (this.#stop !== null) {
      this.#endAttempt(attempt, null, this.#stop.outcome, this.#stop.reason);
      this.#finish(this.#stop.outcome, this.#stop.reason, null);
      return;
    }
    let env: Record<string, string>;
    try {
      const base = this.#spec.env;
      env = buildJobEnv({
        ...base,
        jobId: this.jobId,
        attempt,
        restoreDir: setup.restoreDir ?? base.restoreDir,
        extra: { ...base.extra, ...setup.extraEnv },
      });
    } catch (err) {
      this.#afterFailure(attempt, null, 'prepare-failed', `bad environment for attempt ${attempt}: ${errorMessage(err)}`);
      return;
    }
    const request: LaunchRequest = {
      jobId: this.jobId,
      attempt,
      argv: [...this.#spec.argv],
      cwd: this.#spec.cwd,
      env,
      logDir: this.#spec.logDir,
      logMaxBytes: this.#spec.logMaxBytes ?? DEFAULT_LOG_MAX_BYTES,
    };
    // Launchers call back only after `launch` has returned (see launcher.ts); the proxy makes a
    // signal before that a no-op rather than a crash.
    let handle: ProcessHandle | null = null;
    const phase: Extract<Phase, { kind: 'launching' }> = { kind: 'launching', attempt, handle: { signal: (sig) => handle?.signal(sig) } };
    this.#phase = phase;
    let exited = false;
    handle = this.#deps.launcher.launch(request, {
      onStart: (pid) => this.#onStart(phase, pid),
      onExit: (exit) => {
        if (exited) return;
        exited = true;
        this.#onExit(attempt, exit);
      },
    });
  }

  #onStart(phase: Extract<Phase, { kind: 'launching' }>, pid: number): void {
    if (this.#phase !== phase) return;
    const record = this.#attempts.at(-1)!;
    record.pid = pid;
    record.startedAt = this.#deps.clock.now();
    const running: Extract<Phase, { kind: 'running' }> = { kind: 'running', attempt: phase.attempt, handle: phase.handle, killTimer: null, killAt: null };
    this.#phase = running;
    this.#log.info({ attempt: phase.attempt, pid }, 'job process started');
    this.#emit({ type: 'attempt-started', jobId: this.jobId, attempt: phase.attempt, pid, at: record.startedAt });
    this.#emitState('running', phase.attempt, null);
    if (this.#stop !== null) this.#signalStop(running, this.#pendingGrace ?? this.#grace);
  }

  #onExit(attempt: number, exit: ProcessExit): void {
    const phase = this.#phase;
    if ((phase.kind !== 'launching' && phase.kind !== 'running') || phase.attempt !== attempt) return;
    if (phase.kind === 'running') phase.killTimer?.cancel();
    this.#log.info({ attempt, exit }, `job process ${describeExit(exit)}`);
    if (this.#stop !== null) {
      this.#endAttempt(attempt, exit, this.#stop.outcome, this.#stop.reason);
      this.#finish(this.#stop.outcome, this.#stop.reason, exit);
      return;
    }
    if (exit.kind === 'exited' && exit.code === 0) {
      this.#endAttempt(attempt, exit, 'succeeded', null);
      this.#finish('succeeded', null, exit);
      return;
    }
    this.#afterFailure(attempt, exit, failureOf(exit), describeExit(exit));
  }

  #afterFailure(attempt: number, exit: ProcessExit | null, failure: AttemptFailure, reason: string): void {
    const made = attempt - this.#first + 1;
    const decision = decideRetry(this.#policy, made, failure, this.#deps.rng);
    if (!decision.retry) {
      this.#endAttempt(attempt, exit, 'failed', reason);
      const why = made > 1 ? `${reason} (${decision.why})` : reason;
      this.#finish('failed', why, exit);
      return;
    }
    this.#endAttempt(attempt, exit, 'restarting', reason, decision.delayMs);
    this.#log.warn({ attempt, delayMs: decision.delayMs, reason }, 'job attempt failed; retrying after backoff');
    const timer = this.#deps.clock.setTimer(decision.delayMs, () => {
      if (this.#phase.kind !== 'backoff' || this.#phase.attempt !== attempt) return;
      this.#begin(attempt + 1);
    });
    this.#phase = { kind: 'backoff', attempt, timer };
    this.#emitState('restarting', attempt + 1, reason);
  }

  #endAttempt(attempt: number, exit: ProcessExit | null, outcome: RunOutcome, reason: string | null, retryInMs: number | null = null): void {
    const record = this.#attempts.find((a) => a.attempt === attempt);
    if (!record) return;
    record.endedAt = this.#deps.clock.now();
    record.exit = exit;
    record.outcome = outcome;
    record.reason = reason;
    this.#emit({ type: 'attempt-ended', jobId: this.jobId, record: { ...record }, retryInMs, at: record.endedAt });
  }

  #finish(outcome: RunOutcome, reason: string | null, exit: ProcessExit | null): void {
    if (this.#result !== null) return;
    this.#phase = { kind: 'done' };
    const last = this.#attempts.at(-1)?.attempt ?? this.#first;
    this.#result = {
      outcome,
      reason,
      exitCode: exit?.kind === 'exited' ? exit.code : null,
      attempts: this.attempts,
    };
    this.#emitState(outcome, last, reason);
    this.#resolve(this.#result);
  }

  #emitState(state: RunState, attempt: number, reason: string | null): void {
    this.#state = state;
    this.#emit({ type: 'state', jobId: this.jobId, state, attempt, at: this.#deps.clock.now(), reason });
  }

  #emit(event: RunEvent): void {
    try {
      this.#deps.onEvent?.(event);
    } catch (err) {
      this.#log.error({ err: errorMessage(err), event: event.type }, 'run event listener threw');
    }
  }
}
