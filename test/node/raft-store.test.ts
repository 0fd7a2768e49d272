import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { spawn } from 'node:child_process';
import { appendFileSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { DiskRaftStore } from '../../src/node/raft-store.ts';
import { MemoryStorage } from '../../src/consensus/memory-storage.ts';
import { bootstrapLog } from '../../src/consensus/bootstrap.ts';
import { decodeConfChange } from '../../src/consensus/conf-change.ts';
import { RawNode } from '../../src/consensus/raw-node.ts';
import type { ConfState, Entry, LogStorage, RaftConfig, Ready } from '../../src/consensus/types.ts';
import { FabricError, SeededRng, isFabricError, silentLogger, type Logger } from '../../src/core/index.ts';
import { CRASH_SEGMENT_BYTES, crashConf, expectedEntry, snapshotData, termOf } from './fixtures/raft-store-content.ts';

const conf: ConfState = { voters: ['a', 'b', 'c'], learners: ['d'] };
const none: ConfState = { voters: [], learners: [] };
const FIRST_SEGMENT = 'wal-0000000000000001.log';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'raft-store-'));
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

function entry(index: number, term: number, size = 8): Entry {
  const data = new Uint8Array(size);
  for (let k = 0; k < size; k++) data[k] = (index * 13 + term * 7 + k) & 0xff;
  return { index, term, type: index % 5 === 0 ? 'conf-change' : 'normal', data };
}

function range(lo: number, hi: number, term: number, size = 8): Entry[] {
  const out: Entry[] = [];
  for (let i = lo; i <= hi; i++) out.push(entry(i, term, size));
  return out;
}

/** A logger that keeps its warnings, to tell a quiet recovery from a repaired one. */
function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const log: Logger & { warnings: string[] } = {
    warnings,
    child: () => log,
    debug: () => {},
    info: () => {},
    warn: (obj, msg) => warnings.push(typeof obj === 'string' ? obj : (msg ?? '')),
    error: () => {},
  };
  return log;
}

/** Opens (or creates) a store; a new one is empty (no bootstrap entries) unless `bootstrap` is given. */
async function openStore(dir: string, log: Logger = silentLogger, segmentBytes?: number, bootstrap?: ConfState): Promise<DiskRaftStore> {
  return DiskRaftStore.open(dir, { log, ...(bootstrap === undefined ? {} : { confState: bootstrap }), ...(segmentBytes === undefined ? {} : { segmentBytes }) });
}

function allEntries(s: LogStorage): Entry[] {
  return s.lastIndex() < s.firstIndex() ? [] : s.entries(s.firstIndex(), s.lastIndex() + 1);
}

/** Everything a reader of the port can observe, in a comparable form. */
function view(s: LogStorage): unknown {
  const snap = s.snapshot();
  return {
    initial: s.initialState(),
    first: s.firstIndex(),
    last: s.lastIndex(),
    offsetTerm: s.term(s.firstIndex() - 1),
    entries: allEntries(s).map((e) => ({ ...e, data: [...e.data] })),
    snapshot: { metadata: snap.metadata, data: [...snap.data] },
  };
}

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (err) {
    expect(isFabricError(err) ? err.code : err).toBe(code);
    return;
  }
  throw new Error(`expected a ${code} error`);
}

async function expectCorrupt(dir: string, pattern: RegExp): Promise<FabricError> {
  const err = await openStore(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isFabricError(err, 'CORRUPT_STORAGE')).toBe(true);
  expect((err as FabricError).message).toMatch(pattern);
  expect((err as FabricError).message).toMatch(/restore .* from a healthy peer's copy, or remove it/);
  return err as FabricError;
}

/** Starts and lengths of the records in a segment file, by walking the length fields. */
function recordBounds(file: string): { at: number; end: number }[] {
  const buf = readFileSync(file);
  const out: { at: number; end: number }[] = [];
  for (let at = 0; at < buf.length; ) {
    const end = at + 9 + buf.readUInt32LE(at);
    out.push({ at, end });
    at = end;
  }
  return out;
}

function flipByte(file: string, offset: number): void {
  const buf = readFileSync(file);
  buf[offset] = buf[offset]! ^ 0x5a;
  writeFileSync(file, buf);
}

/** A record as the store frames it, for feeding replay well-checksummed nonsense. */
function frame(type: number, payload: Buffer): Buffer {
  const rec = Buffer.alloc(9 + payload.length);
  rec.writeUInt32LE(payload.length, 0);
  rec[8] = type;
  payload.copy(rec, 9);
  rec.writeUInt32LE(crc32(rec.subarray(8), crc32(rec.subarray(0, 4))), 4);
  return rec;
}

function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(v >>> 0, 0);
  b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), 4);
  return b;
}

function entriesOp(entries: { index: number; term: number }[]): Buffer {
  const parts: Buffer[] = [Buffer.from([1]), Buffer.alloc(4)];
  parts[1]!.writeUInt32LE(entries.length, 0);
  for (const e of entries) parts.push(u64(e.index), u64(e.term), Buffer.from([0]), Buffer.alloc(4));
  return Buffer.concat(parts);
}

describe('DiskRaftStore: round trips', () => {
  test('a new directory without a configuration opens as an empty log (a node waiting to be added), and stays so', async () => {
    const dir = join(root, 'fresh');
    const store = await openStore(dir);
    expect(store.firstIndex()).toBe(1);
    expect(store.lastIndex()).toBe(0);
    expect(store.term(0)).toBe(0);
    expect(store.initialState()).toEqual({ hardState: { term: 0, vote: null, commit: 0 }, confState: none });
    expect(store.snapshot().metadata).toEqual({ index: 0, term: 0, confState: none });
    await store.close();
    expect(readdirSync(dir).sort()).toEqual(['snap-0000000000000000.snap', FIRST_SEGMENT]);
    const again = await openStore(dir);
    expect(view(again)).toEqual(view(new MemoryStorage()));
    await again.close();
  });

  test("a founder's new directory holds the configuration as committed bootstrap entries, not in snap-0; a later open keeps it", async () => {
    const dir = join(root, 'founder');
    const store = await openStore(dir, silentLogger, undefined, conf);
    const expected = new MemoryStorage({ bootstrap: conf });
    expect(view(store)).toEqual(view(expected));
    expect(store.initialState()).toEqual({ hardState: { term: 1, vote: null, commit: 4 }, confState: none });
    expect(store.snapshot().metadata).toEqual({ index: 0, term: 0, confState: none });
    expect(allEntries(store).map((e) => `${e.term}/${e.index} ${e.type} ${JSON.stringify(decodeConfChange(e.data))}`)).toEqual([
      '1/1 conf-change {"type":"add-voter","node":"a"}',
      '1/2 conf-change {"type":"add-voter","node":"b"}',
      '1/3 conf-change {"type":"add-voter","node":"c"}',
      '1/4 conf-change {"type":"add-learner","node":"d"}',
    ]);
    // Durable at once (no sync() needed), and no temp file left behind.
    expect(readdirSync(dir).sort()).toEqual(['snap-0000000000000000.snap', FIRST_SEGMENT]);
    await store.close();
    // The configuration passed on a later open does not override the stored one.
    const again = await openStore(dir, silentLogger, undefined, { voters: ['x'], learners: [] });
    expect(view(again)).toEqual(view(expected));
    await again.close();
  });

  test('a crash while creating a store leaves no half-made one: a temp first segment is removed and creation starts over', async () => {
    const dir = join(root, 'cut');
    await (await openStore(dir, silentLogger, undefined, conf)).close();
    // As if the process died between writing the first segment's temp file and renaming it.
    const segment = readFileSync(join(dir, FIRST_SEGMENT));
    unlinkSync(join(dir, FIRST_SEGMENT));
    writeFileSync(join(dir, `.${FIRST_SEGMENT}.12345.tmp`), segment.subarray(0, segment.length - 7));
    const store = await openStore(dir, silentLogger, undefined, conf);
    expect(view(store)).toEqual(view(new MemoryStorage({ bootstrap: conf })));
    expect(readdirSync(dir).sort()).toEqual(['snap-0000000000000000.snap', FIRST_SEGMENT]);
    await store.close();
  });

  test('entries and hard state survive a reopen byte for byte', async () => {
    const store = await openStore(root);
    store.append(range(1, 3, 1));
    store.setHardState({ term: 1, vote: 'a', commit: 2 });
    await store.sync();
    store.append(range(4, 40, 2, 300));
    store.setHardState({ term: 2, vote: null, commit: 40 });
    await store.sync();
    const before = view(store);
    await store.close();

    const back = await openStore(root);
    expect(view(back)).toEqual(before);
    expect(back.initialState().hardState).toEqual({ term: 2, vote: null, commit: 40 });
    expect(back.entries(4, 5)[0]).toEqual(entry(4, 2, 300));
    expect(back.entries(1, 2)[0]!.type).toBe('normal');
    expect(back.entries(5, 6)[0]!.type).toBe('conf-change');
    // maxBytes bounds the answer, but at least one entry comes back.
    expect(back.entries(4, 41, 650).map((e) => e.index)).toEqual([4, 5]);
    expect(back.entries(4, 41, 10).map((e) => e.index)).toEqual([4]);
    expectCode(() => back.entries(1, 42), 'LOG_UNAVAILABLE');
    expectCode(() => back.term(41), 'LOG_UNAVAILABLE');
    await back.close();
  });

  test('a conflicting suffix is replaced, and stays replaced after a reopen', async () => {
    const store = await openStore(root);
    store.append(range(1, 10, 1));
    await store.sync();
    store.append(range(6, 8, 2)); // a new leader's entries: 9 and 10 go too
    await store.sync();
    store.append([...range(3, 4, 3), ...range(5, 5, 3)]); // and again, within a later batch
    store.append(range(6, 7, 3));
    await store.sync();
    expect(allEntries(store).map((e) => [e.index, e.term])).toEqual([[1, 1], [2, 1], [3, 3], [4, 3], [5, 3], [6, 3], [7, 3]]);
    await store.close();
    const back = await openStore(root);
    expect(allEntries(back)).toEqual([...range(1, 2, 1), ...range(3, 7, 3)]);
    await back.close();
  });

  test('writes are visible at once but only what sync() covered survives', async () => {
    const store = await openStore(root);
    store.append(range(1, 5, 1));
    await store.sync();
    store.append(range(6, 9, 1));
    expect(store.lastIndex()).toBe(9);
    // Simulate the process dying here: reopen the directory from a second handle.
    const other = await openStore(root);
    expect(other.lastIndex()).toBe(5);
    await other.close();
    await store.close();
  });

  test('concurrent sync() calls group-commit and each covers the writes made before it', async () => {
    const store = await openStore(root);
    const done: number[] = [];
    const syncs: Promise<unknown>[] = [];
    for (let i = 1; i <= 20; i++) {
      store.append([entry(i, 1)]);
      const at = i;
      syncs.push(store.sync().then(() => done.push(at)));
    }
    await Promise.all(syncs);
    expect(done).toEqual(range(1, 20, 1).map((e) => e.index)); // resolved in order
    const records = recordBounds(join(root, FIRST_SEGMENT)).length - 1;
    expect(records).toBeGreaterThanOrEqual(1);
    expect(records).toBeLessThan(20); // batched: fewer writes than calls
    await store.close();
    const back = await openStore(root);
    expect(back.lastIndex()).toBe(20);
    await back.close();
  });

  test('the write API refuses what MemoryStorage refuses, with the same codes', async () => {
    const store = await openStore(root);
    store.append(range(1, 10, 2));
    expectCode(() => store.append(range(12, 13, 2)), 'LOG_UNAVAILABLE'); // a gap
    expectCode(() => store.append([entry(11, 1)]), 'BAD_INPUT'); // term going down
    expectCode(() => store.append([entry(11, 2), entry(13, 2)]), 'BAD_INPUT'); // not contiguous
    store.createSnapshot(6, conf, new Uint8Array([1]));
    expectCode(() => store.createSnapshot(6, conf, new Uint8Array()), 'SNAPSHOT_OUT_OF_DATE');
    expectCode(() => store.createSnapshot(11, conf, new Uint8Array()), 'LOG_UNAVAILABLE');
    expectCode(() => store.compact(7), 'BAD_INPUT'); // past the snapshot
    store.compact(4);
    expectCode(() => store.compact(4), 'LOG_COMPACTED');
    expectCode(() => store.entries(4, 6), 'LOG_COMPACTED');
    expectCode(() => store.term(3), 'LOG_COMPACTED');
    expectCode(
      () => store.applySnapshot({ metadata: { index: 6, term: 2, confState: conf }, data: new Uint8Array() }),
      'SNAPSHOT_OUT_OF_DATE',
    );
    store.append(range(2, 12, 2)); // entries already compacted are skipped
    store.append([]);
    expect([store.firstIndex(), store.lastIndex()]).toEqual([5, 12]);
    await store.close();
  });
});

describe('DiskRaftStore: snapshots and compaction', () => {
  test('a local snapshot and compaction survive a reopen; older snapshot files are removed', async () => {
    const store = await openStore(root);
    store.append(range(1, 100, 1));
    store.append(range(101, 120, 2));
    await store.sync();
    const conf2: ConfState = { voters: ['a', 'b'], learners: [] };
    const snap = store.createSnapshot(105, conf2, new Uint8Array([9, 8, 7]));
    expect(snap.metadata).toEqual({ index: 105, term: 2, confState: conf2 });
    store.compact(90);
    await store.sync();
    expect(readdirSync(root).filter((n) => n.startsWith('snap-'))).toEqual(['snap-0000000000000069.snap']);
    await store.close();

    const back = await openStore(root);
    expect([back.firstIndex(), back.lastIndex(), back.term(90)]).toEqual([91, 120, 1]);
    expect(back.snapshot()).toEqual({ metadata: { index: 105, term: 2, confState: conf2 }, data: new Uint8Array([9, 8, 7]) });
    expect(back.initialState().confState).toEqual(conf2);
    expect(allEntries(back)).toEqual([...range(91, 100, 1), ...range(101, 120, 2)]);
    expectCode(() => back.entries(90, 92), 'LOG_COMPACTED');
    await back.close();
  });

  test("a leader's snapshot replaces the whole log", async () => {
    const store = await openStore(root);
    store.append(range(1, 30, 1));
    await store.sync();
    const data = new Uint8Array(5000).fill(3);
    store.applySnapshot({ metadata: { index: 25, term: 4, confState: conf }, data });
    store.append(range(26, 28, 4));
    store.setHardState({ term: 4, vote: 'b', commit: 25 });
    await store.sync();
    await store.close();

    const back = await openStore(root);
    expect([back.firstIndex(), back.lastIndex(), back.term(25)]).toEqual([26, 28, 4]);
    expect(allEntries(back)).toEqual(range(26, 28, 4));
    expect(back.snapshot().data).toEqual(data);
    expect(back.initialState().hardState).toEqual({ term: 4, vote: 'b', commit: 25 });
    await back.close();
  });

  test('segments rotate at the size limit and go once compacted past', async () => {
    const store = await openStore(root, silentLogger, 4096);
    for (let i = 1; i <= 200; i += 10) {
      store.append(range(i, i + 9, 1, 100));
      await store.sync();
    }
    const segments = () => readdirSync(root).filter((n) => n.startsWith('wal-')).length;
    expect(segments()).toBeGreaterThan(3);
    store.createSnapshot(195, conf, new Uint8Array([1]));
    store.compact(190);
    await store.sync();
    expect(segments()).toBeLessThanOrEqual(2);
    const before = view(store);
    await store.close();
    const back = await openStore(root, silentLogger, 4096);
    expect(view(back)).toEqual(before);
    await back.close();
  });

  test('replay starts right after deleted segments even when the oldest kept one rewrote their tail', async () => {
    const store = await openStore(root, silentLogger, 1024);
    store.append(range(1, 20, 1, 60)); // segment 1 passes 1 KiB
    await store.sync();
    store.append(range(15, 25, 2)); // goes to segment 2 (header: log ends at 20, term 1), rewriting 15..20
    store.setHardState({ term: 2, vote: 'a', commit: 22 });
    await store.sync();
    store.createSnapshot(22, conf, new Uint8Array([2]));
    store.compact(22);
    await store.sync();
    expect(readdirSync(root).filter((n) => n.startsWith('wal-'))).toEqual(['wal-0000000000000002.log']);
    const before = view(store);
    await store.close();
    const back = await openStore(root, silentLogger, 1024);
    expect(view(back)).toEqual(before);
    expect(back.term(22)).toBe(2);
    back.append(range(26, 27, 2));
    await back.close();
    const third = await openStore(root);
    expect(third.lastIndex()).toBe(27);
    await third.close();
  });

  test('leftovers of an interrupted cleanup are ignored and removed', async () => {
    const store = await openStore(root, silentLogger, 1024);
    for (let i = 1; i <= 60; i += 10) {
      store.append(range(i, i + 9, 1, 60));
      await store.sync();
    }
    store.createSnapshot(55, conf, new Uint8Array([5]));
    store.compact(55);
    await store.sync();
    const before = view(store);
    await store.close();
    const kept = readdirSync(root).filter((n) => n.startsWith('wal-')).sort();
    // A segment whose deletion did not reach the disk, and a stale snapshot and temp file.
    writeFileSync(join(root, 'wal-0000000000000000.log'), Buffer.from('old'));
    writeFileSync(join(root, 'snap-0000000000000003.snap'), Buffer.from('old'));
    writeFileSync(join(root, '.snap-0000000000000070.snap.123.tmp'), Buffer.from('half'));
    const back = await openStore(root, silentLogger, 1024);
    expect(view(back)).toEqual(before);
    await back.close();
    expect(readdirSync(root).filter((n) => n.startsWith('wal-')).sort()).toEqual(kept);
    expect(readdirSync(root).filter((n) => n.includes('snap'))).toEqual(['snap-0000000000000037.snap']);
  });

  test('behaves as MemoryStorage under random writes, syncs and reopens', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { minLength: 10, maxLength: 40 }), fc.integer({ min: 1, max: 1 << 30 }), async (steps, seed) => {
        const dir = join(root, `prop-${run++}`);
        const rng = new SeededRng(seed);
        // Both start as a founder: the bootstrap entries 1..4, then random writes (over them too).
        const mem = new MemoryStorage({ bootstrap: conf });
        let disk = await openStore(dir, silentLogger, 2048, conf);
        let term = 1;
        for (const step of steps) {
          const both = (fn: (s: MemoryStorage | DiskRaftStore) => void): void => {
            fn(mem);
            fn(disk);
          };
          switch (step % 7) {
            case 0:
            case 1: {
              // Append, sometimes over a suffix (a new term), as a follower would.
              const last = mem.lastIndex();
              const from = rng.int(3) === 0 ? Math.max(mem.firstIndex(), last - rng.int(5)) : last + 1;
              if (from <= last) term++;
              const entries = range(from, from + rng.int(6), term, rng.int(120));
              both((s) => s.append(entries));
              break;
            }
            case 2:
            {
              const hs = { term, vote: rng.int(2) === 0 ? null : `n${rng.int(3)}`, commit: mem.lastIndex() };
              both((s) => s.setHardState(hs));
            }
              break;
            case 3: {
              const at = mem.lastIndex();
              if (at > mem.snapshot().metadata.index) {
                const data = new Uint8Array([at & 0xff, rng.int(256)]);
                const cs = { voters: [`v${rng.int(9)}`], learners: [] };
                both((s) => s.createSnapshot(at, cs, data));
                const to = at - rng.int(4);
                if (to >= mem.firstIndex()) both((s) => s.compact(to));
              }
              break;
            }
            case 4: {
              const index = mem.lastIndex() + rng.int(10) + 1;
              term++;
              const snap = { metadata: { index, term, confState: conf }, data: new Uint8Array([7]) };
              if (rng.int(3) === 0) both((s) => s.applySnapshot(snap));
              break;
            }
            case 5:
              await disk.sync();
              break;
            case 6:
              await disk.close();
              disk = await openStore(dir, silentLogger, 2048);
              break;
          }
          expect(view(disk)).toEqual(view(mem));
        }
        await disk.close();
        const back = await openStore(dir, silentLogger, 2048);
        expect(view(back)).toEqual(view(mem));
        await back.close();
      }),
      { numRuns: 40, seed: 20261123 },
    );
  });
});

describe('DiskRaftStore under the Raft core', () => {
  const coreConfig = (storage: LogStorage, applied = 0): RaftConfig => ({
    id: 'a',
    electionTick: 10,
    heartbeatTick: 2,
    storage,
    applied,
    randomInt: () => 0,
    preVote: false,
    checkQuorum: false,
    maxSizePerMsg: 1 << 20,
    maxInflightMsgs: 8,
  });

  /** One Ready handled as the daemon's driver does: persist, ONE sync, apply conf changes, advance. */
  async function handleReady(node: RawNode, store: DiskRaftStore): Promise<Ready> {
    const rd = node.ready();
    if (rd.snapshot !== undefined) store.applySnapshot(rd.snapshot);
    store.append(rd.entries);
    if (rd.hardState !== undefined) store.setHardState(rd.hardState);
    await store.sync();
    for (const e of rd.committedEntries) if (e.type === 'conf-change') node.applyConfChange(decodeConfChange(e.data));
    node.advance(rd);
    return rd;
  }

  test('a founder applies its bootstrap entries, elects itself, and after a restart rebuilds its configuration from the log', async () => {
    const solo = { voters: ['a'], learners: [] };
    const store = await openStore(root, silentLogger, undefined, solo);
    const node = new RawNode(coreConfig(store));
    const first = await handleReady(node, store);
    expect(first.committedEntries.map((e) => e.index)).toEqual([1]);
    expect(node.status().config).toEqual(solo);
    node.campaign();
    while (node.hasReady()) await handleReady(node, store);
    expect(node.status()).toMatchObject({ role: 'leader', term: 2, commit: 2 });
    node.propose(new Uint8Array([1]));
    while (node.hasReady()) await handleReady(node, store);
    await store.close();

    const back = await openStore(root, silentLogger, undefined, { voters: ['z'], learners: [] });
    const again = new RawNode(coreConfig(back));
    expect(again.status()).toMatchObject({ term: 2, vote: 'a', commit: 3, config: none });
    const replay = await handleReady(again, back);
    expect(replay.committedEntries.map((e) => e.index)).toEqual([1, 2, 3]);
    expect(again.status().config).toEqual(solo);
    await back.close();
  });

  test('entries of a new term whose hard state never made it (written by separate syncs) load at that term, the vote cleared', async () => {
    const store = await openStore(root, silentLogger, undefined, conf);
    store.setHardState({ term: 2, vote: 'b', commit: 4 });
    await store.sync();
    store.append(range(5, 6, 3));
    await store.sync();
    await store.close();
    const back = await openStore(root);
    expect(back.initialState().hardState).toEqual({ term: 2, vote: 'b', commit: 4 });
    expect(new RawNode(coreConfig(back)).status()).toMatchObject({ term: 3, vote: null, commit: 4, lastIndex: 6 });
    await back.close();
  });

  test('a hard state whose commit index is beyond the log is refused with CORRUPT_STORAGE', async () => {
    const store = await openStore(root, silentLogger, undefined, conf);
    store.append(range(5, 6, 2));
    store.setHardState({ term: 2, vote: null, commit: 9 });
    await store.close();
    const back = await openStore(root);
    expectCode(() => new RawNode(coreConfig(back)), 'CORRUPT_STORAGE');
    await back.close();
  });
});

describe('DiskRaftStore: torn writes and corruption', () => {
  /** A store of three batches; returns the segment path and where the last record starts. */
  async function threeBatches(dir: string): Promise<{ file: string; lastAt: number }> {
    const store = await openStore(dir);
    store.append(range(1, 5, 1));
    await store.sync();
    store.append(range(6, 10, 1));
    store.setHardState({ term: 1, vote: 'a', commit: 8 });
    await store.sync();
    const file = join(dir, FIRST_SEGMENT);
    const lastAt = statSync(file).size;
    store.append(range(11, 12, 2, 40));
    store.setHardState({ term: 2, vote: 'b', commit: 12 });
    await store.sync();
    await store.close();
    return { file, lastAt };
  }

  test('a tail cut at any byte of the last record opens with everything before it', async () => {
    const master = join(root, 'master');
    const { file, lastAt } = await threeBatches(master);
    const size = statSync(file).size;
    expect(size - lastAt).toBeGreaterThan(100);
    for (let cut = lastAt; cut < size; cut++) {
      const dir = join(root, `cut-${cut}`);
      cpSync(master, dir, { recursive: true });
      truncateSync(join(dir, FIRST_SEGMENT), cut);
      const log = recordingLogger();
      const store = await openStore(dir, log);
      expect([store.lastIndex(), store.initialState().hardState.commit]).toEqual([10, 8]);
      expect(log.warnings.length).toBe(cut === lastAt ? 0 : 1);
      // The torn bytes are gone for good: new writes after them replay cleanly.
      store.append(range(11, 11, 3));
      await store.close();
      const quiet = recordingLogger();
      const back = await openStore(dir, quiet);
      expect([back.lastIndex(), back.term(11), quiet.warnings.length]).toEqual([11, 3, 0]);
      await back.close();
      rmSync(dir, { recursive: true });
    }
  });

  test('garbage or zeros after the last record are dropped as a torn tail', async () => {
    for (const junk of [Buffer.from('\x07garbage that is not a record, of some length'), Buffer.alloc(4096), Buffer.from([0xff, 0xff, 0xff])]) {
      const dir = join(root, `junk-${junk.length}`);
      await threeBatches(dir);
      appendFileSync(join(dir, FIRST_SEGMENT), junk);
      const log = recordingLogger();
      const store = await openStore(dir, log);
      expect(store.lastIndex()).toBe(12);
      expect(log.warnings).toHaveLength(1);
      await store.close();
      expect(statSync(join(dir, FIRST_SEGMENT)).size).toBe(recordBounds(join(dir, FIRST_SEGMENT)).at(-1)!.end);
    }
  });

  test('a flipped byte in a record followed by valid ones refuses to start, naming file and offset', async () => {
    const master = join(root, 'master');
    const { file } = await threeBatches(master);
    const records = recordBounds(file);
    expect(records).toHaveLength(4); // header + 3 batches
    for (const victim of [records[1]!, records[2]!]) {
      // The length field, the checksum, the type and the payload: all caught.
      for (const offset of [victim.at, victim.at + 4, victim.at + 8, victim.at + 20, victim.end - 1]) {
        const dir = join(root, `flip-${offset}`);
        cpSync(master, dir, { recursive: true });
        flipByte(join(dir, FIRST_SEGMENT), offset);
        const err = await expectCorrupt(dir, new RegExp(`raft log corrupt at .*${FIRST_SEGMENT}:${victim.at}: `));
        expect(err.details).toMatchObject({ offset: victim.at });
      }
    }
    // The header too.
    const dir = join(root, 'flip-header');
    cpSync(master, dir, { recursive: true });
    flipByte(join(dir, FIRST_SEGMENT), 12);
    await expectCorrupt(dir, new RegExp(`${FIRST_SEGMENT}:0: checksum mismatch`));
  });

  test('damage in a closed segment refuses to start even in its last record', async () => {
    const store = await openStore(root, silentLogger, 512);
    for (let i = 1; i <= 40; i += 5) {
      store.append(range(i, i + 4, 1, 40));
      await store.sync();
    }
    await store.close();
    const closed = join(root, FIRST_SEGMENT);
    expect(readdirSync(root).filter((n) => n.startsWith('wal-')).length).toBeGreaterThan(1);
    const last = recordBounds(closed).at(-1)!;
    flipByte(closed, last.end - 2);
    await expectCorrupt(root, new RegExp(`${FIRST_SEGMENT}:${last.at}: checksum mismatch`));
    // Cut short, it is just as bad: nothing in a closed segment was ever torn.
    flipByte(closed, last.end - 2);
    truncateSync(closed, last.end - 3);
    await expectCorrupt(root, new RegExp(`${FIRST_SEGMENT}:${last.at}: record of \\d+ bytes runs past the end`));
  });

  test('well-checksummed records that break the log rules refuse to start', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['gap', entriesOp([{ index: 3, term: 1 }]), /append at 3 leaves a gap after 0/],
      ['term-down', Buffer.concat([entriesOp([{ index: 1, term: 2 }]), entriesOp([{ index: 2, term: 1 }])]), /term goes down from 2 to 1 at index 2/],
      ['unknown-op', Buffer.from([9]), /unknown op 9/],
      ['short-field', Buffer.from([2, 1, 2]), /record ends inside a field/],
      ['compact-beyond', Buffer.concat([Buffer.from([4]), u64(5), u64(1)]), /compact to 5 beyond the log's end at 0/],
    ];
    for (const [name, payload, pattern] of cases) {
      const dir = join(root, name);
      await (await openStore(dir)).close();
      const file = join(dir, FIRST_SEGMENT);
      const headerEnd = statSync(file).size;
      appendFileSync(file, frame(2, payload));
      await expectCorrupt(dir, new RegExp(`${FIRST_SEGMENT}:${headerEnd}: .*${pattern.source}`));
    }
  });

  test('a missing or damaged snapshot file refuses to start', async () => {
    const store = await openStore(root);
    store.append(range(1, 10, 1));
    store.createSnapshot(8, conf, new Uint8Array(100).fill(1));
    await store.close();
    const snap = join(root, 'snap-0000000000000008.snap');
    const good = readFileSync(snap);
    flipByte(snap, good.length - 1);
    await expectCorrupt(root, /snap-0000000000000008\.snap:4: checksum mismatch/);
    unlinkSync(snap);
    await expectCorrupt(root, /snap-0000000000000008\.snap:0: the current snapshot file is unreadable/);
    // And a write-ahead log that vanished while a snapshot remains is not a new store.
    writeFileSync(snap, good);
    unlinkSync(join(root, FIRST_SEGMENT));
    await expectCorrupt(root, /the write-ahead log is missing/);
  });
});

describe('DiskRaftStore: kill -9', () => {
  const WRITER = join(import.meta.dirname, 'fixtures', 'raft-store-writer.ts');

  /**
   * Runs the writer until its `killAtAck`-th ack, then SIGKILLs it `delayMs` later, while it goes on
   * writing (counting acks, not time, keeps the amount of work the same on a loaded machine).
   */
  function runAndKill(path: string, seed: number, killAtAck: number, delayMs: number): Promise<{ ready: number; acked: number }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [WRITER, path, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let ready = -1;
      let acked = 0;
      let buffered = '';
      let stderr = '';
      let acks = 0;
      let timer: NodeJS.Timeout | undefined;
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.on('data', (d: Buffer) => {
        buffered += d.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop()!;
        for (const line of lines) {
          const [word, n] = line.split(' ');
          if (word === 'ready') ready = Number(n);
          if (word === 'acked') acked = Math.max(acked, Number(n));
          if (word === 'acked' && ++acks === killAtAck) timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
        }
      });
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        if (timer !== undefined) clearTimeout(timer);
        if (signal !== 'SIGKILL') reject(new Error(`writer exited with ${code}: ${stderr}`));
        else resolve({ ready, acked });
      });
    });
  }

  test('every acknowledged entry survives SIGKILL at random moments, and nothing after it is garbage', async () => {
    const rng = new SeededRng(7);
    const path = join(root, 'crash');
    let ackedSoFar = 0;
    let lastSnapshot = 0;
    for (let round = 0; round < 7; round++) {
      const { ready, acked } = await runAndKill(path, 1000 + round, 10 + rng.int(60), rng.int(5));
      expect(ready).toBeGreaterThanOrEqual(ackedSoFar); // the writer itself recovered all earlier acks
      expect(acked).toBeGreaterThan(ready);
      ackedSoFar = acked;

      const log = recordingLogger();
      const store = await DiskRaftStore.open(path, { log, segmentBytes: CRASH_SEGMENT_BYTES });
      const snap = store.snapshot();
      expect(store.lastIndex()).toBeGreaterThanOrEqual(acked);
      expect(snap.metadata.index).toBeGreaterThanOrEqual(store.firstIndex() - 1);
      if (snap.metadata.index > 0) {
        expect(snap.data).toEqual(snapshotData(snap.metadata.index));
        expect(snap.metadata.term).toBe(termOf(snap.metadata.index));
      }
      // The writer founds a group: its configuration is in the log (entry 1), snap-0 holds none.
      expect(snap.metadata.confState).toEqual(snap.metadata.index === 0 ? none : crashConf);
      lastSnapshot = Math.max(lastSnapshot, snap.metadata.index);
      // Every entry still in the log, acknowledged or not, is exactly what was written.
      const entries = allEntries(store);
      expect(entries.length).toBe(store.lastIndex() - store.firstIndex() + 1);
      const boot = bootstrapLog(crashConf).entries;
      for (const e of entries) expect(e).toEqual(boot[e.index - 1] ?? expectedEntry(e.index));
      const hs = store.initialState().hardState;
      expect(hs.commit).toBeGreaterThanOrEqual(acked);
      expect(hs.commit).toBeLessThanOrEqual(store.lastIndex());
      expect(hs.term).toBe(termOf(hs.commit));
      await store.close();
      // Recovery left a clean tail: a second open has nothing to repair.
      const quiet = recordingLogger();
      const again = await DiskRaftStore.open(path, { log: quiet, segmentBytes: CRASH_SEGMENT_BYTES });
      expect(quiet.warnings).toEqual([]);
      await again.close();
    }
    // The rounds exercised snapshots, compaction and segment deletion, not just appends.
    expect(lastSnapshot).toBeGreaterThan(0);
    expect(readdirSync(path)).not.toContain(FIRST_SEGMENT);
  }, 30_000);
});
