import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Chunker, DEFAULT_CHUNKING, checkChunkingParams, chunkSizes, type ChunkingParams } from '../../src/checkpoint/index.ts';
import { isFabricError } from '../../src/core/index.ts';
import { pseudoRandomBytes, sha256 } from './util.ts';

/** Small parameters so that properties run over many chunks quickly. */
const SMALL: ChunkingParams = { minSize: 256, avgSize: 1024, maxSize: 4096 };

const bytes = pseudoRandomBytes;

/** Feeds `data` to a chunker in the given piece sizes (cycled); returns the chunks. */
function chunkInPieces(data: Uint8Array, pieces: number[], params: ChunkingParams): Uint8Array[] {
  const c = new Chunker(params);
  const out: Uint8Array[] = [];
  let off = 0;
  let k = 0;
  while (off < data.length) {
    const n = Math.max(1, pieces.length === 0 ? data.length : pieces[k++ % pieces.length]!);
    out.push(...c.push(data.subarray(off, off + n)));
    off += n;
  }
  out.push(...c.finish());
  return out;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const total = chunks.reduce((a, c) => a + c.length, 0);
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

const idOf = (c: Uint8Array): string => sha256(c);

describe('content-defined chunker', () => {
  it('reassembles to the input, with cut points that do not depend on how the bytes were fed', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 40_000 }), fc.array(fc.integer({ min: 1, max: 9_000 }), { maxLength: 8 }), (data, pieces) => {
        const whole = chunkInPieces(data, [], SMALL);
        const fed = chunkInPieces(data, pieces, SMALL);
        expect(concat(fed)).toEqual(data);
        expect(fed.map((c) => c.length)).toEqual(whole.map((c) => c.length));
      }),
      { numRuns: 200 },
    );
  });

  it('keeps every chunk within [min, max] except a shorter last one', () => {
    const data = bytes(300_000, 'sizes');
    const sizes = chunkSizes(data, SMALL);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(data.length);
    sizes.slice(0, -1).forEach((s) => {
      expect(s).toBeGreaterThanOrEqual(SMALL.minSize);
      expect(s).toBeLessThanOrEqual(SMALL.maxSize);
    });
    expect(sizes.at(-1)!).toBeLessThanOrEqual(SMALL.maxSize);
    // content-defined: not everything at the forced maximum
    expect(sizes.filter((s) => s < SMALL.maxSize).length).toBeGreaterThan(sizes.length / 2);
  });

  it('returns chunks the caller owns: reusing the pushed buffer does not change them', () => {
    const data = bytes(50_000, 'own');
    const block = Buffer.alloc(7_000);
    const c = new Chunker(SMALL);
    const chunks: Uint8Array[] = [];
    for (let off = 0; off < data.length; off += block.length) {
      const n = Math.min(block.length, data.length - off);
      block.set(data.subarray(off, off + n));
      chunks.push(...c.push(block.subarray(0, n)));
      block.fill(0xee);
    }
    chunks.push(...c.finish());
    expect(concat(chunks)).toEqual(data);
  });

  it('keeps most chunks when bytes are inserted near the start (unlike fixed-size chunks)', () => {
    const data = bytes(400_000, 'shift');
    const shifted = concat([data.subarray(0, 1_000), bytes(37, 'insert'), data.subarray(1_000)]);
    const before = new Set(chunkInPieces(data, [], SMALL).map(idOf));
    const after = chunkInPieces(shifted, [], SMALL).map(idOf);
    const kept = after.filter((id) => before.has(id)).length;
    expect(kept / after.length).toBeGreaterThan(0.9);
  });

  it('gives the same chunks for the same bytes (deterministic across instances)', () => {
    const data = bytes(100_000, 'det');
    expect(chunkInPieces(data, [3_333], SMALL).map(idOf)).toEqual(chunkInPieces(data, [], SMALL).map(idOf));
  });

  it('emits nothing for empty input and one chunk for input below the minimum', () => {
    expect(new Chunker(SMALL).finish()).toEqual([]);
    const c = new Chunker(SMALL);
    expect(c.push(new Uint8Array(100).fill(1))).toEqual([]);
    expect(c.finish().map((x) => x.length)).toEqual([100]);
  });

  it('uses 512 KiB .. 4 MiB chunks around 1 MiB by default', () => {
    expect(DEFAULT_CHUNKING).toEqual({ minSize: 512 * 1024, avgSize: 1024 * 1024, maxSize: 4 * 1024 * 1024 });
    const sizes = chunkSizes(bytes(8 * 1024 * 1024, 'default'));
    const avg = sizes.reduce((a, b) => a + b, 0) / sizes.length;
    expect(avg).toBeGreaterThan(512 * 1024);
    expect(avg).toBeLessThan(3 * 1024 * 1024);
  });

  it('refuses parameters that cannot work', () => {
    for (const p of [
      { minSize: 1024, avgSize: 1024, maxSize: 4096 },
      { minSize: 256, avgSize: 1000, maxSize: 4096 },
      { minSize: 256, avgSize: 1024, maxSize: 1024 },
      { minSize: 256, avgSize: 1024, maxSize: 64 * 1024 * 1024 },
    ]) {
      let err: unknown;
      try {
        checkChunkingParams(p);
      } catch (e) {
        err = e;
      }
      expect(isFabricError(err, 'BAD_INPUT')).toBe(true);
    }
  });
});
