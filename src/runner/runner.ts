/**
 * JobRunner: the runs of this host, one per job at most. The daemon starts a run when an
 * allocation for this peer commits, stops it on cancel, preemption or fencing, and forwards each
 * run's events to the replicated state. A finished run leaves the table when its last process is gone.
 */
import { FabricError, silentLogger, type Clock, type Logger, type Rng } from '../core/index.ts';
import { JobRun, type AttemptSetup, type RunEvent, type RunResult, type RunSpec, type StopOutcome } from './job-run.ts';
import type { ProcessLauncher } from './launcher.ts';

export interface JobRunnerDeps {
  launcher: ProcessLauncher;
  clock: Clock;
  rng: Rng;
  log?: Logger;
  /** Every event of every run. */
  onEvent?: (event: RunEvent) => void;
}

export interface StartOptions {
  prepareAttempt?: (attempt: number) => Promise<AttemptSetup>;
}

export class JobRunner {
  readonly #deps: JobRunnerDeps;
  readonly #runs = new Map<string, JobRun>();

  constructor(deps: JobRunnerDeps) {
    this.#deps = deps;
  }

  /**
   * Starts a run. Refused while a run of the same job is still here (even one that is being
   * stopped): a job never runs twice at once on one host.
   */
  start(spec: RunSpec, opts: StartOptions = {}): JobRun {
    if (this.#runs.get(spec.jobId)?.done === false) throw new FabricError('BAD_INPUT', `job ${spec.jobId} is already running on this host`);
    const run = new JobRun(spec, {
      launcher: this.#deps.launcher,
      clock: this.#deps.clock,
      rng: this.#deps.rng,
      log: this.#deps.log ?? silentLogger,
      ...(this.#deps.onEvent ? { onEvent: this.#deps.onEvent } : {}),
      ...(opts.prepareAttempt ? { prepareAttempt: opts.prepareAttempt } : {}),
    });
    this.#runs.set(spec.jobId, run);
    void run.result.then(() => {
      if (this.#runs.get(spec.jobId) === run) this.#runs.delete(spec.jobId);
    });
    run.start();
    return run;
  }

  /** The job's run on this host, while it has not ended. */
  get(jobId: string): JobRun | undefined {
    const run = this.#runs.get(jobId);
    return run?.done === false ? run : undefined;
  }

  /** Runs still here (live, or stopping). */
  list(): JobRun[] {
    return [...this.#runs.values()].filter((r) => !r.done);
  }

  /** Stops one job's run; false when none is here. */
  stop(jobId: string, outcome: StopOutcome, reason: string, graceMs?: number): boolean {
    const run = this.get(jobId);
    if (!run) return false;
    run.stop(outcome, reason, graceMs);
    return true;
  }

  /** Stops every run (fenced off from the leader: `lost`; shutting down) and waits until all have ended. */
  async stopAll(outcome: StopOutcome, reason: string, graceMs?: number): Promise<RunResult[]> {
    const runs = this.list();
    for (const run of runs) run.stop(outcome, reason, graceMs);
    return Promise.all(runs.map((r) => r.result));
  }
}
