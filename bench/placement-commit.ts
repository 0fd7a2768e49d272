/**
 * Committed placement speed for `npm run bench -- placement --speed`: placements per second that
 * go all the way through Raft, the figure `committed_placements_per_s` beside the pure
 * scheduler's `placements_per_s` (placement-speed.ts).
 *
 * Setup, in this process, over real libp2p on loopback (TCP, Noise, Yamux, the swarm key): three
 * hosts, each with a ControlPlane (a Raft node with its own log on disk, fsync included, and its
 * own replica of the fabric state). This thread's bootstraps the group and leads it; the two
 * others run on worker threads of their own (placement-commit-voter.ts: own event loop and heap,
 * as on machines of their own, though the machine's cores are shared) and join empty: the
 * leader's autopilot adds them as learners and promotes them, and the run starts once the leader
 * counts 3 voters. On the leader runs the production PlacementService
 * (src/node/placement-service.ts), fed the synthetic fabric of placement-speed.ts (1,250 peers ×
 * 8 GPUs = 10,000 GPUs, five zones, spot and A100 peers) as gossiped NodeStates. Those peers
 * count as members of the Raft group for the service (only members are schedulable: they hold the
 * replica that tells them what to run); no host runs for them. Nothing else is stubbed.
 *
 * Measured: from the first `job.submit` to the moment all N jobs hold allocations in the
 * leader's committed (applied) state. Jobs are submitted through the leader's control plane
 * (the path its HTTP API takes, minus HTTP) by 256 concurrent writers, each job a draw from the
 * synthetic job mix (whole GPUs, shares, 2/4/8-GPU NVLink jobs, CPU-only), `waitForCapacity`;
 * the default N = 4,000 fills about 70% of the GPUs, so every job fits. The time covers N
 * `job.submit` and N `alloc.place` commits (each appended and fsynced by a majority of the three)
 * and the planning of every job on the leader's thread, which also runs the leader's Raft node
 * and the writers. References printed beside it in the same run: the target of issue 4
 * (2,000/s) as a ratio, and the pure scheduler's `placements_per_s`.
 *
 * Also reported: when the last submit was acknowledged (placement trails submission by that
 * much), proposals the state machine refused (stale plans, planned again), devices over-booked in
 * committed state (must be 0), and CPU time of the three voters with the machine's load, since a
 * shared machine slows the wall clock.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { SeededRng, silentLogger } from '../src/core/index.ts';
import type { NodeState } from '../src/gossip/state.ts';
import { ControlPlane, type CommandRequest } from '../src/node/control-plane.ts';
import { createHost, type FabricHost } from '../src/node/host.ts';
import { newSwarmKey } from '../src/node/identity.ts';
import { PlacementService, type PlacementControl, type PlacementPeer } from '../src/node/placement-service.ts';
import type { PeerView } from '../src/placement/snapshot.ts';
import type { FromVoter, GroupMember, ToVoter, VoterData } from './placement-commit-voter.ts';
import { jobSpec, syntheticPeers } from './placement-speed.ts';

export const TARGET_COMMITTED_PLACEMENTS_PER_S = 2_000;

export interface CommitOptions {
  peers: number;
  gpusPerPeer: number;
  /** Jobs submitted and placed. */
  jobs: number;
  seed: number;
  /** Give up waiting for the last placements after this long (ms). */
  timeoutMs?: number;
}

export interface CommitFigures {
  committed_placements_per_s: number;
  committed_jobs: number;
  /** Jobs placed when the clock stopped (= committed_jobs unless the run timed out). */
  committed_placed: number;
  committed_seconds: number;
  /** When the last job.submit was acknowledged, seconds from the first. */
  committed_submit_seconds: number;
  committed_gpus_allocated: number;
  /** alloc.place proposals the state machine refused (stale plans; the job is planned again). */
  committed_refused_proposals: number;
  /** Devices granted past 1000 thousandths in committed state (must be 0). */
  committed_overbooked_devices: number;
  /** CPU time this process used while timed: the three voters (three threads), libp2p, the scheduler, the writers. */
  committed_cpu_seconds: number;
  /** Placements per CPU-second of the three voters together. */
  committed_placements_per_cpu_s: number;
  /** One-minute load average per core at the end: above 1, other work shared the cores. */
  committed_load_per_core: number;
  raft_voters: number;
}

const WRITERS = 256;

/** A synthetic peer as the gossip layer would hand it over. */
function nodeStateOf(view: PeerView): NodeState {
  return {
    v: 1,
    peerId: view.peerId,
    fabricId: 'bench',
    incarnation: 1,
    seq: 0,
    addrs: [],
    apiVersion: '0.1.0',
    labels: {
      ...(view.zone !== null ? { zone: view.zone } : {}),
      ...(view.region !== null ? { region: view.region } : {}),
      ...(view.cloud !== null ? { cloud: view.cloud } : {}),
      ...(view.pricePerGpuHour !== null ? { pricePerGpuHour: view.pricePerGpuHour } : {}),
      spot: view.spot,
      extra: { rack: view.labels['rack'] ?? 'r0' },
    },
    inventory: { host: { cpuModel: 'bench', cpuCores: view.cpuMilli / 1000, memoryMiB: view.memoryMiB }, devices: [...view.devices], links: [...view.links], warnings: [] },
    load: { allocatedDevices: [] },
    updatedAtMs: 0,
  };
}

async function waitFor<T>(what: string, fn: () => T | undefined | false, timeoutMs: number, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The leader-to-be in this thread, and the two followers on worker threads. */
interface Group {
  host: FabricHost;
  control: ControlPlane;
  followers: Worker[];
}

function nextMessage(worker: Worker, what: string, timeoutMs: number): Promise<FromVoter> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`voter thread: no ${what} within ${timeoutMs} ms`)), timeoutMs);
    worker.once('message', (msg: FromVoter) => {
      clearTimeout(timer);
      if (msg.t === 'failed') reject(new Error(`voter thread: ${msg.error}`));
      else resolve(msg);
    });
    worker.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * Three voters over libp2p on loopback: this thread bootstraps the group, two follower threads
 * (placement-commit-voter.ts) join it empty; resolves once this node leads 3 voters. What it
 * started is in `group` for the caller to stop, whatever happens.
 */
async function startGroup(dir: string, group: Partial<Group>, progress: (line: string) => void): Promise<ControlPlane> {
  const swarmKey = newSwarmKey();
  group.followers = [];
  for (let i = 1; i <= 2; i++) {
    const data: VoterData = { swarmKey, dir: join(dir, `raft-${i}`) };
    group.followers.push(new Worker(new URL('./placement-commit-voter.ts', import.meta.url), { workerData: data }));
  }
  const ups = await Promise.all(group.followers.map((w) => nextMessage(w, 'start', 30_000)));
  const host = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
  group.host = host;
  const members: GroupMember[] = [
    { peerId: host.peerId.toString(), addrs: host.getMultiaddrs().map(String), zone: 'z-1' },
    ...ups.map((up, i) => {
      if (up.t !== 'up') throw new Error(`voter thread: unexpected ${up.t}`);
      return { peerId: up.peerId, addrs: up.addrs, zone: `z-${i + 2}` };
    }),
  ];
  for (const m of members.slice(1)) await host.peerStore.patch(peerIdFromString(m.peerId), { multiaddrs: m.addrs.map((a) => multiaddr(a)) });
  for (const w of group.followers) w.postMessage({ t: 'peers', members } satisfies ToVoter);
  const peers = members.map((m) => ({ peerId: m.peerId, health: 'alive' as const, healthForMs: 60_000, zone: m.zone, hint: undefined }));
  const control = new ControlPlane({
    host,
    dir: join(dir, 'raft-0'),
    log: silentLogger,
    bootstrap: true,
    deadVoterGraceMs: 3_600_000,
    peers: () => peers,
    publishHint: () => undefined,
    wallNow: () => Date.now(),
  });
  group.control = control;
  await control.start();
  await waitFor('the leader with 3 voters', () => control.localStatus().role === 'leader' && control.localStatus().voters.length === 3, 30_000, 50);
  progress('placement commit: raft group of 3 voters formed (leader here, followers on threads of their own)');
  return control;
}

async function stopGroup(group: Partial<Group>): Promise<void> {
  await group.control?.stop().catch(() => undefined);
  await Promise.resolve(group.host?.stop()).catch(() => undefined);
  await Promise.all(
    (group.followers ?? []).map(async (w) => {
      w.postMessage({ t: 'stop' } satisfies ToVoter);
      await nextMessage(w, 'stop', 5_000).catch(() => undefined);
      await w.terminate();
    }),
  );
}

export async function runCommitted(options: CommitOptions, progress: (line: string) => void): Promise<CommitFigures> {
  const rng = new SeededRng(options.seed);
  const fabric = syntheticPeers(options.peers, options.gpusPerPeer, rng).map(nodeStateOf);
  const fabricIds = fabric.map((s) => s.peerId);
  const gossiped: PlacementPeer[] = fabric.map((state) => ({ peerId: state.peerId, health: 'alive', state }));
  const specs = Array.from({ length: options.jobs }, () => ({ ...jobSpec(rng), waitForCapacity: true, command: ['true'] }));

  const dir = mkdtempSync(join(tmpdir(), 'fabric-bench-placement-'));
  const group: Partial<Group> = {};
  let service: PlacementService | undefined;
  try {
    const leader = await startGroup(dir, group, progress);
    let proposals = 0;
    let refused = 0;
    // The leader's control plane as the service uses it; the synthetic peers count as members.
    const control: PlacementControl = {
      id: leader.id,
      get state() {
        return leader.state;
      },
      localStatus: () => {
        const s = leader.localStatus();
        return { ...s, learners: [...s.learners, ...fabricIds] };
      },
      onApplied: (listener) => leader.onApplied(listener),
      submit: async (request, opts) => {
        const answer = await leader.submit(request, opts);
        if (request.type === 'alloc.place') {
          proposals++;
          if (!answer.result.ok) refused++;
        }
        return answer;
      },
      leaseSilenceOf: (peer) => leader.leaseSilenceOf(peer),
      withLeasesRefused: (peer, work) => leader.withLeasesRefused(peer, work),
    };
    service = new PlacementService({ control, peers: () => gossiped, log: silentLogger, wallNow: () => Date.now() });
    service.start();

    progress(`placement commit: ${options.jobs} jobs through Raft onto ${options.peers} peers × ${options.gpusPerPeer} GPUs`);
    const started = performance.now();
    const cpuStart = process.cpuUsage();
    let next = 0;
    let acked = 0;
    let submitDone = 0;
    const writers = Array.from({ length: WRITERS }, async () => {
      while (next < specs.length) {
        const i = next++;
        const request: CommandRequest = { type: 'job.submit', requestId: `bench-${i}`, actor: 'bench', jobId: `job-${i}`, tenant: 'bench', name: `job-${i}`, priority: 0, preemptible: false, spec: specs[i]! };
        const { result } = await leader.submit(request, { timeoutMs: 30_000 });
        if (!result.ok) throw new Error(`job.submit refused: ${result.code}: ${result.message}`);
        acked++;
      }
    });
    let submitError: unknown;
    const submitted = Promise.all(writers).then(
      () => void (submitDone = performance.now()),
      (err: unknown) => void (submitError = err),
    );
    const state = (): typeof leader.state => leader.state;
    let finished = 0;
    try {
      await waitFor('every job placed', () => submitError !== undefined || (acked === specs.length && state().waitingJobs().length === 0), options.timeoutMs ?? 45_000, 2);
      finished = performance.now();
    } catch (err) {
      finished = performance.now();
      progress(`placement commit: ${err instanceof Error ? err.message : String(err)}; ${state().waitingJobs().length} jobs still wait`);
    }
    const cpu = process.cpuUsage(cpuStart);
    await submitted;
    if (submitError !== undefined) throw submitError;
    const seconds = (finished - started) / 1000;
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    const placed = state().jobs({ tenant: 'bench' }).filter((j) => j.state === 'placed').length;

    const milli = new Map<string, number>();
    for (const allocation of state().allocations()) {
      for (const device of allocation.devices) milli.set(device.uuid, (milli.get(device.uuid) ?? 0) + device.milli);
    }
    const overbooked = [...milli.values()].filter((m) => m > 1000).length;
    const gpus = [...milli.values()].reduce((a, b) => a + b, 0) / 1000;
    progress(`placement commit: ${placed} jobs placed in ${seconds.toFixed(2)} s (${proposals} proposals, ${refused} refused)`);
    return {
      committed_placements_per_s: Math.round(placed / seconds),
      committed_jobs: specs.length,
      committed_placed: placed,
      committed_seconds: Math.round(seconds * 1000) / 1000,
      committed_submit_seconds: Math.round(((submitDone - started) / 1000) * 1000) / 1000,
      committed_gpus_allocated: Math.round(gpus * 10) / 10,
      committed_refused_proposals: refused,
      committed_overbooked_devices: overbooked,
      committed_cpu_seconds: Math.round(cpuSeconds * 1000) / 1000,
      committed_placements_per_cpu_s: Math.round(placed / cpuSeconds),
      committed_load_per_core: Math.round((loadavg()[0]! / availableParallelism()) * 100) / 100,
      raft_voters: leader.localStatus().voters.length,
    };
  } finally {
    service?.stop();
    await stopGroup(group);
    rmSync(dir, { recursive: true, force: true });
  }
}
