/**
 * The port through which the runner starts processes. `src/node/job-launcher.ts` implements it
 * with a supervisor process per job (own process group, capped log files, dies with the
 * daemon); tests and the simulation implement it in memory.
 */

/** Everything needed to start one attempt of a job. Plain data: it crosses a process boundary. */
export interface LaunchRequest {
  jobId: string;
  attempt: number;
  /** argv[0] is looked up on PATH of `env` when it has no slash. */
  argv: readonly string[];
  /** The working directory; it must exist. */
  cwd: string;
  /** The complete environment (nothing is inherited from the daemon). */
  env: Readonly<Record<string, string>>;
  /** Directory of the job's log files; output of every attempt is appended there. */
  logDir: string;
  /** Most bytes kept on disk per stream (stdout, stderr). */
  logMaxBytes: number;
}

/** How a process ended. Reported exactly once per launch. */
export type ProcessExit =
  /** It ran and exited by itself (or after our signal) with this code. */
  | { kind: 'exited'; code: number }
  /** It was ended by a signal (ours, or a crash such as SIGSEGV). */
  | { kind: 'signaled'; signal: string }
  /** It never ran: command not found, not executable, no such working directory. */
  | { kind: 'spawn-failed'; message: string }
  /** The launcher lost track of it (its supervisor died); whatever was left of it was killed. */
  | { kind: 'supervisor-lost'; message: string };

export interface LaunchCallbacks {
  /** The process runs, with this pid (also its process group id). Called at most once, before `onExit`. */
  onStart(pid: number): void;
  /** Called exactly once. */
  onExit(exit: ProcessExit): void;
}

/** The signals the runner sends; the launcher sends them to the job's whole process group. */
export type StopSignal = 'SIGTERM' | 'SIGKILL';

export interface ProcessHandle {
  /** Signals the whole process group. A no-op once the process has exited. */
  signal(sig: StopSignal): void;
}

export interface ProcessLauncher {
  /**
   * Starts the process; outcomes, even a failure to start, come through `callbacks`, and never
   * before `launch` has returned. Never throws.
   */
  launch(request: LaunchRequest, callbacks: LaunchCallbacks): ProcessHandle;
}

export function describeExit(exit: ProcessExit): string {
  switch (exit.kind) {
    case 'exited':
      return `exited with code ${exit.code}`;
    case 'signaled':
      return `killed by ${exit.signal}`;
    case 'spawn-failed':
      return `could not start: ${exit.message}`;
    case 'supervisor-lost':
      return `lost: ${exit.message}`;
  }
}
