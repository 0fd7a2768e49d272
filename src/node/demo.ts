/**
 * `fabric demo`: a local fabric of several daemons (separate processes, own data dirs, two
 * zones, simulated GPUs) on loopback. It shows every peer's GPUs, then runs a small real training
 * job (examples/train) that checkpoints every few steps; kills the job's host with kill -9; and
 * shows the job running again on another peer from its latest checkpoint, with the restart time
 * and the steps lost. Everything it starts is stopped and removed at the end, also on ^C.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FabricError } from '../core/index.ts';
import { FabricClient } from '../client/client.ts';
import { nodesTable, shortPeerId } from '../client/format.ts';
import type { NodeView } from '../api/schemas.ts';

const MAIN = join(import.meta.dirname, 'main.ts');
const TRAIN = join(import.meta.dirname, '..', '..', 'examples', 'train', 'train.ts');
const TRAIN_STEPS = 300;
const CHECKPOINT_EVERY = 20;

/** Prints a job's stdout as it grows, line by line, from whichever peer runs it. */
class LogTail {
  readonly #client: FabricClient;
  readonly #jobId: string;
  readonly #print: (line: string) => void;
  #from = 0;
  #partial = '';
  #source = '';
  lastStep: number | null = null;
  resumedFrom: number | null = null;

  constructor(client: FabricClient, jobId: string, print: (line: string) => void) {
    this.#client = client;
    this.#jobId = jobId;
    this.#print = print;
  }

  /** The job moved: read its new host's log from the start. */
  restart(): void {
    this.#from = 0;
    this.#partial = '';
  }

  async poll(): Promise<void> {
    let r;
    try {
      r = await this.#client.jobLogs(this.#jobId, { from: this.#from });
    } catch {
      return; // between hosts
    }
    const source = `${r.peerId}#${r.attempt}`;
    if (source !== this.#source && this.#source !== '') this.restart();
    if (source !== this.#source && this.#from !== 0) return;
    this.#source = source;
    this.#from = r.end;
    const text = this.#partial + Buffer.from(r.data, 'base64').toString('utf8');
    const lines = text.split('\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) {
      const step = /^step (\d+)\//.exec(line);
      if (step !== null) this.lastStep = Number(step[1]);
      const resumed = /^resumed from step (\d+)/.exec(line);
      if (resumed !== null) this.resumedFrom = Number(resumed[1]);
      if (step !== null || resumed !== null || /^checkpoint step \d+ committed$|^done/.test(line)) this.#print(line);
    }
  }
}

export interface DemoOptions {
  peers: number;
  keep: boolean;
  out: (line: string) => void;
}

const PEERS = [
  { profile: 'h100-sxm-8', zone: 'zone-a' },
  { profile: 'a100-sxm-8', zone: 'zone-b' },
  { profile: 'h100-mig', zone: 'zone-a' },
  { profile: 'mi300x-4', zone: 'zone-b' },
  { profile: 'a100-sxm-8', zone: 'zone-a' },
  { profile: 'cpu-only', zone: 'zone-b' },
];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` every 100 ms until it gives a value (errors count as "not yet"); TIMEOUT after `timeoutMs`. */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch {
      // not ready yet
    }
    if (Date.now() > deadline) throw new FabricError('TIMEOUT', `timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

export async function runDemo(opts: DemoOptions): Promise<void> {
  const out = opts.out;
  const root = mkdtempSync(join(tmpdir(), 'fabric-demo-'));
  const children = new Map<string, ChildProcess>();
  const cleanup = () => {
    for (const c of children.values()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    if (!opts.keep) rmSync(root, { recursive: true, force: true });
  };
  const onSignal = () => {
    cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const start = async (name: string, args: string[]): Promise<FabricClient> => {
    const dataDir = join(root, name);
    // `agent` reads its addresses from the data dir that init/join wrote
    const addresses = args[0] === 'agent' ? [] : ['--listen', '/ip4/127.0.0.1/tcp/0', '--api-port', '0'];
    const child = spawn(process.execPath, [MAIN, ...args, '--data-dir', dataDir, ...addresses, '--log-level', 'error'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    children.set(name, child);
    return until(`daemon ${name} to start`, 30_000, async () => {
      if (child.exitCode !== null) throw new FabricError('INTERNAL', `daemon ${name} exited with code ${child.exitCode}`);
      if (!existsSync(join(dataDir, 'api.json'))) return undefined;
      const c = FabricClient.fromDataDir(dataDir);
      await c.status();
      return c;
    });
  };

  try {
    const peers = PEERS.slice(0, Math.max(2, Math.min(opts.peers, PEERS.length)));
    out(`Starting a local fabric of ${peers.length} daemons on simulated GPUs in two zones (data in ${root})`);
    const first = await start('peer-0', ['init', '--zone', peers[0]!.zone, '--simulate-gpus', peers[0]!.profile]);
    const token = await first.token();
    const clients = [first, ...(await Promise.all(peers.slice(1).map((p, i) => start(`peer-${i + 1}`, ['join', token, '--zone', p.zone, '--simulate-gpus', p.profile]))))];
    const t0 = Date.now();
    const nodes = await until('every daemon to see every peer', 30_000, async () => {
      const views = await Promise.all(clients.map((c) => c.nodes()));
      const complete = views.every((v) => v.length === peers.length && v.every((n) => n.state === 'alive' && n.updatedAtMs !== null));
      return complete ? views[views.length - 1] : undefined;
    });
    out(`\nAll ${peers.length} daemons see each other (${Date.now() - t0} ms after the last one started):\n`);
    out(nodesTable(nodes));

    // ---- a training job that checkpoints ----
    const leader = (await first.status()).raft.leader;
    out(`\nThe daemons elected a leader among themselves: ${leader === null ? '(none yet)' : shortPeerId(leader)}; it places jobs.`);
    const spec = {
      name: 'spiral-train',
      gpus: 1,
      command: [process.execPath, TRAIN, '--steps', String(TRAIN_STEPS), '--checkpoint-every', String(CHECKPOINT_EVERY), '--step-delay-ms', '30', '--log-every', '10'],
    };
    const submitter = clients[clients.length - 1]!;
    const { jobId } = await submitter.submitJob({ spec });
    out(`\nSubmitted a training job (${jobId}): a small neural network learns a 3-arm spiral, checkpointing every ${CHECKPOINT_EVERY} steps.`);
    const running = await until('the job to run', 30_000, async () => {
      const j = await submitter.job(jobId);
      return j.state === 'running' ? j : undefined;
    });
    const hostId = running.attempts.at(-1)!.peerIds[0]!;
    const ids = await Promise.all(clients.map(async (c) => (await c.status()).peerId));
    const victimIndex = ids.indexOf(hostId);
    const victimName = `peer-${victimIndex}`;
    out(`It runs on ${victimName} (${shortPeerId(hostId)}). Its output, read from any peer:`);
    const watcher = clients.find((_, i) => i !== victimIndex)!;
    const logs = new LogTail(watcher, jobId, (line) => out(`  | ${line}`));
    await until('two committed checkpoints', 60_000, async () => {
      await logs.poll();
      const j = await watcher.job(jobId);
      return j.checkpoints.length >= 2 ? j : undefined;
    });
    await sleep(400);
    await logs.poll();
    const stepAtKill = logs.lastStep;

    out(`\nKilling ${victimName}, the job's host, with kill -9 (the job dies with it) ...`);
    const killedAt = Date.now();
    children.get(victimName)!.kill('SIGKILL');
    const others = clients.filter((_, i) => i !== victimIndex);
    await until('every other daemon to mark the killed host dead', 30_000, async () => {
      const views = await Promise.all(others.map((c) => c.nodes()));
      return views.every((v) => v.find((n: NodeView) => n.peerId === hostId)?.state === 'dead') ? true : undefined;
    });
    out(`Every other daemon marked it dead ${Date.now() - killedAt} ms after the kill.`);
    const again = await until('the job to run again elsewhere', 60_000, async () => {
      const j = await watcher.job(jobId);
      return j.attempt >= 2 && (j.state === 'running' || j.state === 'succeeded') ? j : undefined;
    });
    const restartMs = Date.now() - killedAt;
    const newHost = again.attempts.at(-1)!.peerIds[0]!;
    out(`The leader placed it again on ${`peer-${ids.indexOf(newHost)}`} (${shortPeerId(newHost)}), which restored its latest checkpoint (held there or fetched from its replicas):`);
    logs.restart();
    const done = await until('the job to finish', 120_000, async () => {
      await logs.poll();
      const j = await watcher.job(jobId);
      return j.state === 'succeeded' || j.state === 'failed' ? j : undefined;
    });
    await logs.poll();
    const resumed = logs.resumedFrom;
    out(`\nThe job ${done.state} after ${done.attempts.length} attempts.`);
    out(`Restart: ${restartMs} ms from the kill to the job running again on another peer.`);
    if (resumed !== null && stepAtKill !== null) {
      out(`Work lost: ${Math.max(0, stepAtKill - resumed)} steps (last step seen before the kill ${stepAtKill}, resumed from the checkpoint of step ${resumed}; at most one checkpoint interval, ${CHECKPOINT_EVERY}).`);
    }
    if (done.state !== 'succeeded') throw new FabricError('INTERNAL', `demo: the job ended ${done.state}: ${done.reason ?? ''}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cleanup();
    out(opts.keep ? `\nDaemons stopped; data kept in ${root}` : '\nDaemons stopped and their data removed.');
  }
}
