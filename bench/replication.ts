/**
 * `npm run bench -- replication`: a checkpoint to R peers over real libp2p on loopback, beside
 * raw TCP (node:net) moving the same bytes between the same processes in the same run.
 *
 * Layout. The writer (this process) holds the checkpoint: a `--size-mib` file of pseudo-random
 * bytes plus a small JSON file in a temp directory, committed into its chunk store. Each of the
 * `--peers` replicas is a process of its own (replication-worker.ts) with its own libp2p host
 * and chunk store, and a raw TCP sink. So the writer and the replicas run on separate cores as
 * they would on separate hosts, as far as the machine has cores.
 *
 * Phases, each timed on its own:
 *   commit       cut, hash and store the checkpoint locally (`commit_mib_per_s`)
 *   raw TCP      every distinct chunk, read once from the writer's store, sent to every peer over
 *                a plain node:net socket; the peer counts the bytes (`raw_tcp_mib_per_s`) or, a
 *                second run, writes them durably as the chunk store does (`raw_tcp_disk_mib_per_s`)
 *   replicate    CheckpointService.replicate to all peers: offer, push over parallel streams,
 *                every chunk verified on arrival and fsynced before it is acknowledged, the
 *                final check (`mib_per_s`: checkpoint MiB / seconds until every peer holds it)
 *   incremental  a second checkpoint with `--changed-pct` of the chunks changed (4 KiB
 *                overwritten in the middle of each), committed and replicated:
 *                `incremental_sent_fraction` = bytes sent per peer / checkpoint bytes
 *   restore      a fresh store on the writer's host restores the second checkpoint from all
 *                peers in parallel (`restore_mib_per_s`)
 * Raw TCP runs before and after replication; `raw_tcp_mib_per_s` is their mean (both are in the
 * JSON). `ratio` = mib_per_s / raw_tcp_mib_per_s; `ratio_vs_disk` against the durable sink.
 *
 * Hosts are host.ts's (`--transport fabric-psk`); `--transport fabric-psk-auth` runs the
 * swarm-key proof without the second cipher under Noise, `--transport pnet` the @libp2p/pnet
 * protector host.ts had before (host-variants.ts), to compare them in the same conditions.
 *
 * Everything it starts (processes, temp directories) is removed at the end and on SIGINT/SIGTERM.
 */
import { stderrBenchLogger } from './log.ts';
import { intFlag } from './args.ts';
import { fork, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import net from 'node:net';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { multiaddr } from '@multiformats/multiaddr';
import { addedChunks, manifestChunks, type Manifest } from '../src/checkpoint/index.ts';
import { CheckpointService } from '../src/node/checkpoints.ts';
import { tuneGarbageCollector } from '../src/node/system.ts';
import type { FabricHost } from '../src/node/host.ts';
import { HOST_VARIANTS, createHostVariant, isHostVariant, type HostVariant } from '../src/node/host-variants.ts';
import { newSwarmKey } from '../src/node/identity.ts';
import type { FromWorker, RawSink, ToWorker } from './replication-worker.ts';

const WORKER = join(import.meta.dirname, 'replication-worker.ts');
const MiB = 1024 * 1024;

/** Bulk channels on loopback, any free port. */
export const BENCH_BULK = Object.freeze({ host: '127.0.0.1', port: 0 });

export const REPLICATION_TARGETS = Object.freeze({ ratio: 0.5, incremental_sent_fraction: 0.15 });

export interface ReplicationBenchOptions {
  sizeMiB: number;
  peers: number;
  changedPct: number;
  streams: number;
  windowMiB: number;
  transport: HostVariant;
  /** Chunk data over bulk channels (as the daemon does by default), or libp2p streams only. */
  bulk: boolean;
  dir: string | undefined;
}

export const REPLICATION_USAGE = `npm run bench -- replication [--json] [options]
  --size-mib N      checkpoint size in MiB (default 1024)
  --peers R         replica peers, each a process of its own (default 2)
  --changed-pct P   percent of chunks changed for the incremental checkpoint (default 10)
  --streams S       parallel push streams per peer (default 2)
  --window-mib W    unacknowledged MiB per push stream (default 32)
  --transport T     fabric-psk (host.ts as it is), fabric-psk-auth (swarm-key proof, then Noise alone)
                    or pnet (@libp2p/pnet, host.ts before psk-protector.ts) (default fabric-psk)
  --bulk on|off     chunk data over bulk channels (a direct socket with AES-GCM records, the
                    daemon's default) or over libp2p streams only (default on)
  --dir PATH        where to put the temp directory (default the OS temp dir)
  FABRIC_BENCH_LOG=debug|info|warn prints the checkpoint services' log lines on stderr`;

export function parseReplicationArgs(args: string[]): ReplicationBenchOptions {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      'size-mib': { type: 'string', default: '1024' },
      peers: { type: 'string', default: '2' },
      'changed-pct': { type: 'string', default: '10' },
      streams: { type: 'string', default: '2' },
      'window-mib': { type: 'string', default: '32' },
      transport: { type: 'string', default: 'fabric-psk' },
      bulk: { type: 'string', default: 'on' },
      dir: { type: 'string' },
    },
  });
  const transport = values.transport;
  if (!isHostVariant(transport)) throw new Error(`--transport must be one of ${HOST_VARIANTS.join(', ')}, got ${transport}`);
  if (values.bulk !== 'on' && values.bulk !== 'off') throw new Error(`--bulk must be on or off, got ${values.bulk}`);
  return {
    sizeMiB: intFlag('size-mib', values['size-mib'], 1, 64 * 1024),
    peers: intFlag('peers', values.peers, 1, 8),
    changedPct: intFlag('changed-pct', values['changed-pct'], 1, 100),
    streams: intFlag('streams', values.streams, 1, 16),
    windowMiB: intFlag('window-mib', values['window-mib'], 17, 64),
    transport,
    bulk: values.bulk === 'on',
    dir: values.dir,
  };
}

interface Worker {
  child: ChildProcess;
  peerId: string;
  addrs: string[];
  rawPort: number;
  next(): Promise<FromWorker>;
}

function startWorker(dir: string, swarmKey: Uint8Array, o: ReplicationBenchOptions, progress: (line: string) => void): Promise<Worker> {
  const child = fork(WORKER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const inbox: FromWorker[] = [];
  const waiting: ((m: FromWorker) => void)[] = [];
  let exited: string | undefined;
  child.on('message', (m: FromWorker) => {
    if (m.t === 'error') progress(`replication: replica ${child.pid}: ${m.message}`);
    const w = waiting.shift();
    if (w) w(m);
    else inbox.push(m);
  });
  child.on('exit', (code, signal) => {
    exited = `replica process exited (${signal ?? code})`;
    if (signal !== 'SIGKILL' && code !== 0) progress(`replication: replica ${child.pid}: ${exited}`);
    for (const w of waiting.splice(0)) w({ t: 'error', message: exited });
  });
  const next = (): Promise<FromWorker> => {
    const m = inbox.shift();
    if (m) return Promise.resolve(m);
    if (exited !== undefined) return Promise.resolve({ t: 'error', message: exited });
    return new Promise((r) => waiting.push(r));
  };
  const msg: ToWorker = { t: 'init', dir, swarmKey: [...swarmKey], transport: o.transport, streams: o.streams, windowMiB: o.windowMiB, bulk: o.bulk };
  child.send(msg);
  return next().then((m) => {
    if (m.t !== 'ready') throw new Error(`replica did not start: ${m.t === 'error' ? m.message : m.t}`);
    return { child, peerId: m.peerId, addrs: m.addrs, rawPort: m.rawPort, next };
  });
}

async function ask<T extends FromWorker['t']>(w: Worker, m: ToWorker, want: T): Promise<Extract<FromWorker, { t: T }>> {
  w.child.send(m);
  const r = await w.next();
  if (r.t !== want) throw new Error(`replica answered ${r.t === 'error' ? r.message : r.t}, expected ${want}`);
  return r as Extract<FromWorker, { t: T }>;
}

/** Pseudo-random bytes written in 64 MiB blocks (AES-CTR keystream: fast, and incompressible). */
async function writeRandomFile(path: string, bytes: number, seed: string): Promise<void> {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const fh = await open(path, 'w');
  try {
    const zeros = Buffer.alloc(64 * MiB);
    for (let off = 0; off < bytes; off += zeros.length) {
      const n = Math.min(zeros.length, bytes - off);
      await fh.write(cipher.update(zeros.subarray(0, n)));
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Overwrites 4 KiB in the middle of every k-th chunk of `path` (k = 100 / pct); returns how many. */
async function changeChunks(manifest: Manifest, root: string, pct: number): Promise<number> {
  const every = Math.max(1, Math.round(100 / pct));
  let changed = 0;
  for (const e of manifest.entries) {
    if (e.type !== 'file' || e.chunks.length === 0) continue;
    const fh = await open(join(root, e.path), 'r+');
    try {
      let off = 0;
      for (let i = 0; i < e.chunks.length; i++) {
        const size = e.chunks[i]![1];
        if (i % every === every - 1) {
          const patch = createHash('sha512').update(`change ${i}`).digest();
          const block = Buffer.concat(Array.from({ length: 64 }, () => patch));
          await fh.write(block.subarray(0, Math.min(4096, size)), 0, Math.min(4096, size), off + Math.max(0, (size >> 1) - 2048));
          changed++;
        }
        off += size;
      }
    } finally {
      await fh.close();
    }
  }
  return changed;
}

/** The same chunk bytes over plain TCP to every peer at once; resolves when every sink answered. */
async function rawTcp(store: CheckpointService['store'], ids: string[], ports: number[]): Promise<void> {
  const socks = await Promise.all(
    ports.map(
      (port) =>
        new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(port, '127.0.0.1', () => resolve(s));
          s.on('error', reject);
        }),
    ),
  );
  const done = socks.map(
    (s) =>
      new Promise<void>((resolve, reject) => {
        s.on('data', () => resolve());
        s.on('error', reject);
        s.on('close', () => resolve());
      }),
  );
  const write = (s: net.Socket, b: Uint8Array): Promise<void> => (s.write(b) ? Promise.resolve() : new Promise((r) => s.once('drain', () => r())));
  let next = ids.length > 0 ? readFile(store.chunkPath(ids[0]!)) : undefined;
  for (let i = 0; i < ids.length; i++) {
    const data = await next!;
    next = i + 1 < ids.length ? readFile(store.chunkPath(ids[i + 1]!)) : undefined;
    const header = Buffer.alloc(4);
    header.writeUInt32BE(data.length, 0);
    await Promise.all(
      socks.map(async (s) => {
        s.write(header);
        await write(s, data);
      }),
    );
  }
  for (const s of socks) s.end(Buffer.alloc(4));
  await Promise.all(done);
  for (const s of socks) s.destroy();
}

const round1 = (x: number): number => Math.round(x * 10) / 10;
const round3 = (x: number): number => Math.round(x * 1000) / 1000;

export async function runReplicationBench(o: ReplicationBenchOptions, io: { progress(line: string): void }): Promise<Record<string, unknown>> {
  // the writer's side runs here: tuned as a daemon's process is (Daemon.start)
  tuneGarbageCollector();
  const root = mkdtempSync(join(o.dir ?? tmpdir(), 'fabric-bench-replication-'));
  const workers: Worker[] = [];
  const hosts: FabricHost[] = [];
  const services: CheckpointService[] = [];
  const cleanup = (): void => {
    for (const w of workers) w.child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  const onSignal = (): void => {
    cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // an uncaught exception ends the process without running `finally`: clean up on the way out
  process.once('exit', cleanup);
  const load0 = os.loadavg()[0]!;
  try {
    const swarmKey = newSwarmKey();
    const ck = join(root, 'checkpoint');
    mkdirSync(join(ck, 'meta'), { recursive: true });
    io.progress(`replication: writing a ${o.sizeMiB} MiB checkpoint in ${root}`);
    await writeRandomFile(join(ck, 'model.bin'), o.sizeMiB * MiB, 'replication bench');
    writeFileSync(join(ck, 'meta', 'trainer_state.json'), JSON.stringify({ step: 1000 }));

    io.progress(`replication: starting ${o.peers} replica processes (${o.transport} transport)`);
    for (let i = 0; i < o.peers; i++) workers.push(await startWorker(join(root, `peer-${i}`), swarmKey, o, io.progress));
    const hostOpts = { privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] };
    const host = await createHostVariant(hostOpts, o.transport);
    hosts.push(host);
    const dbg = stderrBenchLogger();
    host.addEventListener('connection:close', (evt) => dbg.debug({ peer: evt.detail.remotePeer.toString(), status: evt.detail.status }, 'connection closed'));
    host.addEventListener('connection:open', (evt) => dbg.debug({ peer: evt.detail.remotePeer.toString() }, 'connection opened'));
    const svc = new CheckpointService({
      host,
      dir: join(root, 'writer-store'),
      log: stderrBenchLogger(),
      reserveBytes: 0,
      streamsPerPeer: o.streams,
      windowBytes: o.windowMiB * MiB,
      ...(o.bulk ? { bulk: BENCH_BULK } : {}),
    });
    services.push(svc);
    await svc.start();
    for (const w of workers) await host.dial(w.addrs.map((a) => multiaddr(a)));
    const peerIds = workers.map((w) => w.peerId);

    // commit
    let t = performance.now();
    const c1 = await svc.commit(ck, { jobId: 'bench-job', step: 1000, epoch: 1 });
    const commitS = (performance.now() - t) / 1000;
    const ckMiB = c1.totalBytes / MiB;
    io.progress(`replication: committed ${ckMiB.toFixed(0)} MiB as ${c1.chunks} chunks in ${commitS.toFixed(2)} s`);
    const ids = [...manifestChunks(c1.manifest).keys()];

    /** CPU seconds of the writer and of every replica process while `fn` runs. */
    const cpuOf = async (fn: () => Promise<void>): Promise<{ writer: number; peers: number[] }> => {
      const w0 = process.cpuUsage();
      const p0 = await Promise.all(workers.map((w) => ask(w, { t: 'stats' }, 'stats')));
      await fn();
      const w1 = process.cpuUsage(w0);
      const p1 = await Promise.all(workers.map((w) => ask(w, { t: 'stats' }, 'stats')));
      return { writer: (w1.user + w1.system) / 1e6, peers: p1.map((p, i) => (p.cpuMs - p0[i]!.cpuMs) / 1000) };
    };
    let rawCpu: { writer: number; peers: number[] } | undefined;
    const rawRun = async (sink: RawSink): Promise<number> => {
      for (const w of workers) await ask(w, { t: 'raw', sink }, 'raw-ready');
      const t0 = performance.now();
      const cpu = await cpuOf(() => rawTcp(svc.store, ids, workers.map((w) => w.rawPort)));
      if (sink === 'memory') rawCpu ??= cpu;
      const mibs = ckMiB / ((performance.now() - t0) / 1000);
      io.progress(`replication: raw TCP (${sink} sink) to ${o.peers} peers: ${mibs.toFixed(0)} MiB/s`);
      return mibs;
    };
    const rawBefore = await rawRun('memory');
    const rawDisk = await rawRun('disk');
    for (const w of workers) await ask(w, { t: 'raw', sink: 'memory' }, 'raw-ready'); // frees the disk sink's files

    const cpu0 = process.cpuUsage();
    const peerCpu0 = await Promise.all(workers.map((w) => ask(w, { t: 'stats' }, 'stats')));
    let lastTenth = -1;
    t = performance.now();
    const rep = await svc.replicate(c1.manifestId, peerIds, {
      onProgress: (p) => {
        const tenth = Math.floor((10 * p.storedBytes) / Math.max(1, p.neededBytes));
        if (tenth !== lastTenth) {
          lastTenth = tenth;
          io.progress(`replication: ${tenth * 10}% stored (${(p.storedBytes / MiB).toFixed(0)} of ${(p.neededBytes / MiB).toFixed(0)} MiB over ${o.peers} peers)`);
        }
      },
    });
    const repS = (performance.now() - t) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const peerCpu1 = await Promise.all(workers.map((w) => ask(w, { t: 'stats' }, 'stats')));
    const failed = rep.peers.filter((p) => !p.ok);
    if (failed.length > 0) throw new Error(`replication failed: ${failed.map((p) => `${p.peerId}: ${p.error}`).join('; ')}`);
    const mibPerS = ckMiB / repS;
    io.progress(`replication: ${o.bulk ? "bulk channels" : "libp2p streams"} to ${o.peers} peers: ${mibPerS.toFixed(0)} MiB/s (${repS.toFixed(2)} s)`);

    const rawAfter = await rawRun('memory');
    const raw = (rawBefore + rawAfter) / 2;

    // incremental
    const changed = await changeChunks(c1.manifest, ck, o.changedPct);
    const c2 = await svc.commit(ck, { jobId: 'bench-job', step: 2000, epoch: 1 });
    t = performance.now();
    const rep2 = await svc.replicate(c2.manifestId, peerIds);
    const rep2S = (performance.now() - t) / 1000;
    const added = addedChunks(c1.manifest, c2.manifest);
    const sentPerPeer = rep2.peers.map((p) => p.sentBytes);
    const incFraction = Math.max(...sentPerPeer) / c2.totalBytes;
    io.progress(`replication: second checkpoint, ${changed} of ${c1.chunks} chunks changed: ${(incFraction * 100).toFixed(1)}% of the bytes sent per peer`);

    // restore from all peers into a fresh store on the writer's host
    const restorer = new CheckpointService({ host, dir: join(root, 'restore-store'), log: stderrBenchLogger(), ...(o.bulk ? { bulk: BENCH_BULK } : {}) });
    services.push(restorer);
    t = performance.now();
    const rs = await restorer.restore(c2.manifestId, peerIds, join(root, 'restored'));
    const restoreS = (performance.now() - t) / 1000;
    io.progress(`replication: restore from ${o.peers} peers: ${(ckMiB / restoreS).toFixed(0)} MiB/s`);
    const restoredOk = createHash('sha256').update(readFileSync(join(root, 'restored', 'model.bin'))).digest('hex') === createHash('sha256').update(readFileSync(join(ck, 'model.bin'))).digest('hex');

    const load1 = os.loadavg()[0]!;
    return {
      bench: 'replication',
      transport: o.transport,
      bulk: o.bulk,
      size_mib: round1(ckMiB),
      peers: o.peers,
      chunks: c1.chunks,
      streams_per_peer: o.streams,
      mib_per_s: round1(mibPerS),
      raw_tcp_mib_per_s: round1(raw),
      ratio: round3(mibPerS / raw),
      raw_tcp_runs_mib_per_s: [round1(rawBefore), round1(rawAfter)],
      raw_tcp_disk_mib_per_s: round1(rawDisk),
      ratio_vs_disk: round3(mibPerS / rawDisk),
      replicate_s: round3(repS),
      commit_mib_per_s: round1(ckMiB / commitS),
      incremental_changed_chunks: changed,
      incremental_changed_chunks_pct: round1((100 * changed) / c1.chunks),
      incremental_new_chunks: added.length,
      incremental_sent_bytes: Math.max(...sentPerPeer),
      incremental_sent_fraction: round3(incFraction),
      incremental_replicate_s: round3(rep2S),
      restore_mib_per_s: round1(ckMiB / restoreS),
      restore_bytes_per_holder: rs.fetch.perHolder,
      restore_verified: restoredOk,
      writer_cpu_s: round3((cpu.user + cpu.system) / 1e6),
      peer_cpu_s: peerCpu1.map((p, i) => round3((p.cpuMs - peerCpu0[i]!.cpuMs) / 1000)),
      raw_tcp_writer_cpu_s: round3(rawCpu?.writer ?? 0),
      raw_tcp_peer_cpu_s: (rawCpu?.peers ?? []).map(round3),
      // CPU seconds all processes spent per GiB: unlike MiB/s, hardly moved by other load on the machine
      cpu_s_per_gib: round3((((cpu.user + cpu.system) / 1e6 + peerCpu1.reduce((a, p, i) => a + (p.cpuMs - peerCpu0[i]!.cpuMs) / 1000, 0)) * 1024) / ckMiB),
      raw_tcp_cpu_s_per_gib: round3((((rawCpu?.writer ?? 0) + (rawCpu?.peers ?? []).reduce((a, b) => a + b, 0)) * 1024) / ckMiB),
      peer_rss_mib: peerCpu1.map((p) => round1(p.rssMiB)),
      cpu_cores: os.cpus().length,
      load_avg_1m: [round1(load0), round1(load1)],
      node: process.version,
      targets: REPLICATION_TARGETS,
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', cleanup);
    for (const w of workers) {
      try {
        w.child.send({ t: 'stop' } satisfies ToWorker);
      } catch {
        // already gone
      }
    }
    for (const s of services) await s.stop().catch(() => {});
    for (const h of hosts) {
      try {
        await h.stop();
      } catch {
        // stopping is best effort here
      }
    }
    await new Promise((r) => setTimeout(r, 300));
    cleanup();
  }
}

export function replicationTable(f: Record<string, unknown>): string {
  const rows: [string, unknown][] = [
    ['checkpoint', `${String(f['size_mib'])} MiB, ${String(f['chunks'])} chunks, ${String(f['peers'])} peers, ${String(f['transport'])} transport`],
    ['libp2p replication', `${String(f['mib_per_s'])} MiB/s`],
    ['raw TCP (same bytes)', `${String(f['raw_tcp_mib_per_s'])} MiB/s (runs ${JSON.stringify(f['raw_tcp_runs_mib_per_s'])})`],
    ['ratio', `${String(f['ratio'])} (target >= ${REPLICATION_TARGETS.ratio})`],
    ['raw TCP, durable sink', `${String(f['raw_tcp_disk_mib_per_s'])} MiB/s (ratio ${String(f['ratio_vs_disk'])})`],
    ['incremental', `${String(f['incremental_changed_chunks_pct'])}% chunks changed → ${(Number(f['incremental_sent_fraction']) * 100).toFixed(1)}% of bytes sent (target <= 15%)`],
    ['commit', `${String(f['commit_mib_per_s'])} MiB/s`],
    ['restore', `${String(f['restore_mib_per_s'])} MiB/s from ${String(f['peers'])} holders`],
    ['cpu (s)', `writer ${String(f['writer_cpu_s'])}, peers ${JSON.stringify(f['peer_cpu_s'])} on ${String(f['cpu_cores'])} cores, load ${JSON.stringify(f['load_avg_1m'])}`],
    ['cpu s per GiB', `libp2p ${String(f['cpu_s_per_gib'])}, raw TCP ${String(f['raw_tcp_cpu_s_per_gib'])}`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${String(v)}`).join('\n');
}
