/** Helpers shared by the checkpoint tests. */
import { createCipheriv, createHash } from 'node:crypto';

/** Deterministic pseudo-random bytes (an AES-CTR keystream keyed by the seed). */
export function pseudoRandomBytes(n: number, seed: string): Uint8Array {
  const key = createHash('sha256').update(seed).digest();
  return new Uint8Array(createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n)));
}

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}
