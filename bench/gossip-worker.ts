/**
 * One process of the gossip benchmark (see bench/gossip.ts): hosts one or more real daemons
 * (each with its own data dir, libp2p host and API port) and reports to the coordinator over
 * the IPC channel of `child_process.fork`:
 * - every membership event that matters to the figures, stamped with the wall clock shared by
 *   all processes of the machine (`performance.timeOrigin + performance.now()`): a peer's
 *   benchmark label seen changed, a peer moving between alive, suspect and dead;
 * - on request, a summary of each daemon's view, its gossip counters, and this process's
 *   event-loop delay, CPU time and memory.
 *
 * It never outlives the coordinator: when the IPC channel closes it removes its daemons' data
 * dirs and exits.
 */
import { rmSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Daemon } from '../src/node/daemon.ts';
import { initDataDir, joinDataDir } from '../src/node/setup.ts';
import { createLogger, type LogLevel } from '../src/node/system.ts';
import type { DaemonFlags } from '../src/node/cli.ts';
import type { Logger } from '../src/core/index.ts';
import type { GossipOptions, MembershipEvent } from '../src/gossip/membership.ts';

/** The label whose value the coordinator changes on one daemon and watches arrive everywhere. */
export const CHANGE_LABEL = 'bench-change';

export interface DaemonSpec {
  name: string;
  dataDir: string;
  profile: string;
  zone: string;
}

export type ToWorker =
  | { t: 'init'; spec: DaemonSpec; logLevel: LogLevel; rediscoverMs: number; gossip: Partial<GossipOptions> }
  | { t: 'join'; spec: DaemonSpec; token: string; logLevel: LogLevel; rediscoverMs: number; gossip: Partial<GossipOptions> }
  | { t: 'change'; id: number; name: string; value: string }
  | { t: 'query'; id: number; resetLoopDelay: boolean }
  | { t: 'stop' };

export interface DaemonSummary {
  name: string;
  peerId: string;
  alive: number;
  suspect: number;
  dead: number;
  /** Members (self included) whose full state this daemon holds. */
  withState: number;
  connected: number;
  gossip: { droppedFrames: number; suspicions: number; falseSuspicions: number };
}

export interface ProcessSummary {
  pid: number;
  daemons: DaemonSummary[];
  /** Event-loop delay since the last reset, ms. */
  loopDelay: { p50: number; p99: number; max: number; mean: number };
  cpuUserMs: number;
  cpuSystemMs: number;
  rssBytes: number;
  heapUsedBytes: number;
  wasmMemoryGrows: number;
}

export type FromWorker =
  | { t: 'ready'; pid: number }
  | { t: 'up'; name: string; peerId: string; token: string }
  | { t: 'failed'; name: string; error: string }
  | { t: 'seen'; observer: string; peerId: string; value: string; ts: number }
  | { t: 'status'; observer: string; peerId: string; status: 'alive' | 'suspect' | 'dead'; ts: number }
  | { t: 'changed'; id: number; ts: number; error?: string }
  | { t: 'summary'; id: number; summary: ProcessSummary };

const wallNow = (): number => performance.timeOrigin + performance.now();

/**
 * Counts WebAssembly memory growth. The only WASM here is pnet's xsalsa20, whose memory grows
 * only after one write over ~0.6 MiB; after that every connection of the process re-grows it
 * until it hits its 1000-page cap and every pnet connection of the process fails (STACK.md).
 * A non-zero count in the figures means the run was hit by that bug, not by gossip itself.
 */
let wasmGrows = 0;
const originalGrow = WebAssembly.Memory.prototype.grow;
WebAssembly.Memory.prototype.grow = function grow(this: WebAssembly.Memory, delta: number): number {
  wasmGrows++;
  return originalGrow.call(this, delta);
};

const daemons = new Map<string, Daemon>();
const dataDirs: string[] = [];
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();
let logger: Logger | undefined;
let stopping = false;

function send(msg: FromWorker): void {
  if (process.connected) process.send!(msg);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function daemonFlags(spec: DaemonSpec, logLevel: LogLevel): DaemonFlags {
  return { listen: ['/ip4/127.0.0.1/tcp/0'], apiPort: 0, simulateGpus: spec.profile, zone: spec.zone, logLevel };
}

const DEFAULTS = { listen: '/ip4/127.0.0.1/tcp/0', apiPort: 0 };

async function startDaemon(
  spec: DaemonSpec,
  logLevel: LogLevel,
  rediscoverMs: number,
  gossip: Partial<GossipOptions>,
  token: string | undefined,
): Promise<void> {
  try {
    dataDirs.push(spec.dataDir);
    if (token === undefined) await initDataDir({ dataDir: spec.dataDir, flags: daemonFlags(spec, logLevel), defaults: DEFAULTS });
    else await joinDataDir({ dataDir: spec.dataDir, flags: daemonFlags(spec, logLevel), token, defaults: DEFAULTS });
    logger ??= createLogger(logLevel);
    const daemon = await Daemon.start({ dataDir: spec.dataDir, log: logger.child({ daemon: spec.name }), rediscoverMs, gossip });
    if (stopping) {
      await daemon.stop();
      return;
    }
    daemons.set(spec.name, daemon);
    watch(spec.name, daemon);
    send({ t: 'up', name: spec.name, peerId: daemon.peerId, token: daemon.joinToken() });
  } catch (err) {
    send({ t: 'failed', name: spec.name, error: errorText(err) });
  }
}

/** Forwards the membership events the figures are made of; the timestamp is taken first. */
function watch(name: string, daemon: Daemon): void {
  const lastValue = new Map<string, string>();
  daemon.onMembership((event: MembershipEvent) => {
    const ts = wallNow();
    if (event.peerId === daemon.peerId) return;
    if (event.type === 'status') {
      send({ t: 'status', observer: name, peerId: event.peerId, status: event.status, ts });
      return;
    }
    if (event.type !== 'changed' || event.state === undefined) return;
    const value = event.state.labels.extra[CHANGE_LABEL];
    if (value === undefined || lastValue.get(event.peerId) === value) return;
    lastValue.set(event.peerId, value);
    send({ t: 'seen', observer: name, peerId: event.peerId, value, ts });
  });
}

function summarize(resetLoopDelay: boolean): ProcessSummary {
  const ms = (ns: number) => (Number.isFinite(ns) ? ns / 1e6 : 0);
  const cpu = process.cpuUsage();
  const summary: ProcessSummary = {
    pid: process.pid,
    daemons: [...daemons].map(([name, d]) => {
      const nodes = d.nodes();
      const status = d.status();
      return {
        name,
        peerId: d.peerId,
        alive: status.peers.alive,
        suspect: status.peers.suspect,
        dead: status.peers.dead,
        withState: nodes.filter((n) => n.updatedAtMs !== null).length,
        connected: status.peers.connected,
        gossip: status.gossip,
      };
    }),
    loopDelay: {
      p50: ms(loopDelay.percentile(50)),
      p99: ms(loopDelay.percentile(99)),
      max: ms(loopDelay.max),
      mean: ms(loopDelay.mean),
    },
    cpuUserMs: cpu.user / 1000,
    cpuSystemMs: cpu.system / 1000,
    rssBytes: process.memoryUsage.rss(),
    heapUsedBytes: process.memoryUsage().heapUsed,
    wasmMemoryGrows: wasmGrows,
  };
  if (resetLoopDelay) loopDelay.reset();
  return summary;
}

async function stopAll(): Promise<void> {
  stopping = true;
  await Promise.all(
    [...daemons.values()].map((d) =>
      Promise.race([d.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 10_000).unref())]),
    ),
  );
  daemons.clear();
}

function removeDataDirs(): void {
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
}

process.on('message', (raw) => {
  const msg = raw as ToWorker;
  switch (msg.t) {
    case 'init':
      void startDaemon(msg.spec, msg.logLevel, msg.rediscoverMs, msg.gossip, undefined);
      break;
    case 'join':
      void startDaemon(msg.spec, msg.logLevel, msg.rediscoverMs, msg.gossip, msg.token);
      break;
    case 'change': {
      const daemon = daemons.get(msg.name);
      const ts = wallNow();
      if (daemon === undefined) {
        send({ t: 'changed', id: msg.id, ts, error: `no daemon ${msg.name} here` });
        break;
      }
      daemon.changeLabels({ set: { [CHANGE_LABEL]: msg.value }, remove: [] }).then(
        () => send({ t: 'changed', id: msg.id, ts }),
        (err: unknown) => send({ t: 'changed', id: msg.id, ts, error: errorText(err) }),
      );
      break;
    }
    case 'query':
      send({ t: 'summary', id: msg.id, summary: summarize(msg.resetLoopDelay) });
      break;
    case 'stop':
      // The coordinator waits for this process to exit.
      void stopAll().finally(() => {
        removeDataDirs();
        process.exit(0);
      });
      break;
  }
});

// The coordinator is gone (it ended, crashed or was killed): leave nothing behind.
process.on('disconnect', () => {
  stopping = true;
  removeDataDirs();
  process.exit(0);
});
process.on('SIGINT', () => {}); // ^C reaches the whole process group; the coordinator decides.

send({ t: 'ready', pid: process.pid });
