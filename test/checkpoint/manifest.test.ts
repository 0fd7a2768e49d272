import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_CHUNKING,
  ManifestBuilder,
  addedChunks,
  canonicalJson,
  decodeManifest,
  encodeManifest,
  manifestChunks,
  manifestId,
  manifestIdOf,
  missingChunks,
  pathProblem,
  uniqueChunkBytes,
  type ChunkRef,
  type Manifest,
} from '../../src/checkpoint/index.ts';
import { isFabricError } from '../../src/core/index.ts';
import { sha256 } from './util.ts';

const META = { jobId: 'job-1', step: 7, epoch: 3, chunking: DEFAULT_CHUNKING };
const id = (s: string): string => sha256(s);

function sample(): Manifest {
  const b = new ManifestBuilder();
  b.addDir('opt', 0o755);
  b.addFile('opt/state.bin', 0o644, [
    [id('a'), 100],
    [id('b'), 50],
  ]);
  b.addFile('model.bin', 0o600, [
    [id('c'), 10],
    [id('a'), 100],
  ]);
  b.addFile('empty', 0o644, []);
  b.addSymlink('latest', 'model.bin');
  return b.build(META);
}

function expectCode(fn: () => unknown, code: 'BAD_INPUT' | 'CORRUPT_STORAGE', message?: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isFabricError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
  if (message) expect(String((err as Error).message)).toMatch(message);
}

/** A manifest as written by hand (bypassing the builder), for the decoder's checks. */
function raw(over: Omit<Partial<Manifest>, 'entries'> & { entries: unknown[] }): Uint8Array {
  const m = { format: 'fabric-checkpoint/1', jobId: 'j', step: 0, epoch: 0, chunking: { algorithm: 'gear-cdc-1', ...DEFAULT_CHUNKING }, totalBytes: 0, ...over };
  return new TextEncoder().encode(canonicalJson(m));
}

describe('manifest', () => {
  it('builds sorted entries with sizes and the total, and round-trips through its canonical bytes', () => {
    const m = sample();
    expect(m.entries.map((e) => e.path)).toEqual(['empty', 'latest', 'model.bin', 'opt', 'opt/state.bin']);
    expect(m.totalBytes).toBe(260);
    const bytes = encodeManifest(m);
    expect(decodeManifest(bytes, manifestIdOf(bytes))).toEqual(m);
    expect(manifestId(m)).toBe(sha256(bytes));
  });

  it('has an id that does not depend on the order entries were added in', () => {
    const files = fc.uniqueArray(
      fc.record({
        path: fc.stringMatching(/^[a-z]{1,6}(\/[a-z]{1,6}){0,2}$/),
        mode: fc.integer({ min: 0, max: 0o777 }),
        chunks: fc.array(fc.tuple(fc.constantFrom('x', 'y', 'z', 'w'), fc.integer({ min: 1, max: 1000 })), { maxLength: 4 }),
      }),
      { selector: (f) => f.path, maxLength: 8 },
    );
    fc.assert(
      fc.property(files, fc.integer({ min: 0, max: 1000 }), (list, seed) => {
        // a path that is a prefix of another would need to be a directory: keep leaves only
        const leaves = list.filter((f) => !list.some((g) => g.path.startsWith(`${f.path}/`)));
        // the same chunk id must have the same size everywhere
        const sizeOf = new Map<string, number>();
        const norm = leaves.map((f) => ({ ...f, chunks: f.chunks.map(([c, s]) => [id(c), sizeOf.get(c) ?? (sizeOf.set(c, s), s)] as ChunkRef) }));
        const build = (order: typeof norm): string => {
          const b = new ManifestBuilder();
          for (const f of order) b.addFile(f.path, f.mode, f.chunks);
          return manifestId(b.build(META));
        };
        const shuffled = [...norm].sort((a, b) => ((a.path.length * 31 + seed) % 7) - ((b.path.length * 31 + seed) % 7) || (a.path < b.path ? 1 : -1));
        expect(build(shuffled)).toBe(build(norm));
      }),
      { numRuns: 100 },
    );
  });

  it('changes its id when anything in it changes', () => {
    const base = manifestId(sample());
    const b = new ManifestBuilder();
    b.addFile('model.bin', 0o600, [[id('c'), 10]]);
    const other = b.build(META);
    expect(manifestId(other)).not.toBe(base);
    expect(manifestId({ ...sample(), step: 8 })).not.toBe(base);
    expect(manifestId({ ...sample(), epoch: 4 })).not.toBe(base);
  });

  it('writes canonical JSON: sorted keys, no whitespace, integers only', () => {
    expect(canonicalJson({ b: 1, a: [true, null, 'x'], c: { z: 0, y: -2 } })).toBe('{"a":[true,null,"x"],"b":1,"c":{"y":-2,"z":0}}');
    expect(() => canonicalJson({ a: 1.5 })).toThrow(/integers/);
    expect(() => canonicalJson({ a: Number.NaN })).toThrow(/integers/);
  });

  it('refuses bytes that are not canonical, or do not match the expected id', () => {
    const m = sample();
    const bytes = encodeManifest(m);
    const spaced = new TextEncoder().encode(JSON.stringify(JSON.parse(new TextDecoder().decode(bytes)), null, 1));
    expectCode(() => decodeManifest(spaced), 'BAD_INPUT', /canonical/);
    expectCode(() => decodeManifest(bytes, id('other')), 'CORRUPT_STORAGE');
    expectCode(() => decodeManifest(new TextEncoder().encode('{not json')), 'BAD_INPUT', /JSON/);
  });

  it('refuses unsafe paths, paths under files or symlinks, escaping symlinks and sizes that do not add up', () => {
    const file = (path: string, chunks: ChunkRef[] = [], size?: number) => ({ type: 'file' as const, path, mode: 0o644, size: size ?? chunks.reduce((a, [, s]) => a + s, 0), chunks });
    expectCode(() => decodeManifest(raw({ entries: [file('/etc/passwd')] })), 'BAD_INPUT');
    expectCode(() => decodeManifest(raw({ entries: [file('a/../../x')] })), 'BAD_INPUT');
    expectCode(() => decodeManifest(raw({ entries: [file('a//b')] })), 'BAD_INPUT');
    expectCode(() => decodeManifest(raw({ entries: [{ type: 'symlink', path: 'l', target: '/etc' }, file('l/passwd')] })), 'BAD_INPUT');
    expectCode(() => decodeManifest(raw({ entries: [file('a'), file('a/b')] })), 'BAD_INPUT', /ancestor/);
    expectCode(() => decodeManifest(raw({ entries: [{ type: 'symlink', path: 'sub/l', target: '../../x' }] })), 'BAD_INPUT', /leaves/);
    expectCode(() => decodeManifest(raw({ entries: [file('x', [[id('a'), 10]], 11)], totalBytes: 11 })), 'BAD_INPUT', /add up/);
    expectCode(() => decodeManifest(raw({ entries: [file('x', [[id('a'), 10]])], totalBytes: 9 })), 'BAD_INPUT', /totalBytes/);
    expectCode(() => decodeManifest(raw({ entries: [file('b'), file('a')] })), 'BAD_INPUT', /sorted/);
    expectCode(() => decodeManifest(raw({ entries: [file('a'), file('a')] })), 'BAD_INPUT', /sorted/);
    // a symlink may point anywhere inside
    expect(decodeManifest(raw({ entries: [{ type: 'symlink', path: 'sub/l', target: '../x' }] })).entries).toHaveLength(1);
  });

  it('says why a path is unsafe', () => {
    expect(pathProblem('a/b.bin')).toBeUndefined();
    expect(pathProblem('')).toBe('empty');
    expect(pathProblem('/a')).toBe('absolute');
    expect(pathProblem('a/./b')).toMatch(/"\."/);
    expect(pathProblem('a/\0')).toMatch(/NUL/);
    expect(() => new ManifestBuilder().addFile('../x', 0o644, [])).toThrow(/segment/);
  });

  it('lists distinct chunks once, in first-use order, with their bytes', () => {
    const m = sample();
    expect([...manifestChunks(m)]).toEqual([
      [id('c'), 10],
      [id('a'), 100],
      [id('b'), 50],
    ]);
    expect(uniqueChunkBytes(m)).toBe(160);
  });

  it('diff: a holder lacks exactly the distinct chunks it does not hold', () => {
    const refs = fc.array(fc.tuple(fc.integer({ min: 0, max: 30 }), fc.integer({ min: 1, max: 5000 })), { maxLength: 40 });
    fc.assert(
      fc.property(refs, fc.uniqueArray(fc.integer({ min: 0, max: 30 })), (list, heldNums) => {
        const sizeOf = new Map<number, number>();
        const chunks = list.map(([n, s]) => [id(String(n)), sizeOf.get(n) ?? (sizeOf.set(n, s), s)] as ChunkRef);
        const b = new ManifestBuilder();
        b.addFile('f', 0o644, chunks);
        const m = b.build(META);
        const held = new Set(heldNums.map((n) => id(String(n))));
        const missing = missingChunks(m, (c) => held.has(c));
        const expected: ChunkRef[] = [];
        const seen = new Set<string>();
        for (const [c, s] of chunks) {
          if (held.has(c) || seen.has(c)) continue;
          seen.add(c);
          expected.push([c, s]);
        }
        expect(missing).toEqual(expected);
      }),
      { numRuns: 200 },
    );
  });

  it('addedChunks: what a new checkpoint adds to the previous one', () => {
    const prev = sample();
    const b = new ManifestBuilder();
    b.addFile('model.bin', 0o600, [
      [id('c'), 10],
      [id('d'), 20],
    ]);
    b.addFile('opt/state.bin', 0o644, [[id('b'), 50]]);
    const next = b.build({ ...META, step: 8 });
    expect(addedChunks(prev, next)).toEqual([[id('d'), 20]]);
    expect(addedChunks(undefined, next)).toHaveLength(3);
  });
});
