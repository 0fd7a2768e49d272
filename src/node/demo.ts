/**
 * `fabric demo`: a local fabric of several daemons (separate processes, own data dirs, two
 * zones, simulated GPUs) on loopback. Today it shows the mesh: every peer's GPUs, a host killed
 * with kill -9 and detected dead by the others, the host restarted under the same identity.
 * Everything it starts is stopped and removed at the end, also on ^C.
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

async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch {
      // not ready yet
    }
    if (Date.now() > deadline) throw new FabricError('TIMEOUT', `demo: timed out waiting for ${what}`);
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

    const victimIndex = 1;
    const victimName = `peer-${victimIndex}`;
    const victimId = (await clients[victimIndex]!.status()).peerId;
    out(`\nKilling ${victimName} (${shortPeerId(victimId)}) with kill -9 ...`);
    const killedAt = Date.now();
    children.get(victimName)!.kill('SIGKILL');
    const others = clients.filter((_, i) => i !== victimIndex);
    await until('every other daemon to mark the killed one dead', 30_000, async () => {
      const views = await Promise.all(others.map((c) => c.nodes()));
      return views.every((v) => v.find((n: NodeView) => n.peerId === victimId)?.state === 'dead') ? true : undefined;
    });
    out(`Every other daemon marked it dead ${Date.now() - killedAt} ms after the kill.`);

    out(`\nRestarting ${victimName} from its data dir (fabric agent) ...`);
    const restartedAt = Date.now();
    const restarted = await start(victimName, ['agent']);
    const back = await restarted.status();
    await until('the restarted daemon to be alive everywhere', 30_000, async () => {
      const views = await Promise.all(others.map((c) => c.nodes()));
      return views.every((v) => v.find((n) => n.peerId === victimId)?.state === 'alive') ? true : undefined;
    });
    out(`It is back under the same peer id (${back.peerId === victimId ? 'same' : 'DIFFERENT'}: ${shortPeerId(back.peerId)}, incarnation ${back.incarnation}), alive everywhere after ${Date.now() - restartedAt} ms.\n`);
    out(nodesTable(await first.nodes()));
    out('\nJobs, checkpoints and recovery on another peer come with the next milestones (see README).');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cleanup();
    out(opts.keep ? `\nDaemons stopped; data kept in ${root}` : '\nDaemons stopped and their data removed.');
  }
}
