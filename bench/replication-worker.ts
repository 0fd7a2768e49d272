/**
 * A replica peer of the replication benchmark, in its own process: a libp2p host with a
 * checkpoint service (its own chunk store), and a raw TCP sink (node:net) for the reference
 * transfer of the same bytes. Driven by its parent over IPC; see replication.ts.
 *
 * Raw TCP framing: [u32 BE length][bytes] per chunk, a zero length ends the transfer; the sink
 * answers one byte once it has everything (and, in `disk` mode, once it is durable: each chunk
 * written to its own file, fsynced in batches and renamed, as the chunk store does).
 */
import { stderrBenchLogger } from './log.ts';
import { mkdirSync, rmSync } from 'node:fs';
import { open, rename, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { CheckpointService } from '../src/node/checkpoints.ts';
import { tuneGarbageCollector } from '../src/node/system.ts';
import type { FabricHost } from '../src/node/host.ts';
import { createHostVariant, type HostVariant } from '../src/node/host-variants.ts';

export type RawSink = 'memory' | 'disk';

export type ToWorker =
  | { t: 'init'; dir: string; swarmKey: number[]; transport: HostVariant; streams: number; windowMiB: number; bulk: boolean }
  | { t: 'raw'; sink: RawSink }
  | { t: 'stats' }
  | { t: 'stop' };

export type FromWorker =
  | { t: 'ready'; peerId: string; addrs: string[]; rawPort: number }
  | { t: 'raw-ready' }
  | { t: 'stats'; cpuMs: number; rssMiB: number; chunks: number; chunkBytes: number }
  | { t: 'error'; message: string };

const send = (m: FromWorker): void => void process.send?.(m);

let host: FabricHost | undefined;
let svc: CheckpointService | undefined;
let server: net.Server | undefined;
let rawSink: RawSink = 'memory';
let rawBase = '';
let rawDir = '';
let rawRuns = 0;
let rawSeq = 0;

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Bytes received and not yet taken; copies only to assemble a piece that spans reads. */
class Pieces {
  #parts: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    this.#parts.push(b);
    this.length += b.length;
  }

  /** Removes the next `n` bytes; returns them when `keep`, else just drops them. */
  take(n: number, keep: boolean): Buffer | undefined {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const p = this.#parts[0]!;
      if (p.length <= left) {
        if (keep) out.push(p);
        this.#parts.shift();
        left -= p.length;
      } else {
        if (keep) out.push(p.subarray(0, left));
        this.#parts[0] = p.subarray(left);
        left = 0;
      }
    }
    this.length -= n;
    if (!keep) return undefined;
    return out.length === 1 ? out[0] : Buffer.concat(out, n);
  }
}

/** One raw TCP transfer: frames in, bytes counted (memory) or stored durably (disk), one byte back at the end. */
function handleRaw(sock: net.Socket): void {
  const pieces = new Pieces();
  let want = -1; // -1: reading a length header
  let pendingWrites: Promise<void>[] = [];
  let batch: { tmp: string; final: string }[] = [];
  let batchBytes = 0;
  let ended = false;
  let flushing: Promise<void> = Promise.resolve();
  const flushBatch = async (items: { tmp: string; final: string }[], writes: Promise<void>[]): Promise<void> => {
    await Promise.all(writes);
    for (const it of items) await rename(it.tmp, it.final);
    await fsyncDir(rawDir);
  };
  const cutBatch = (): void => {
    const items = batch;
    const writes = pendingWrites;
    batch = [];
    pendingWrites = [];
    batchBytes = 0;
    if (items.length > 0) flushing = flushing.then(() => flushBatch(items, writes));
  };
  sock.on('data', (d: Buffer) => {
    pieces.push(d);
    for (;;) {
      if (want < 0) {
        if (pieces.length < 4) return;
        want = pieces.take(4, true)!.readUInt32BE(0);
        if (want === 0) {
          ended = true;
          cutBatch();
          void flushing.then(
            () => sock.end(Buffer.from('k')),
            (err: unknown) => sock.destroy(err instanceof Error ? err : new Error(String(err))),
          );
          return;
        }
      }
      if (pieces.length < want) return;
      const chunk = pieces.take(want, rawSink === 'disk');
      const len = want;
      want = -1;
      if (chunk !== undefined) {
        const n = ++rawSeq;
        const tmp = join(rawDir, `.t${n}`);
        pendingWrites.push(writeFile(tmp, chunk, { flush: true }));
        batch.push({ tmp, final: join(rawDir, `c${n}`) });
        batchBytes += len;
        if (batchBytes >= 32 * 1024 * 1024) cutBatch();
      }
    }
  });
  sock.on('error', () => {});
  sock.on('end', () => {
    if (!ended) sock.destroy();
  });
}

async function init(m: Extract<ToWorker, { t: 'init' }>): Promise<void> {
  const swarmKey = Uint8Array.from(m.swarmKey);
  const opts = { privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] };
  host = await createHostVariant(opts, m.transport);
  const log = stderrBenchLogger(`replica ${process.pid} `);
  host.addEventListener('connection:close', (evt) => log.debug({ peer: evt.detail.remotePeer.toString(), status: evt.detail.status }, 'connection closed'));
  svc = new CheckpointService({
    host,
    dir: join(m.dir, 'store'),
    log,
    reserveBytes: 0,
    streamsPerPeer: m.streams,
    windowBytes: m.windowMiB * 1024 * 1024,
    // bulk channels on loopback, any free port (as the writer's)
    ...(m.bulk ? { bulk: { host: '127.0.0.1', port: 0 } } : {}),
  });
  await svc.start();
  rawBase = m.dir;
  rawDir = join(rawBase, 'raw-0');
  mkdirSync(rawDir, { recursive: true });
  server = net.createServer(handleRaw);
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const rawPort = typeof address === 'object' && address !== null ? address.port : 0;
  send({ t: 'ready', peerId: host.peerId.toString(), addrs: host.getMultiaddrs().map(String), rawPort });
}

// as a daemon's process does (Daemon.start)
tuneGarbageCollector();
process.on('message', (m: ToWorker) => {
  void (async () => {
    try {
      switch (m.t) {
        case 'init':
          await init(m);
          return;
        case 'raw':
          rawSink = m.sink;
          // a fresh sink directory per raw run; the last one's files go (best effort)
          try {
            rmSync(rawDir, { recursive: true, force: true, maxRetries: 3 });
          } catch {
            // removed with the whole temp directory at the end
          }
          rawDir = join(rawBase, `raw-${++rawRuns}`);
          mkdirSync(rawDir, { recursive: true });
          send({ t: 'raw-ready' });
          return;
        case 'stats': {
          const cpu = process.cpuUsage();
          const st = svc?.stats();
          send({ t: 'stats', cpuMs: (cpu.user + cpu.system) / 1000, rssMiB: process.memoryUsage().rss / 1048576, chunks: st?.chunks ?? 0, chunkBytes: st?.chunkBytes ?? 0 });
          return;
        }
        case 'stop':
          server?.close();
          await svc?.stop();
          await host?.stop();
          process.exit(0);
      }
    } catch (err) {
      send({ t: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  })();
});

process.on('uncaughtException', (err) => {
  process.stderr.write(`replica ${process.pid}: uncaught ${err.stack ?? err.message}\n`);
  send({ t: 'error', message: `uncaught: ${err.message}` });
  process.exit(1);
});
process.on('unhandledRejection', (err) => {
  process.stderr.write(`replica ${process.pid}: unhandled rejection ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
});
process.on('disconnect', () => process.exit(0));
