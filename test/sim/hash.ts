/**
 * Small non-cryptographic hashes for the simulation: entry chains (log matching), state-machine
 * digests and the run's trace hash. Two independent 32-bit FNV-1a lanes give a 53-bit value that
 * fits a JS number exactly, so accidental collisions are out of the question for a run's size.
 */

const FNV_OFFSET_A = 0x811c9dc5;
const FNV_OFFSET_B = 0x01000193 ^ 0x5bd1e995;
const FNV_PRIME = 0x01000193;

/** A running 53-bit hash; feed it numbers, strings and bytes. */
export class Hasher {
  #a = FNV_OFFSET_A;
  #b = FNV_OFFSET_B;

  byte(x: number): this {
    this.#a = Math.imul(this.#a ^ (x & 0xff), FNV_PRIME) >>> 0;
    this.#b = Math.imul(this.#b ^ ((x + 0x5f) & 0xff), 0x01000197) >>> 0;
    return this;
  }

  /** Any safe integer (negative ones too), as 8 bytes. */
  int(x: number): this {
    const lo = x >>> 0;
    const hi = Math.floor(x / 0x1_0000_0000) >>> 0;
    for (let s = 0; s < 32; s += 8) this.byte(lo >>> s);
    for (let s = 0; s < 32; s += 8) this.byte(hi >>> s);
    return this;
  }

  bytes(data: Uint8Array): this {
    this.int(data.length);
    for (let i = 0; i < data.length; i++) this.byte(data[i]!);
    return this;
  }

  str(s: string): this {
    this.int(s.length);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      this.byte(c);
      this.byte(c >>> 8);
    }
    return this;
  }

  /** The 53-bit digest (does not reset). */
  digest(): number {
    return (this.#a & 0x1fffff) * 0x1_0000_0000 + this.#b;
  }
}

/** Hash of a log prefix: chain(i) = H(chain(i-1), term, type, data). Equal chains ⇒ equal prefixes. */
export function chainHash(previous: number, term: number, type: string, data: Uint8Array): number {
  return new Hasher().int(previous).int(term).str(type).bytes(data).digest();
}

export function bytesHash(data: Uint8Array): number {
  return new Hasher().bytes(data).digest();
}
