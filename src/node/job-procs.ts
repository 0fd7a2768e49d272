/**
 * Ending a job's processes, all of them.
 *
 * A job runs as the leader of its own process group, so one signal to `-pgid` reaches it and
 * every child it forked. A process that left the group (`setsid`, a daemonizing double fork)
 * escapes that signal; it still carries the job's environment, though, and the supervisor puts
 * a unique run token there (FABRIC_RUN_TOKEN). On Linux a sweep of /proc/<pid>/environ finds
 * every process started under that token, wherever it went — the cookie method Jenkins'
 * ProcessTreeKiller uses. (A process that rewrites its own environment block, or runs as
 * another user, is out of reach: that needs cgroups.)
 */
import { readdirSync, readFileSync } from 'node:fs';
import { FabricError } from '../core/index.ts';

export const RUN_TOKEN_VAR = 'FABRIC_RUN_TOKEN';

/** Owners are part of run tokens: `<owner>.<random>`. */
const OWNER_RE = /^[A-Za-z0-9_-]{1,64}$/;

export function checkOwner(owner: string): string {
  if (!OWNER_RE.test(owner)) throw new FabricError('BAD_INPUT', `job owner ${JSON.stringify(owner)} must be 1-64 letters, digits, - or _`);
  return owner;
}

/** Sends `sig` to a process group; false when the group is gone. */
export function signalGroup(pgid: number, sig: NodeJS.Signals): boolean {
  if (!Number.isInteger(pgid) || pgid <= 1) return false;
  try {
    process.kill(-pgid, sig);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return false;
    if (code === 'EPERM') return true; // exists, but not ours to signal (should not happen for our own jobs)
    throw err;
  }
}

/** True while `pid` is a live process (a zombie, dead but not yet reaped, counts as gone). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // pid (comm) S ...: comm may hold spaces and parentheses, so the state follows the last ')'.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return process.platform !== 'linux'; // no /proc: trust kill(0); on Linux it vanished meanwhile
  }
}

/** Pids of the processes whose environment has FABRIC_RUN_TOKEN matching `match`. Linux only; elsewhere none. */
export function findByRunToken(match: (token: string) => boolean): number[] {
  if (process.platform !== 'linux') return [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  const prefix = `${RUN_TOKEN_VAR}=`;
  const found: number[] = [];
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    let environ: string;
    try {
      environ = readFileSync(`/proc/${name}/environ`, 'latin1');
    } catch {
      continue; // gone, or another user's
    }
    for (const entry of environ.split('\0')) {
      if (entry.startsWith(prefix) && match(entry.slice(prefix.length))) {
        found.push(pid);
        break;
      }
    }
  }
  return found;
}

/**
 * Signals every process carrying a matching run token. With SIGKILL it sweeps again until none
 * is left (a process may fork between the scan and the kill), a few rounds at most. Returns
 * how many processes were signalled.
 */
export function signalByRunToken(match: (token: string) => boolean, sig: NodeJS.Signals): number {
  let signalled = 0;
  for (let round = 0; round < (sig === 'SIGKILL' ? 5 : 1); round++) {
    const pids = findByRunToken(match).filter(processAlive);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
        signalled++;
      } catch {
        // gone meanwhile
      }
    }
  }
  return signalled;
}

/** Signals a job's process group and everything that carries its run token. */
export function signalJob(pgid: number | null, token: string, sig: NodeJS.Signals): void {
  if (pgid !== null) signalGroup(pgid, sig);
  signalByRunToken((t) => t === token, sig);
}

/**
 * Kills what is left of jobs an earlier life of this daemon started (their supervisors should
 * have ended them; this catches a supervisor that was killed together with the daemon).
 * Call it at start-up, before starting jobs. Returns how many processes were killed.
 */
export function killOrphanJobs(owner: string): number {
  const prefix = `${checkOwner(owner)}.`;
  return signalByRunToken((t) => t.startsWith(prefix), 'SIGKILL');
}
