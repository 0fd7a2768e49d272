/**
 * Content-defined chunking (a gear-hash chunker in the manner of FastCDC, with normalized
 * chunk sizes).
 *
 * Why content-defined and not fixed-size: a checkpoint file whose bytes shift (a pickled header
 * that grows by a byte because the step number got a digit longer, a tensor inserted in the
 * middle of a zip) would change every fixed-size chunk after the shift, and the whole file would
 * travel again. Cut points chosen from the content itself move with the bytes, so only the
 * chunks around a change are new. The price is a scan of most bytes with a rolling hash (about
 * 600 MiB/s here); the first `minSize` bytes of each chunk are skipped, never hashed.
 *
 * The rolling hash is the gear hash: h = (h << 1) + GEAR[byte], 32 bits. Bit k of h depends on
 * the last k + 1 bytes only, so testing the high bits tests a window of about 32 bytes. Between
 * `minSize` and `avgSize` a cut needs more zero bits (it is rarer), after `avgSize` fewer (it
 * comes sooner), which narrows the spread of sizes around the average; `maxSize` forces a cut.
 *
 * Every file is chunked on its own (the chunker restarts at each file), so a change in one file
 * never moves the cut points of another. The gear table and the masks are part of the format
 * (`CHUNKING_ALGORITHM`): changing them changes every cut point and with it all deduplication
 * against older checkpoints, though never correctness.
 */
import { createHash } from 'node:crypto';
import { FabricError } from '../core/index.ts';

export const CHUNKING_ALGORITHM = 'gear-cdc-1';

export interface ChunkingParams {
  /** No cut before this many bytes (the last chunk of a file may be shorter). */
  minSize: number;
  /** A power of two: the size the cut probabilities are tuned around. */
  avgSize: number;
  /** A cut is forced here. */
  maxSize: number;
}

/** 512 KiB .. 4 MiB around 1 MiB: large enough that a 1 GiB checkpoint is ~900 chunks and each frame on the wire is big, small enough that a change costs about a megabyte. */
export const DEFAULT_CHUNKING: Readonly<ChunkingParams> = Object.freeze({ minSize: 512 * 1024, avgSize: 1024 * 1024, maxSize: 4 * 1024 * 1024 });

/** The largest chunk any manifest may list: caps frames and buffers. */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;

export function checkChunkingParams(p: ChunkingParams): void {
  const ok =
    Number.isInteger(p.minSize) &&
    Number.isInteger(p.avgSize) &&
    Number.isInteger(p.maxSize) &&
    p.minSize >= 64 &&
    p.avgSize >= 256 &&
    (p.avgSize & (p.avgSize - 1)) === 0 &&
    p.minSize < p.avgSize &&
    p.avgSize < p.maxSize &&
    p.maxSize <= MAX_CHUNK_BYTES;
  if (!ok) {
    throw new FabricError('BAD_INPUT', `bad chunking parameters ${JSON.stringify(p)}: need 64 <= min < avg (a power of two, >= 256) < max <= ${MAX_CHUNK_BYTES}`);
  }
}

/** 256 fixed pseudo-random 32-bit values, derived from SHA-256 so that they need no table in the source. */
const GEAR: Int32Array = (() => {
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    const d = createHash('sha256').update(`fabric gear ${i}`).digest();
    table[i] = d.readInt32LE(0);
  }
  return table;
})();

/** The top `bits` bits of a 32-bit word set. */
function topBits(bits: number): number {
  const b = Math.max(1, Math.min(31, bits));
  return (~0 << (32 - b)) | 0;
}

interface Masks {
  /** Harder: used between minSize and avgSize. */
  small: number;
  /** Easier: used from avgSize to maxSize. */
  large: number;
}

function masksFor(p: ChunkingParams): Masks {
  const bits = Math.round(Math.log2(p.avgSize));
  return { small: topBits(bits + 2), large: topBits(bits - 2) };
}

/**
 * Streaming chunker: push bytes as they are read, take the chunks they complete. Every chunk
 * returned is a fresh buffer the caller owns (each byte is copied once); the pushed buffer may
 * be reused by the caller as soon as `push` returns. Memory held: less than `maxSize` bytes.
 */
export class Chunker {
  readonly #p: ChunkingParams;
  readonly #masks: Masks;
  /** Copies of the bytes of the current chunk that earlier pushes delivered. */
  #pending: Uint8Array[] = [];
  /** Length of the current chunk so far (bytes in #pending). */
  #pos = 0;
  #h = 0;

  constructor(params: ChunkingParams = DEFAULT_CHUNKING) {
    checkChunkingParams(params);
    this.#p = { ...params };
    this.#masks = masksFor(params);
  }

  /** Feeds `data`; returns the chunks completed by it, in order. */
  push(data: Uint8Array): Uint8Array[] {
    const { minSize, avgSize, maxSize } = this.#p;
    const { small, large } = this.#masks;
    const out: Uint8Array[] = [];
    const n = data.length;
    // data[segStart..] continues the current chunk, which already holds #pos bytes.
    let segStart = 0;
    let i = 0;
    let h = this.#h;
    while (i < n) {
      // Index in `data` of chunk offsets min, avg and max.
      const base = segStart - this.#pos;
      const minIdx = base + minSize;
      if (i < minIdx) {
        i = Math.min(n, minIdx);
        continue;
      }
      let cut = -1;
      const avgEnd = Math.min(n, base + avgSize);
      for (; i < avgEnd; i++) {
        h = ((h << 1) + GEAR[data[i]!]!) | 0;
        if ((h & small) === 0) {
          cut = i + 1;
          break;
        }
      }
      if (cut < 0) {
        const maxIdx = base + maxSize;
        const maxEnd = Math.min(n, maxIdx);
        for (; i < maxEnd; i++) {
          h = ((h << 1) + GEAR[data[i]!]!) | 0;
          if ((h & large) === 0) {
            cut = i + 1;
            break;
          }
        }
        if (cut < 0 && i === maxIdx) cut = maxIdx;
      }
      if (cut < 0) break; // need more bytes
      out.push(this.#take(data.subarray(segStart, cut)));
      segStart = cut;
      i = cut;
      h = 0;
    }
    if (segStart < n) {
      this.#pending.push(copyOf(data.subarray(segStart, n)));
      this.#pos += n - segStart;
    }
    this.#h = h;
    return out;
  }

  /** Ends the input: returns the last, possibly short, chunk (none when nothing is pending). */
  finish(): Uint8Array[] {
    if (this.#pos === 0) return [];
    const last = this.#take(new Uint8Array(0));
    this.#h = 0;
    return [last];
  }

  /** The current chunk: what is pending plus `tail`; resets the pending state. */
  #take(tail: Uint8Array): Uint8Array {
    let chunk: Uint8Array;
    if (this.#pending.length === 0) {
      chunk = copyOf(tail);
    } else {
      chunk = new Uint8Array(this.#pos + tail.length);
      let off = 0;
      for (const piece of this.#pending) {
        chunk.set(piece, off);
        off += piece.length;
      }
      chunk.set(tail, off);
    }
    this.#pending = [];
    this.#pos = 0;
    return chunk;
  }
}

/** A copy (Buffer's `slice` is a view, so `slice` on a Uint8Array that may be a Buffer is not one). */
function copyOf(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  return out;
}

/** Cuts a whole buffer; the sizes of its chunks in order (sum = data.length). */
export function chunkSizes(data: Uint8Array, params: ChunkingParams = DEFAULT_CHUNKING): number[] {
  const c = new Chunker(params);
  const sizes: number[] = [];
  for (const chunk of c.push(data)) sizes.push(chunk.length);
  for (const chunk of c.finish()) sizes.push(chunk.length);
  return sizes;
}
