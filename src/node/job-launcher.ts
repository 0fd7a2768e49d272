/**
 * The real ProcessLauncher: every job attempt runs under its own supervisor process
 * (job-shim.ts), which starts the job in its own process group and working directory, writes
 * its capped log files, relays signals to the whole group, and kills the group when this daemon
 * dies — even by kill -9, because the supervisor watches the pipe that only this process holds.
 *
 * Should a supervisor itself die (killed on its own), this side kills what is left of the job
 * and reports the attempt as `supervisor-lost`. `close()` ends every job (daemon shutdown), and
 * `killOrphanJobs(owner)` (job-procs.ts), called at start-up, catches anything an earlier life of
 * the daemon left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { errorMessage, silentLogger, type Logger } from '../core/index.ts';
import type { LaunchCallbacks, LaunchRequest, ProcessExit, ProcessHandle, ProcessLauncher, StopSignal } from '../runner/launcher.ts';
import { checkOwner, RUN_TOKEN_VAR, signalByRunToken, signalJob } from './job-procs.ts';
import { encodeLine, FromSupervisorSchema, lineReader } from './job-protocol.ts';

export const SUPERVISOR_PATH = fileURLToPath(new URL('./job-shim.ts', import.meta.url));

/** How long `close()` waits for supervisors to report before killing them outright. */
const CLOSE_WAIT_MS = 10_000;
/** The supervisor's last words (stderr) kept for the report of a supervisor that died. */
const STDERR_TAIL = 2048;

/** A Node that runs TypeScript: this one if it strips types, else the project's own, else this one with the flag. */
export function defaultSupervisorNode(): string[] {
  if (process.features.typescript) return [process.execPath];
  const projectNode = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));
  if (existsSync(projectNode)) return [projectNode];
  return [process.execPath, '--experimental-strip-types'];
}

export interface JobLauncherOptions {
  /** Names this daemon in its jobs' run tokens; unique per data dir (see killOrphanJobs). */
  owner: string;
  log?: Logger;
  /**
   * The lease every job is started under: its supervisor kills it when the time a `renewLeases`
   * call gave it runs out, or this long after start without one (see job-protocol.ts). Undefined: no lease (the job lives as long as
   * the daemon's process).
   */
  leaseMs?: number;
  /** Command that runs a .ts file with Node (default: defaultSupervisorNode()). */
  nodeCommand?: readonly string[];
}

interface LiveJob {
  request: LaunchRequest;
  token: string;
  supervisor: ChildProcess;
  jobPid: number | null;
  exit: ProcessExit | null;
  ended: boolean;
  closed: Promise<void>;
}

export class JobLauncher implements ProcessLauncher {
  readonly #owner: string;
  readonly #log: Logger;
  readonly #node: readonly string[];
  readonly #live = new Set<LiveJob>();
  readonly #leaseMs: number | undefined;

  constructor(opts: JobLauncherOptions) {
    this.#owner = checkOwner(opts.owner);
    this.#log = (opts.log ?? silentLogger).child({ module: 'job-launcher' });
    this.#node = opts.nodeCommand ?? defaultSupervisorNode();
    this.#leaseMs = opts.leaseMs;
  }

  /** Renews the lease of every live job for `validForMs` from now (what remains of the daemon's own lease). */
  renewLeases(validForMs: number): void {
    const line = encodeLine({ type: 'renew', validForMs: Math.max(0, Math.floor(validForMs)) });
    for (const job of this.#live) {
      const stdin = job.supervisor.stdin;
      if (stdin && stdin.writable && !stdin.destroyed) stdin.write(line);
    }
  }

  /** Jobs whose supervisor has not exited yet. */
  get liveCount(): number {
    return this.#live.size;
  }

  launch(request: LaunchRequest, callbacks: LaunchCallbacks): ProcessHandle {
    const log = this.#log.child({ jobId: request.jobId, attempt: request.attempt });
    const token = `${this.#owner}.${randomBytes(12).toString('hex')}`;
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env[RUN_TOKEN_VAR];
    // Node's on-disk compile cache halves a supervisor's start (it is the job's start latency).
    env.NODE_COMPILE_CACHE ??= join(tmpdir(), 'fabric-node-compile-cache');
    let supervisor: ChildProcess;
    try {
      supervisor = spawn(this.#node[0]!, [...this.#node.slice(1), SUPERVISOR_PATH], {
        detached: true, // own session: a signal to the daemon's group does not reach it
        stdio: ['pipe', 'pipe', 'pipe'],
        env,
      });
    } catch (err) {
      queueMicrotask(() => callbacks.onExit({ kind: 'spawn-failed', message: `cannot start job supervisor: ${errorMessage(err)}` }));
      return { signal: () => {} };
    }
    let resolveClosed!: () => void;
    const job: LiveJob = {
      request,
      token,
      supervisor,
      jobPid: null,
      exit: null,
      ended: false,
      closed: new Promise((r) => {
        resolveClosed = r;
      }),
    };
    this.#live.add(job);
    let stderrTail = '';
    let startFailure: string | null = null;

    supervisor.stdout!.on(
      'data',
      lineReader(
        FromSupervisorSchema,
        (m) => {
          if (m.type === 'started') {
            if (job.jobPid !== null) return;
            job.jobPid = m.pid;
            callbacks.onStart(m.pid);
          } else {
            job.exit ??= m.exit;
          }
        },
        (why) => log.warn({ why }, 'bad message from job supervisor'),
      ),
    );
    supervisor.stderr!.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      stderrTail = (stderrTail + text).slice(-STDERR_TAIL);
      log.warn({ supervisor: text.trimEnd().slice(0, 1000) }, 'job supervisor says');
    });
    supervisor.stdin!.on('error', () => {}); // EPIPE: the supervisor is gone; 'close' reports it
    supervisor.once('error', (err) => {
      startFailure = errorMessage(err);
    });
    supervisor.once('close', (code, sig) => {
      job.ended = true;
      this.#live.delete(job);
      let exit = job.exit;
      if (exit === null) {
        // The supervisor died without reporting: whatever it ran must not run on unsupervised.
        if (job.jobPid !== null) signalJob(job.jobPid, token, 'SIGKILL');
        else signalByRunToken((t) => t === token, 'SIGKILL');
        if (startFailure !== null && job.jobPid === null) {
          exit = { kind: 'spawn-failed', message: `cannot start job supervisor ${this.#node[0]}: ${startFailure}` };
        } else {
          const how = sig !== null ? `was killed by ${sig}` : `exited with code ${code}`;
          const said = stderrTail.trim() === '' ? '' : `: ${stderrTail.trim().split('\n').slice(-3).join(' | ')}`;
          exit = { kind: 'supervisor-lost', message: `job supervisor ${how} without reporting${said}` };
        }
        log.error({ exit }, 'job supervisor ended without reporting; job killed');
      }
      resolveClosed();
      callbacks.onExit(exit);
    });
    supervisor.stdin!.write(encodeLine({ type: 'start', request: { ...request, argv: [...request.argv] }, token, ...(this.#leaseMs !== undefined ? { leaseMs: this.#leaseMs } : {}) }));

    return {
      signal: (sig: StopSignal) => {
        if (job.ended) return;
        const stdin = supervisor.stdin;
        if (stdin && stdin.writable && !stdin.destroyed) {
          stdin.write(encodeLine({ type: 'signal', signal: sig }));
        } else if (job.jobPid !== null) {
          signalJob(job.jobPid, token, sig);
        }
      },
    };
  }

  /**
   * Ends every job now (SIGKILL to each group) and waits for their supervisors to report; for
   * daemon shutdown. Supervisors that do not report in time are killed with their jobs.
   */
  async close(): Promise<void> {
    const jobs = [...this.#live];
    for (const job of jobs) {
      if (job.supervisor.stdin?.writable) job.supervisor.stdin.write(encodeLine({ type: 'signal', signal: 'SIGKILL' }));
      job.supervisor.stdin?.end(); // end-of-file: the supervisor's "daemon gone" path, a second guarantee
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => {
      timer = setTimeout(() => r('timeout'), CLOSE_WAIT_MS);
    });
    const result = await Promise.race([Promise.all(jobs.map((j) => j.closed)).then(() => 'closed' as const), timeout]);
    clearTimeout(timer);
    if (result === 'timeout') {
      for (const job of jobs) {
        if (job.ended) continue;
        if (job.jobPid !== null) signalJob(job.jobPid, job.token, 'SIGKILL');
        job.supervisor.kill('SIGKILL');
      }
      await Promise.all(jobs.map((j) => j.closed));
    }
  }
}
