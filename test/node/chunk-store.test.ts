/** The chunk store on a real disk, and checkpoint directories in and out of it. */
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeManifest, encodeManifest, manifestChunks, type ChunkingParams } from '../../src/checkpoint/index.ts';
import { isFabricError, silentLogger } from '../../src/core/index.ts';
import { ChunkStore } from '../../src/node/chunk-store.ts';
import { commitDirectory, materializeCheckpoint } from '../../src/node/ckpt-files.ts';
import { pseudoRandomBytes, sha256 } from '../checkpoint/util.ts';

const root = mkdtempSync(join(tmpdir(), 'fabric-chunk-store-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = (): string => join(root, `case-${++n}`);

/** Small chunks so that a few hundred KiB make many of them. */
const SMALL: ChunkingParams = { minSize: 4 * 1024, avgSize: 16 * 1024, maxSize: 64 * 1024 };

async function expectCode(p: Promise<unknown>, code: string): Promise<unknown> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(isFabricError(err), `expected a FabricError ${code}, got ${String(err)}`).toBe(true);
  expect((err as { code: string }).code).toBe(code);
  return err;
}

/** Overwrites a few bytes in the middle of a file in place. */
function flipBytes(path: string): void {
  const data = readFileSync(path);
  data[data.length >> 1]! ^= 0xff;
  writeFileSync(path, data);
}

describe('ChunkStore', () => {
  it('stores chunks under their hash, durably, and reads them back verified', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const a = pseudoRandomBytes(1000, 'a');
    const b = pseudoRandomBytes(2000, 'b');
    expect(await store.putMany([{ id: sha256(a), data: a }, { id: sha256(b), data: b }, { id: sha256(a), data: a }])).toBe(2);
    expect(await store.put(sha256(a), a)).toBe(false);
    expect(store.has(sha256(a))).toBe(true);
    expect(new Uint8Array(await store.get(sha256(b)))).toEqual(b);
    expect(store.stats()).toMatchObject({ chunks: 2, chunkBytes: 3000 });
    expect(existsSync(store.chunkPath(sha256(a)))).toBe(true);
    expect(store.chunkPath(sha256(a))).toContain(`/chunks/${sha256(a).slice(0, 2)}/`);
    // nothing left behind in tmp/
    expect(readdirSync(join(store.dir, 'tmp'))).toEqual([]);
  });

  it('refuses bytes that do not match the id, and ids that are not ids', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    await expectCode(store.put(sha256('x'), new Uint8Array([1, 2, 3])), 'BAD_INPUT');
    await expectCode(store.put('../../etc/passwd', new Uint8Array([1])), 'BAD_INPUT');
    expect(store.stats().chunks).toBe(0);
    await expectCode(store.get(sha256('absent')), 'NOT_FOUND');
  });

  it('detects a chunk corrupted on disk: reported, quarantined, never returned; a good copy heals it', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const data = pseudoRandomBytes(5000, 'victim');
    const cid = sha256(data);
    await store.put(cid, data);
    flipBytes(store.chunkPath(cid));
    expect(await store.read(cid)).toEqual({ ok: false, reason: 'corrupt' });
    const err = await expectCode(store.get(cid), 'NOT_FOUND');
    expect((err as { details: { chunkId: string } }).details.chunkId).toBe(cid);
    expect(store.has(cid)).toBe(false);
    expect(store.stats().quarantined).toBe(1);
    expect(readdirSync(join(store.dir, 'quarantine'))[0]).toMatch(new RegExp(`^${cid}\\.`));
    // heal with the right bytes
    expect(await store.put(cid, data)).toBe(true);
    expect(new Uint8Array(await store.get(cid))).toEqual(data);
  });

  it('reports a corrupt chunk as CORRUPT_STORAGE on the read that finds it', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const data = pseudoRandomBytes(3000, 'c2');
    await store.put(sha256(data), data);
    flipBytes(store.chunkPath(sha256(data)));
    await expectCode(store.get(sha256(data)), 'CORRUPT_STORAGE');
  });

  it('rebuilds its index at open and empties tmp/', async () => {
    const dir = fresh();
    const s1 = ChunkStore.open(dir, silentLogger);
    const data = pseudoRandomBytes(4096, 'persist');
    await s1.put(sha256(data), data);
    writeFileSync(join(dir, 'tmp', 'leftover'), 'half a chunk');
    writeFileSync(join(dir, 'chunks', 'zz-not-a-chunk'), 'ignored');
    const s2 = ChunkStore.open(dir, silentLogger);
    expect(s2.has(sha256(data))).toBe(true);
    expect(s2.stats()).toMatchObject({ chunks: 1, chunkBytes: 4096 });
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
  });

  it('stores manifests by id, verified on read, and quarantines a corrupt one', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const ck = join(fresh(), 'ck');
    mkdirSync(ck, { recursive: true });
    writeFileSync(join(ck, 'w.bin'), pseudoRandomBytes(10_000, 'm'));
    const c = await commitDirectory(store, ck, { jobId: 'j', step: 1, epoch: 1 }, { chunking: SMALL });
    expect(store.hasManifest(c.manifestId)).toBe(true);
    expect(await store.getManifest(c.manifestId)).toEqual(c.manifest);
    await expectCode(store.putManifest(encodeManifest(c.manifest), sha256('wrong')), 'CORRUPT_STORAGE');
    const path = join(store.dir, 'manifests', `${c.manifestId}.json`);
    writeFileSync(path, readFileSync(path, 'utf8').replace('"step":1', '"step":2'));
    await expectCode(store.getManifest(c.manifestId), 'CORRUPT_STORAGE');
    expect(store.hasManifest(c.manifestId)).toBe(false);
  });

  it('gc keeps every chunk a kept manifest uses (shared ones too) and pinned chunks, and deletes the rest', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const dir = fresh();
    mkdirSync(dir);
    const base = pseudoRandomBytes(200_000, 'gc-base');
    writeFileSync(join(dir, 'model.bin'), base);
    const first = await commitDirectory(store, dir, { jobId: 'j', step: 1, epoch: 1 }, { chunking: SMALL });
    const changed = Buffer.from(base);
    changed.set(pseudoRandomBytes(30_000, 'gc-change'), 150_000);
    writeFileSync(join(dir, 'model.bin'), changed);
    const second = await commitDirectory(store, dir, { jobId: 'j', step: 2, epoch: 1 }, { chunking: SMALL });
    const firstIds = new Set(manifestChunks(first.manifest).keys());
    const secondIds = new Set(manifestChunks(second.manifest).keys());
    const onlyFirst = [...firstIds].filter((c) => !secondIds.has(c));
    expect(onlyFirst.length).toBeGreaterThan(0);
    expect([...secondIds].filter((c) => firstIds.has(c)).length).toBeGreaterThan(0);
    const stray = pseudoRandomBytes(777, 'stray');
    await store.put(sha256(stray), stray);
    const release = store.pin([sha256(stray)]);

    const r = await store.gc([second.manifestId]);
    expect(r.deletedManifests).toBe(1);
    expect(r.deletedChunks).toBe(onlyFirst.length);
    for (const c of secondIds) expect(store.has(c)).toBe(true);
    for (const c of onlyFirst) expect(store.has(c)).toBe(false);
    expect(store.has(sha256(stray))).toBe(true);
    release();
    expect((await store.gc([second.manifestId])).deletedChunks).toBe(1);
    expect(store.hasManifest(first.manifestId)).toBe(false);
    expect(store.missing(second.manifest)).toEqual([]);
  });
});

describe('checkpoint directories', () => {
  function makeCheckpoint(dir: string): void {
    mkdirSync(join(dir, 'shards', 'deep'), { recursive: true });
    writeFileSync(join(dir, 'model.safetensors'), pseudoRandomBytes(300_000, 'model'));
    writeFileSync(join(dir, 'shards', 'deep', 'opt.pt'), pseudoRandomBytes(90_000, 'opt'));
    writeFileSync(join(dir, 'empty'), '');
    writeFileSync(join(dir, 'run.sh'), '#!/bin/sh\necho hi\n');
    chmodSync(join(dir, 'run.sh'), 0o750);
    chmodSync(join(dir, 'shards'), 0o751);
    symlinkSync('model.safetensors', join(dir, 'latest'));
  }

  it('commits a directory into chunks and restores it byte for byte, modes and symlinks included', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const src = fresh();
    mkdirSync(src);
    makeCheckpoint(src);
    const progress: number[] = [];
    const c = await commitDirectory(store, src, { jobId: 'job-7', step: 40, epoch: 2 }, { chunking: SMALL, readBlockBytes: 10_000, onProgress: (p) => progress.push(p.bytesRead) });
    expect(c.totalBytes).toBe(300_000 + 90_000 + 18);
    expect(c.newBytes).toBe(c.totalBytes);
    expect(c.chunks).toBeGreaterThan(10);
    expect(progress.at(-1)).toBe(c.totalBytes);
    expect(c.manifest).toMatchObject({ jobId: 'job-7', step: 40, epoch: 2 });
    expect(decodeManifest(c.manifestBytes, c.manifestId)).toEqual(c.manifest);

    const out = join(fresh(), 'restored');
    const r = await materializeCheckpoint(store, c.manifest, out);
    expect(r).toEqual({ files: 4, bytes: c.totalBytes });
    for (const f of ['model.safetensors', 'shards/deep/opt.pt', 'empty', 'run.sh']) expect(sha256(readFileSync(join(out, f))), f).toBe(sha256(readFileSync(join(src, f))));
    expect(statSync(join(out, 'run.sh')).mode & 0o777).toBe(0o750);
    expect(statSync(join(out, 'shards')).mode & 0o777).toBe(0o751);
    expect(lstatSync(join(out, 'latest')).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(out, 'latest'))).toBe('model.safetensors');
  });

  it('stores only new chunks on a second commit of nearly the same bytes', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const src = fresh();
    mkdirSync(src);
    const data = Buffer.from(pseudoRandomBytes(400_000, 'dedup'));
    writeFileSync(join(src, 'w.bin'), data);
    const first = await commitDirectory(store, src, { jobId: 'j', step: 1, epoch: 1 }, { chunking: SMALL });
    const again = await commitDirectory(store, src, { jobId: 'j', step: 1, epoch: 1 }, { chunking: SMALL });
    expect(again.manifestId).toBe(first.manifestId);
    expect(again.newChunks).toBe(0);
    data.set(pseudoRandomBytes(1000, 'edit'), 200_000);
    writeFileSync(join(src, 'w.bin'), data);
    const edited = await commitDirectory(store, src, { jobId: 'j', step: 2, epoch: 1 }, { chunking: SMALL });
    expect(edited.newChunks).toBeGreaterThanOrEqual(1);
    expect(edited.newBytes).toBeLessThan(data.length / 5);
  });

  it('refuses to restore over a non-empty directory, and leaves nothing when a chunk is missing', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const src = fresh();
    mkdirSync(src);
    makeCheckpoint(src);
    const c = await commitDirectory(store, src, { jobId: 'j', step: 1, epoch: 1 }, { chunking: SMALL });
    await expectCode(materializeCheckpoint(store, c.manifest, src), 'BAD_INPUT');

    const victim = [...manifestChunks(c.manifest).keys()][3]!;
    await store.delete(victim);
    const parent = fresh();
    const out = join(parent, 'out');
    const err = await expectCode(materializeCheckpoint(store, c.manifest, out), 'NOT_FOUND');
    expect((err as { details: { chunkId: string } }).details.chunkId).toBe(victim);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('restores into an existing empty directory', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const src = fresh();
    mkdirSync(src);
    writeFileSync(join(src, 'a'), 'x');
    const c = await commitDirectory(store, src, { jobId: 'j', step: 1, epoch: 1 });
    const out = fresh();
    mkdirSync(out);
    await materializeCheckpoint(store, c.manifest, out);
    expect(readFileSync(join(out, 'a'), 'utf8')).toBe('x');
  });

  it('refuses a checkpoint path that is not a directory', async () => {
    const store = ChunkStore.open(fresh(), silentLogger);
    const file = join(fresh());
    writeFileSync(file, 'not a dir');
    await expectCode(commitDirectory(store, file, { jobId: 'j', step: 1, epoch: 1 }), 'BAD_INPUT');
    await expectCode(commitDirectory(store, join(root, 'nope'), { jobId: 'j', step: 1, epoch: 1 }), 'NOT_FOUND');
  });
});
