/**
 * The job supervisor: one small process per running job, started by the daemon's JobLauncher.
 * Run as `node job-shim.ts`; it talks to the daemon over its stdin/stdout (job-protocol.ts).
 *
 * It exists because a job must never outlive its daemon, and Linux offers a Node daemon no
 * PR_SET_PDEATHSIG. The daemon holds the only write end of this process's stdin: when the
 * daemon dies for any reason, kill -9 included, the kernel closes that end and this process
 * reads end-of-file. It then kills the job's whole process group, sweeps up anything that left
 * the group but carries the job's run token (job-procs.ts), and exits.
 *
 * It also starts the job in its own session and process group, in its working directory, with
 * exactly the environment it was given; copies the job's stdout and stderr into capped log files
 * (job-logs.ts); relays the daemon's SIGTERM/SIGKILL to the whole group; and when the job's main
 * process exits, ends whatever the job left running and reports the exit status.
 *
 * The supervisor runs in its own session too, so a terminal's ^C or a kill of the daemon's
 * process group reaches only the daemon, and the supervisor gets to clean up after it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { realpathSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { errorMessage } from '../core/index.ts';
import type { ProcessExit } from '../runner/launcher.ts';
import { CappedLogWriter } from './job-logs.ts';
import { RUN_TOKEN_VAR, signalJob } from './job-procs.ts';
import { encodeLine, lineReader, ToSupervisorSchema, type FromSupervisor, type StartMessage } from './job-protocol.ts';

/** After the job's main process exits, how long its output pipes may stay open before they are cut. */
const PIPE_DRAIN_MS = 3000;
/** When the supervisor itself is asked to stop (SIGTERM/SIGINT/SIGHUP): grace before SIGKILL. */
const SELF_STOP_GRACE_MS = 5000;

function describeSpawnError(err: unknown, command: string): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return `${command}: command not found`;
  if (code === 'EACCES') return `${command}: permission denied`;
  return `${command}: ${errorMessage(err)}`;
}

export function runSupervisor(): void {
  let job: ChildProcess | null = null;
  let jobPid: number | null = null;
  let token = '';
  let parentGone = false;
  let pendingSignal: 'SIGTERM' | 'SIGKILL' | null = null;
  let reported = false;
  const logs: CappedLogWriter[] = [];

  const warn = (msg: string) => {
    try {
      process.stderr.write(`fabric job supervisor ${process.pid}: ${msg}\n`);
    } catch {
      // the daemon is gone
    }
  };
  process.stdout.on('error', () => {}); // EPIPE once the daemon is gone: nothing to tell anyone
  process.stderr.on('error', () => {});

  const send = (message: FromSupervisor, then?: () => void) => {
    try {
      process.stdout.write(encodeLine(message), () => then?.());
    } catch {
      then?.();
    }
  };

  const finish = (exit: ProcessExit) => {
    if (reported) return;
    reported = true;
    for (const l of logs) l.close();
    // Exit once the report is written (or could not be); never linger.
    setTimeout(() => process.exit(0), 1000).unref();
    send({ type: 'exit', exit }, () => process.exit(0));
  };

  const signal = (sig: 'SIGTERM' | 'SIGKILL') => {
    if (jobPid === null) {
      if (pendingSignal !== 'SIGKILL') pendingSignal = sig;
      return;
    }
    signalJob(jobPid, token, sig);
  };

  const onParentGone = () => {
    if (parentGone) return;
    parentGone = true;
    if (job === null) process.exit(0); // nothing started yet
    signal('SIGKILL');
  };

  let leaseTimer: NodeJS.Timeout | undefined;
  let leaseMs: number | undefined;
  // The lease runs out `validForMs` after a renewal: the daemon's own lease from the leader,
  // not a fresh full term, so a daemon that still renews while its own lease runs down cannot
  // stretch its job's life past it.
  const renew = (validForMs: number) => {
    if (leaseMs === undefined) return;
    const ms = Math.min(validForMs, leaseMs);
    clearTimeout(leaseTimer);
    leaseTimer = setTimeout(() => {
      warn(`the daemon's lease on this job ran out (no renewal in time): killing the job`);
      signal('SIGKILL');
    }, ms);
    leaseTimer.unref();
  };

  const start = (m: StartMessage) => {
    const req = m.request;
    token = m.token;
    leaseMs = m.leaseMs;
    renew(m.leaseMs ?? 0);
    try {
      if (!statSync(req.cwd).isDirectory()) throw new Error('not a directory');
    } catch (err) {
      finish({ kind: 'spawn-failed', message: `working directory ${req.cwd}: ${errorMessage(err)}` });
      return;
    }
    try {
      logs.push(new CappedLogWriter(req.logDir, 'stdout', req.logMaxBytes), new CappedLogWriter(req.logDir, 'stderr', req.logMaxBytes));
    } catch (err) {
      finish({ kind: 'spawn-failed', message: `cannot open log files in ${req.logDir}: ${errorMessage(err)}` });
      return;
    }
    const [stdoutLog, stderrLog] = logs as [CappedLogWriter, CappedLogWriter];
    const child = spawn(req.argv[0]!, req.argv.slice(1), {
      cwd: req.cwd,
      env: { ...req.env, [RUN_TOKEN_VAR]: token },
      detached: true, // own session and process group: the job's pid is its group id
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    job = child;
    let logFailed = false;
    const toLog = (log: CappedLogWriter) => (chunk: Buffer) => {
      try {
        log.write(chunk);
      } catch (err) {
        // A full disk must not kill the job or its supervisor; output is lost until it frees up.
        if (!logFailed) warn(`cannot write job output: ${errorMessage(err)}`);
        logFailed = true;
      }
    };
    child.stdout!.on('data', toLog(stdoutLog));
    child.stderr!.on('data', toLog(stderrLog));
    child.once('spawn', () => {
      jobPid = child.pid!;
      send({ type: 'started', pid: jobPid });
      if (parentGone) signal('SIGKILL');
      else if (pendingSignal !== null) signal(pendingSignal);
    });
    child.once('error', (err) => {
      if (jobPid === null) finish({ kind: 'spawn-failed', message: describeSpawnError(err, req.argv[0]!) });
      else warn(`job process error: ${errorMessage(err)}`);
    });
    child.once('exit', (code, sig) => {
      const exit: ProcessExit = code !== null ? { kind: 'exited', code } : { kind: 'signaled', signal: sig ?? 'unknown' };
      // The job is its main process: what it left behind in its group (or under its token) ends with it.
      if (jobPid !== null) signalJob(jobPid, token, 'SIGKILL');
      let drained = false;
      const done = () => {
        if (drained) return;
        drained = true;
        finish(exit);
      };
      child.once('close', done);
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        done();
      }, PIPE_DRAIN_MS).unref();
    });
  };

  const read = lineReader(
    ToSupervisorSchema,
    (m) => {
      if (m.type === 'start') {
        if (job === null && !reported) start(m);
        else warn('second start request ignored');
      } else if (m.type === 'renew') {
        renew(m.validForMs);
      } else {
        signal(m.signal);
      }
    },
    (why) => warn(`bad message from the daemon: ${why}`),
  );
  process.stdin.on('data', read);
  process.stdin.once('end', onParentGone);
  process.stdin.once('close', onParentGone);
  process.stdin.once('error', onParentGone);

  const selfStop = () => {
    if (job === null) process.exit(0);
    signal('SIGTERM');
    setTimeout(() => signal('SIGKILL'), SELF_STOP_GRACE_MS).unref();
  };
  process.on('SIGTERM', selfStop);
  process.on('SIGINT', selfStop);
  process.on('SIGHUP', selfStop);
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) runSupervisor();
