/**
 * One daemon of the raft benchmark in a process of its own, so that killing the process with
 * SIGKILL is a real host death: sockets reset by the kernel, nothing flushed. Driven by
 * bench/raft.ts over IPC. Writes go through the daemon's own control plane (`submit`, the path
 * the HTTP API takes minus HTTP), as `job.submit` commands with a unique request id each, so
 * that every acknowledged write can be looked for at the end.
 */
import { randomBytes } from 'node:crypto';
import { PerformanceObserver } from 'node:perf_hooks';
import { Daemon } from '../src/node/daemon.ts';
import { initDataDir, joinDataDir } from '../src/node/setup.ts';
import { createLogger, type LogLevel } from '../src/node/system.ts';
import type { CommandRequest } from '../src/node/control-plane.ts';

export type ToRaftWorker =
  | { t: 'start'; mode: 'init' | 'join' | 'agent'; dataDir: string; token?: string; zone: string; logLevel: LogLevel }
  | { t: 'status'; id: number }
  /** Closed loop: `concurrency` writers back to back for `durationMs`. */
  | { t: 'closed-load'; id: number; concurrency: number; durationMs: number }
  /** Open loop: one write every 1000/rate ms for `durationMs`, whatever the answers. */
  | { t: 'open-load'; id: number; ratePerS: number; durationMs: number }
  /** A steady writer that reports every acknowledged write (for failover and loss accounting). */
  | { t: 'trickle'; on: boolean; pauseMs: number }
  /** Looks up acknowledged jobs in this replica after a read barrier. */
  | { t: 'verify'; id: number; jobIds: string[] }
  /** Ends the process gracefully (daemon stopped, so a CPU profile gets written). */
  | { t: 'exit' };

export interface WorkerStatus {
  peerId: string;
  leader: string | null;
  term: number;
  role: string;
  member: string;
  voters: string[];
  commit: number;
  applied: number;
}

export type FromRaftWorker =
  | { t: 'up'; peerId: string; token: string }
  | { t: 'failed'; error: string }
  | { t: 'status'; id: number; status: WorkerStatus }
  | { t: 'load-done'; id: number; acks: number; errors: number; latenciesMs: number[]; elapsedMs: number }
  | { t: 'ack'; ts: number; term: number; jobId: string }
  /** This node became leader and committed an entry of its term (the first commit of the new leader). */
  | { t: 'leader-committed'; ts: number; term: number; peerId: string }
  | { t: 'verified'; id: number; missing: string[]; duplicates: number; jobs: number };

let daemon: Daemon | undefined;
let trickleOn = false;

const wallNow = (): number => performance.timeOrigin + performance.now();

function send(msg: FromRaftWorker): void {
  if (process.connected) process.send!(msg);
}

function submitRequest(): CommandRequest {
  const id = randomBytes(8).toString('hex');
  // A job no peer of this fabric (cpu-only daemons) can run: it waits in the queue, as a write should.
  return { type: 'job.submit', requestId: `rq-${id}`, actor: 'bench', jobId: `j-${id}`, tenant: 'bench', name: `w-${id}`, priority: 0, preemptible: false, spec: { gpus: 1, waitForCapacity: true, command: ['true'] } };
}

async function write(request: CommandRequest): Promise<{ jobId: string }> {
  const { result } = await daemon!.control.submit(request, { timeoutMs: 30_000 });
  if (!result.ok) throw new Error(`${result.code}: ${result.message}`);
  return { jobId: (result.value as { jobId: string }).jobId };
}

function status(): WorkerStatus {
  const s = daemon!.control.localStatus();
  return { peerId: daemon!.peerId, leader: s.leader, term: s.term, role: s.role, member: s.member, voters: s.voters, commit: s.commit, applied: s.applied };
}

async function start(msg: Extract<ToRaftWorker, { t: 'start' }>): Promise<void> {
  const flags = { listen: ['/ip4/127.0.0.1/tcp/0'], apiPort: 0, simulateGpus: 'cpu-only', zone: msg.zone, logLevel: msg.logLevel, deadVoterGrace: 3_600 };
  const defaults = { listen: '/ip4/127.0.0.1/tcp/0', apiPort: 0 };
  if (msg.mode === 'init') await initDataDir({ dataDir: msg.dataDir, flags, defaults });
  if (msg.mode === 'join') await joinDataDir({ dataDir: msg.dataDir, flags, token: msg.token!, defaults });
  daemon = await Daemon.start({ dataDir: msg.dataDir, log: createLogger(msg.logLevel), rediscoverMs: 2_000_000_000 });
  watchLeadership(daemon);
  const stalls = process.env['FABRIC_BENCH_STALLS'];
  if (stalls !== undefined && stalls !== '' && stalls !== '0') reportStalls(daemon.peerId.slice(-6), stalls === '1' ? 100 : Number(stalls));
  send({ t: 'up', peerId: daemon.peerId, token: daemon.joinToken() });
}

/** For finding the cause of a slow failover or commit: prints every event-loop stall over `overMs` (FABRIC_BENCH_STALLS=1: 100 ms; =N: N ms) on stderr. */
function reportStalls(name: string, overMs: number): void {
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    if (now - last > overMs + 10) process.stderr.write(`[stall] ${name} ${Math.round(now - last)} ms ending at ${new Date(wallNow()).toISOString()} role ${daemon!.control.localStatus().role}\n`);
    last = now;
  }, 10).unref();
  // Garbage collections long enough to matter, to tell them from the daemon's own work.
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (e.duration > overMs / 2) process.stderr.write(`[gc] ${name} ${Math.round(e.duration)} ms kind ${String((e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind)} ending at ${new Date(performance.timeOrigin + e.startTime + e.duration).toISOString()}\n`);
    }
  }).observe({ entryTypes: ['gc'] });
}

/** Reports the moment this node, newly leader, has committed an entry of its own term. */
function watchLeadership(d: Daemon): void {
  let watching = 0;
  setInterval(() => {
    const s = d.control.localStatus();
    if (s.role !== 'leader' || s.term === watching) return;
    watching = s.term; // one poll per term (a new one every 2 ms piled up while a commit took long)
    const firstOfTerm = s.lastIndex; // the empty entry a new leader appends is at or before this
    const poll = (): void => {
      const now = d.control.localStatus();
      if (now.term !== s.term || now.role !== 'leader') return;
      if (now.commit >= firstOfTerm) {
        send({ t: 'leader-committed', ts: wallNow(), term: s.term, peerId: d.peerId });
        return;
      }
      setTimeout(poll, 1);
    };
    poll();
  }, 2).unref();
}

async function closedLoad(concurrency: number, durationMs: number): Promise<{ acks: number; errors: number; latenciesMs: number[]; elapsedMs: number }> {
  const latencies: number[] = [];
  let errors = 0;
  const started = wallNow();
  const end = started + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (wallNow() < end) {
        const t0 = wallNow();
        try {
          await write(submitRequest());
          latencies.push(wallNow() - t0);
        } catch {
          errors++;
        }
      }
    }),
  );
  return { acks: latencies.length, errors, latenciesMs: latencies, elapsedMs: wallNow() - started };
}

/** With FABRIC_BENCH_STALLS set, commits of the open loop slower than this are printed too. */
const slowCommitMs = ((v) => (v === undefined || v === '' || v === '0' ? undefined : v === '1' ? 100 : Number(v)))(process.env['FABRIC_BENCH_STALLS']);

async function openLoad(ratePerS: number, durationMs: number): Promise<{ acks: number; errors: number; latenciesMs: number[]; elapsedMs: number }> {
  const latencies: number[] = [];
  const inflight: Promise<void>[] = [];
  let errors = 0;
  const started = wallNow();
  const total = Math.round((ratePerS * durationMs) / 1000);
  for (let i = 0; i < total; i++) {
    // Scheduled send times, not "after the previous answer": a slow commit does not slow the offer.
    const due = started + (i * 1000) / ratePerS;
    const wait = due - wallNow();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    inflight.push(
      write(submitRequest()).then(
        () => {
          const ms = wallNow() - due;
          latencies.push(ms);
          if (slowCommitMs !== undefined && ms > slowCommitMs) process.stderr.write(`[slow] commit ${Math.round(ms)} ms due at ${new Date(due).toISOString()}\n`);
        },
        () => void errors++,
      ),
    );
  }
  await Promise.all(inflight);
  return { acks: latencies.length, errors, latenciesMs: latencies, elapsedMs: wallNow() - started };
}

async function trickle(pauseMs: number): Promise<void> {
  while (trickleOn) {
    const request = submitRequest();
    // The same request id until acknowledged: a retry never makes a second job.
    for (;;) {
      try {
        const { jobId } = await write(request);
        send({ t: 'ack', ts: wallNow(), term: daemon!.control.localStatus().term, jobId });
        break;
      } catch {
        if (!trickleOn) return;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
  }
}

async function verify(jobIds: string[]): Promise<{ missing: string[]; duplicates: number; jobs: number }> {
  await daemon!.control.query({ q: 'job', jobId: jobIds[0] ?? 'none' }).catch(() => undefined); // a read barrier
  const state = daemon!.control.state;
  const missing = jobIds.filter((id) => state.job(id) === undefined);
  const names = new Map<string, number>();
  const jobs = state.jobs({ tenant: 'bench' });
  for (const j of jobs) names.set(j.name, (names.get(j.name) ?? 0) + 1);
  const duplicates = [...names.values()].filter((n) => n > 1).length;
  return { missing, duplicates, jobs: jobs.length };
}

process.on('message', (raw) => {
  const msg = raw as ToRaftWorker;
  switch (msg.t) {
    case 'start':
      start(msg).catch((err: unknown) => send({ t: 'failed', error: err instanceof Error ? err.message : String(err) }));
      break;
    case 'status':
      send({ t: 'status', id: msg.id, status: status() });
      break;
    case 'closed-load':
      void closedLoad(msg.concurrency, msg.durationMs).then((r) => send({ t: 'load-done', id: msg.id, ...r }));
      break;
    case 'open-load':
      void openLoad(msg.ratePerS, msg.durationMs).then((r) => send({ t: 'load-done', id: msg.id, ...r }));
      break;
    case 'trickle':
      if (msg.on && !trickleOn) {
        trickleOn = true;
        void trickle(msg.pauseMs);
      } else if (!msg.on) trickleOn = false;
      break;
    case 'verify':
      void verify(msg.jobIds).then((r) => send({ t: 'verified', id: msg.id, ...r }));
      break;
    case 'exit':
      trickleOn = false;
      void (daemon?.stop() ?? Promise.resolve()).finally(() => process.exit(0));
      break;
  }
});
process.on('disconnect', () => process.exit(0));
