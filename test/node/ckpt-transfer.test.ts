/**
 * `/fabric/ckpt/1` between real libp2p hosts (host.ts: TCP, fabric-psk swarm key, Noise, yamux)
 * on loopback, each with its own chunk store, in one process.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { Libp2p, Stream } from '@libp2p/interface';
import { lpStream } from '@libp2p/utils';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addedChunks, manifestChunks, type ChunkingParams, type Manifest } from '../../src/checkpoint/index.ts';
import { CheckpointService } from '../../src/node/checkpoints.ts';
import { CKPT_PROTOCOL, type ReplicateProgress } from '../../src/node/ckpt-transfer.ts';
import { createHost, type FabricHost } from '../../src/node/host.ts';
import { newSwarmKey } from '../../src/node/identity.ts';
import { decodeFrame, encodeFrame } from '../../src/node/wire.ts';
import { pseudoRandomBytes, sha256 } from '../checkpoint/util.ts';
import { z } from 'zod';
import { recordingLogger, type LogLine } from '../support/logger.ts';


/** 64 KiB chunks: a few MiB make dozens of chunks, so "10% changed" is meaningful. */
const CHUNKING: ChunkingParams = { minSize: 32 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 };

interface Peer {
  name: string;
  host: FabricHost;
  svc: CheckpointService;
  logs: LogLine[];
  id: string;
}

const swarmKey = newSwarmKey();
const root = mkdtempSync(join(tmpdir(), 'fabric-ckpt-transfer-'));
const peers: Peer[] = [];
const extraHosts: Libp2p[] = [];
let refuseFrom: string | undefined;

/** Peers move chunk data over bulk channels on loopback, as daemons do by default. */
const BULK = { host: '127.0.0.1', port: 0 };

async function startPeer(name: string, extra: { inboundBufferBytes?: number; bulk?: { host: string; port: number } | 'off' } = {}): Promise<Peer> {
  const { bulk = BULK, ...rest } = extra;
  const host = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
  const logs: LogLine[] = [];
  const svc = new CheckpointService({
    host,
    dir: join(root, name),
    log: recordingLogger(logs),
    chunking: CHUNKING,
    reserveBytes: 0,
    admitOffer: (peer) => (peer === refuseFrom ? `epoch of ${peer} is stale` : undefined),
    ...(bulk !== 'off' ? { bulk } : {}),
    ...rest,
  });
  await svc.start();
  const p = { name, host, svc, logs, id: host.peerId.toString() };
  peers.push(p);
  return p;
}

async function introduceAll(): Promise<void> {
  const hosts: Libp2p[] = [...peers.map((p) => p.host), ...extraHosts];
  for (const a of hosts) for (const b of hosts) if (a !== b) await a.peerStore.patch(b.peerId, { multiaddrs: b.getMultiaddrs() });
}

let writer: Peer;
let r1: Peer;
let r2: Peer;
let r3: Peer;

beforeAll(async () => {
  writer = await startPeer('writer');
  r1 = await startPeer('r1');
  r2 = await startPeer('r2');
  r3 = await startPeer('r3');
  await introduceAll();
});

afterAll(async () => {
  for (const p of peers) {
    await p.svc.stop();
    await p.host.stop();
  }
  for (const h of extraHosts) await h.stop();
  rmSync(root, { recursive: true, force: true });
});

const ckDir = join(root, 'job-ckpt');
let base: Buffer;
let changedModel: Buffer;
/** Compares big buffers by hash: a deep equality over millions of elements takes seconds. */
const digest = (b: Uint8Array): string => sha256(b);

function writeCheckpoint(model: Uint8Array, step: number): void {
  mkdirSync(join(ckDir, 'opt'), { recursive: true });
  writeFileSync(join(ckDir, 'model.bin'), model);
  writeFileSync(join(ckDir, 'opt', 'state.json'), JSON.stringify({ step }));
}

/** Overwrites 4 KiB in the middle of `fraction` of the chunks of `m`'s model file (every k-th chunk). */
function changeChunks(m: Manifest, model: Buffer, fraction: number, seed: string): Buffer {
  const file = m.entries.find((e) => e.path === 'model.bin');
  if (file?.type !== 'file') throw new Error('no model.bin');
  const out = Buffer.from(model);
  const every = Math.round(1 / fraction);
  let off = 0;
  file.chunks.forEach(([, size], i) => {
    if (i % every === every - 1) out.set(pseudoRandomBytes(4096, `${seed}-${i}`), off + (size >> 1) - 2048);
    off += size;
  });
  return out;
}

let first: Awaited<ReturnType<CheckpointService['commit']>>;
let second: Awaited<ReturnType<CheckpointService['commit']>>;

describe('checkpoint replication over /fabric/ckpt/1', () => {
  it('replicates a checkpoint to two peers: both hold the manifest and every chunk, progress reaches the total', async () => {
    base = Buffer.from(pseudoRandomBytes(6 * 1024 * 1024, 'base-model'));
    writeCheckpoint(base, 100);
    first = await writer.svc.commit(ckDir, { jobId: 'job-1', step: 100, epoch: 1 });
    expect(first.chunks).toBeGreaterThan(40);

    const progress: ReplicateProgress[] = [];
    const before = writer.svc.transfer.dataChannels();
    const r = await writer.svc.replicate(first.manifestId, [r1.id, r2.id], { onProgress: (p) => progress.push(p) });
    expect(r.holders.sort()).toEqual([r1.id, r2.id].sort());
    // the chunks went over bulk channels (two push streams per peer), none over libp2p
    const after = writer.svc.transfer.dataChannels();
    expect(after.bulk - before.bulk).toBe(4);
    expect(after.libp2p).toBe(before.libp2p);
    const total = r.checkpointBytes;
    for (const p of r.peers) {
      expect(p).toMatchObject({ ok: true, neededBytes: total, sentBytes: total, storedBytes: total, heldBytes: 0 });
    }
    expect(progress.at(-1)).toMatchObject({ neededBytes: 2 * total, storedBytes: 2 * total });
    for (const p of [r1, r2]) {
      expect(p.svc.store.hasManifest(first.manifestId)).toBe(true);
      expect(p.svc.store.missing(first.manifest)).toEqual([]);
      expect((await p.svc.store.scrub(first.manifest)).corrupt).toEqual([]);
    }
  });

  it('sends nothing again to a peer that already holds the checkpoint', async () => {
    const r = await writer.svc.replicate(first.manifestId, [r1.id]);
    expect(r.peers[0]).toMatchObject({ ok: true, neededBytes: 0, sentBytes: 0, sentChunks: 0 });
  });

  it('a second checkpoint with 10% of its chunks changed sends only the changed chunks', async () => {
    changedModel = changeChunks(first.manifest, base, 0.1, 'step-200');
    writeCheckpoint(changedModel, 200);
    second = await writer.svc.commit(ckDir, { jobId: 'job-1', step: 200, epoch: 1 });
    const added = addedChunks(first.manifest, second.manifest);
    const addedBytes = added.reduce((a, [, s]) => a + s, 0);
    const total = [...manifestChunks(second.manifest).values()].reduce((a, s) => a + s, 0);
    // content-defined cuts: changes in the middle of chunks touch those chunks (the json file too)
    expect(added.length).toBeGreaterThanOrEqual(Math.floor(first.chunks / 10));
    expect(addedBytes / total).toBeLessThan(0.15);

    const r = await writer.svc.replicate(second.manifestId, [r1.id, r2.id]);
    for (const p of r.peers) {
      expect(p.ok).toBe(true);
      expect(p.sentBytes).toBe(addedBytes);
      expect(p.sentChunks).toBe(added.length);
      expect(p.heldBytes).toBe(total - addedBytes);
    }
  });

  it('restores on a new host from several holders in parallel, byte for byte', async () => {
    const out = join(root, 'restore-r3');
    const before = r3.svc.transfer.dataChannels();
    const r = await r3.svc.restore(second.manifestId, [r1.id, r2.id], out);
    // fetch batches over bulk channels, one per holder at least
    expect(r3.svc.transfer.dataChannels().bulk - before.bulk).toBeGreaterThanOrEqual(2);
    expect(r3.svc.transfer.dataChannels().libp2p).toBe(before.libp2p);
    expect(Object.keys(r.fetch.perHolder).sort()).toEqual([r1.id, r2.id].sort());
    for (const bytes of Object.values(r.fetch.perHolder)) expect(bytes).toBeGreaterThan(r.fetch.fetchedBytes / 4);
    expect(digest(readFileSync(join(out, 'model.bin')))).toBe(digest(changedModel));
    expect(JSON.parse(readFileSync(join(out, 'opt', 'state.json'), 'utf8'))).toEqual({ step: 200 });
  });

  it('fetches a chunk that is corrupt at one holder from another, and the bad copy is quarantined there', async () => {
    const ids = [...manifestChunks(first.manifest).keys()];
    // corrupt every chunk at r1: whatever the plan gives r1 must come from r2
    for (const cid of ids.slice(0, 12)) {
      const path = r1.svc.store.chunkPath(cid);
      const data = readFileSync(path);
      data[7]! ^= 0x5a;
      writeFileSync(path, data);
    }
    const fresh = await startPeer('fresh');
    await introduceAll();
    const out = join(root, 'restore-fresh');
    const r = await fresh.svc.restore(first.manifestId, [r1.id, r2.id], out);
    expect(digest(readFileSync(join(out, 'model.bin')))).toBe(digest(base));
    const corruptAtR1 = r.fetch.failures.filter((f) => f.peerId === r1.id && f.reason === 'corrupt').map((f) => f.chunkId);
    expect(corruptAtR1.length).toBeGreaterThan(0);
    for (const cid of corruptAtR1) expect(r1.svc.store.has(cid)).toBe(false);
    expect(r1.logs.some((l) => l.level === 'warn' && l.msg === 'corrupt chunk quarantined')).toBe(true);
  });

  it('heals a holder\'s corrupt copy from another holder', async () => {
    const victim = [...manifestChunks(first.manifest).keys()][20]!;
    const path = r2.svc.store.chunkPath(victim);
    const data = readFileSync(path);
    data[0]! ^= 1;
    writeFileSync(path, data);
    const h = await r2.svc.heal(first.manifestId, [writer.id]);
    expect(h.corrupt).toEqual([victim]);
    expect(h.fetch.fetchedChunks).toBe(1);
    expect(r2.svc.store.missing(first.manifest)).toEqual([]);
    expect((await r2.svc.store.scrub(first.manifest)).corrupt).toEqual([]);
  });

  it('reports a peer that refuses the offer (stale epoch) as failed, and still serves the others', async () => {
    refuseFrom = writer.id;
    try {
      const r = await writer.svc.replicate(second.manifestId, [r3.id, peers.find((p) => p.name === 'fresh')!.id]);
      const byPeer = new Map(r.peers.map((p) => [p.peerId, p]));
      expect(byPeer.get(r3.id)!.ok).toBe(false);
      expect(byPeer.get(r3.id)!.error).toMatch(/epoch of .* is stale/);
      expect(r.holders).toEqual([]);
    } finally {
      refuseFrom = undefined;
    }
  });

  it('chooses holders in other zones and replicates to them in one call (checkpoint)', async () => {
    writeCheckpoint(base, 300);
    const out = await writer.svc.checkpoint({
      dir: ckDir,
      jobId: 'job-1',
      step: 300,
      epoch: 1,
      writer: { peerId: writer.id, zone: 'eu-1' },
      candidates: [
        { peerId: r1.id, zone: 'eu-1' },
        { peerId: r2.id, zone: 'us-1' },
        { peerId: r3.id, zone: 'ap-1' },
      ],
      replicas: 2,
    });
    expect(out.replicated).toBe(true);
    // r2 and r1 hold most of it already, but r1 shares the writer's zone: us-1, then ap-1
    expect(out.choice.holders).toEqual([r2.id, r3.id]);
    expect(out.holders).toEqual([writer.id, r2.id, r3.id]);
    expect(out.sizeBytes).toBe(out.commit.totalBytes);
  });

  it('gc keeps only what kept manifests use', async () => {
    const before = r2.svc.store.stats();
    const r = await r2.svc.store.gc([second.manifestId]);
    expect(r.deletedManifests).toBeGreaterThanOrEqual(1);
    expect(r2.svc.store.missing(second.manifest)).toEqual([]);
    expect(r2.svc.store.stats().chunks).toBe(before.chunks - r.deletedChunks);
    expect(r2.svc.store.hasManifest(first.manifestId)).toBe(false);
  });
});

describe('bulk channels for chunk data', () => {
  it('falls back to libp2p streams when the peer\'s bulk port cannot be reached, and does not retry it at once', async () => {
    // its listener is on 127.0.0.2: the writer reaches it over libp2p at 127.0.0.1, where that port is closed
    const unreachable = await startPeer('bulk-unreachable', { bulk: { host: '127.0.0.2', port: 0 } });
    const off = await startPeer('bulk-off', { bulk: 'off' });
    await introduceAll();
    const before = writer.svc.transfer.dataChannels();
    const r = await writer.svc.replicate(first.manifestId, [unreachable.id, off.id]);
    expect(r.holders.sort()).toEqual([unreachable.id, off.id].sort());
    for (const p of [unreachable, off]) expect(p.svc.store.missing(first.manifest)).toEqual([]);
    const after = writer.svc.transfer.dataChannels();
    expect(after.bulk).toBe(before.bulk);
    expect(after.libp2p - before.libp2p).toBe(4);
    const why = writer.logs.filter((l) => l.msg === 'no bulk channel to peer: using libp2p streams for a while');
    expect(why.find((l) => l.fields.peer === off.id)?.fields.err).toMatch(/bulk channels are off/);
    expect(why.find((l) => l.fields.peer === unreachable.id)?.fields.err).toMatch(/ECONNREFUSED/);
    // a peer that failed is not asked again for a while: the next checkpoint goes straight to libp2p
    const asked = why.length;
    const again = await writer.svc.replicate(second.manifestId, [unreachable.id]);
    expect(again.holders).toEqual([unreachable.id]);
    expect(writer.logs.filter((l) => l.msg === 'no bulk channel to peer: using libp2p streams for a while')).toHaveLength(asked);
    expect(writer.svc.transfer.dataChannels().bulk).toBe(before.bulk);
  });
});

describe('a hostile peer on /fabric/ckpt/1', () => {
  let intruder: Libp2p;
  // r2 holds the second checkpoint whole (r1 lost chunks to the corruption test)
  const target = (): Peer => r2;

  beforeAll(async () => {
    intruder = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
    extraHosts.push(intruder);
    await introduceAll();
  });

  /** Sends `frames` on a fresh stream (a Uint8Array is framed, `{ raw }` goes as is) and waits until the server ends it; returns what it answered. */
  async function sendRaw(frames: (Uint8Array | { raw: Uint8Array })[]): Promise<unknown[]> {
    const stream: Stream = await intruder.dialProtocol(target().host.peerId, CKPT_PROTOCOL, { signal: AbortSignal.timeout(5_000) });
    const replies: unknown[] = [];
    const closed = new Promise<void>((resolve) => stream.addEventListener('close', () => resolve(), { once: true }));
    const lp = lpStream(stream, { maxDataLength: 1 << 20 });
    const reading = (async () => {
      try {
        for (;;) replies.push(decodeFrame((await lp.read()).subarray(), z.unknown(), 'reply'));
      } catch {
        // the server ended the stream
      }
    })();
    for (const f of frames) {
      if (f instanceof Uint8Array) await lp.write(f);
      else stream.send(f.raw);
    }
    await Promise.race([closed, reading]);
    stream.abort(new Error('test done'));
    return replies;
  }

  const warned = (re: RegExp): boolean => target().logs.some((l) => l.level === 'warn' && re.test(String(l.fields['err'])));

  it('ends the stream on bytes that are not msgpack, a frame failing the schema, or an oversized frame', async () => {
    await sendRaw([new Uint8Array([0xc1, 0xff, 0x00, 0x13])]);
    expect(warned(/not msgpack/)).toBe(true);
    await sendRaw([encodeFrame({ t: 'have', ids: ['not-a-chunk-id'] })]);
    expect(warned(/ids\.0/)).toBe(true);
    await sendRaw([encodeFrame({ t: 'format-disk' })]);
    // a length prefix announcing 100 MiB: refused before anything is buffered
    await sendRaw([{ raw: new Uint8Array([0x80, 0x80, 0x80, 0x32, 1, 2, 3]) }]);
    expect(warned(/over the .*-byte limit/)).toBe(true);
  });

  it('refuses pushes for an unknown manifest, chunks not in the manifest, and bytes that do not match their id', async () => {
    const stats = target().svc.store.stats();
    const unknown = await sendRaw([encodeFrame({ t: 'push', manifestId: sha256('no such manifest') })]);
    expect(unknown).toEqual([expect.objectContaining({ t: 'refused' })]);

    const junk = pseudoRandomBytes(1000, 'junk');
    await sendRaw([encodeFrame({ t: 'push', manifestId: second.manifestId }), encodeFrame({ t: 'chunk', id: sha256(junk), size: junk.length }), { raw: junk }]);
    expect(warned(/not in manifest/)).toBe(true);

    const [realId, realSize] = [...manifestChunks(second.manifest)][0]!;
    const forged = pseudoRandomBytes(realSize, 'forged');
    await sendRaw([encodeFrame({ t: 'push', manifestId: second.manifestId }), encodeFrame({ t: 'chunk', id: realId, size: realSize }), { raw: forged }]);
    expect(warned(/do not match id/)).toBe(true);
    await sendRaw([encodeFrame({ t: 'push', manifestId: second.manifestId }), encodeFrame({ t: 'chunk', id: realId, size: realSize - 1 }), { raw: forged.subarray(1) }]);
    expect(warned(/the manifest says/)).toBe(true);

    const offer = await sendRaw([encodeFrame({ t: 'offer', manifest: new TextEncoder().encode('{"format":"x"}') })]);
    expect(offer).toEqual([]);
    expect(warned(/offered manifest/)).toBe(true);
    expect(target().svc.store.stats()).toEqual(stats);
  });

  it('aborts a stream that would make the holder buffer more than its inbound budget', async () => {
    const small = await startPeer('small-budget', { inboundBufferBytes: 8 * 1024 * 1024 });
    await introduceAll();
    const stream: Stream = await intruder.dialProtocol(small.host.peerId, CKPT_PROTOCOL, { signal: AbortSignal.timeout(5_000) });
    const closed = new Promise<void>((resolve) => stream.addEventListener('close', () => resolve(), { once: true }));
    // announces a 16 MiB request (within the frame limit), then sends 10 MiB of it
    stream.send(new Uint8Array([0x80, 0x80, 0x80, 0x08]));
    for (let i = 0; i < 10; i++) stream.send(new Uint8Array(1024 * 1024));
    await closed;
    expect(small.logs.some((l) => l.level === 'warn' && /inbound checkpoint buffers are full/.test(String(l.fields['err'])))).toBe(true);
    // and it still answers
    expect(await writer.svc.transfer.check(small.id, second.manifestId)).toEqual({ hasManifest: false, missing: 0 });
  });

  it('answers done to a pusher that waits for every acknowledgement before it ends', async () => {
    // Regression: the server's writer had gone idle when `end` came, and the end of the push spun forever.
    const stream: Stream = await intruder.dialProtocol(target().host.peerId, CKPT_PROTOCOL, { signal: AbortSignal.timeout(5_000) });
    const lp = lpStream(stream, { maxDataLength: 1 << 20 });
    const [cid, size] = [...manifestChunks(second.manifest)][1]!;
    const data = await target().svc.store.get(cid);
    await lp.write(encodeFrame({ t: 'push', manifestId: second.manifestId }));
    await lp.write(encodeFrame({ t: 'chunk', id: cid, size }));
    stream.send(data);
    expect(decodeFrame((await lp.read()).subarray(), z.unknown(), 'ack')).toEqual({ t: 'stored', ids: [cid] });
    await lp.write(encodeFrame({ t: 'end' }));
    expect(decodeFrame((await lp.read()).subarray(), z.unknown(), 'done')).toEqual({ t: 'done', stored: 1 });
    await stream.close().catch(() => {});
  });

  it('keeps serving after all that', async () => {
    const ids = [...manifestChunks(second.manifest).keys()];
    const answer = await writer.svc.transfer.have(target().id, ids);
    expect(answer.has.every(Boolean)).toBe(true);
    expect(await writer.svc.transfer.check(target().id, second.manifestId)).toEqual({ hasManifest: true, missing: 0 });
  });

  it('falls back to another holder when one sends bytes that do not match the chunk id', async () => {
    // A holder that claims everything and answers every fetch with wrong bytes.
    const liar = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
    extraHosts.push(liar);
    await liar.handle(CKPT_PROTOCOL, async (stream) => {
      const lp = lpStream(stream, { maxDataLength: 64 << 20 });
      const req = decodeFrame((await lp.read()).subarray(), z.object({ t: z.string(), ids: z.array(z.string()).optional() }), 'req');
      if (req.t === 'have') {
        await lp.write(encodeFrame({ t: 'have', bits: new Uint8Array(Math.ceil((req.ids ?? []).length / 8)).fill(0xff), freeBytes: null }));
      } else if (req.t === 'fetch') {
        for (const cid of req.ids ?? []) {
          await lp.write(encodeFrame({ t: 'chunk', id: cid, size: 1000 }));
          stream.send(new Uint8Array(1000));
        }
        await lp.write(encodeFrame({ t: 'end' }));
      }
      await stream.close().catch(() => {});
    });
    await introduceAll();
    const late = await startPeer('late');
    await introduceAll();
    const out = join(root, 'restore-late');
    const r = await late.svc.restore(second.manifestId, [liar.peerId.toString(), r2.id], out);
    expect(digest(readFileSync(join(out, 'model.bin')))).toBe(digest(changedModel));
    const lies = r.fetch.failures.filter((f) => f.peerId === liar.peerId.toString());
    expect(lies.length).toBeGreaterThan(0);
    expect(lies.every((f) => /do not match|which was not asked|has \d+ bytes/.test(f.reason))).toBe(true);
    expect(r.fetch.perHolder[liar.peerId.toString()]).toBeUndefined();
  });
});
