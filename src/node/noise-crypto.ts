/**
 * Noise's cipher on Node's OpenSSL, tuned for bulk data: `noise({ crypto: nodeNoiseCrypto })`.
 *
 * `@libp2p/noise`'s default already uses OpenSSL's ChaCha20-Poly1305 for messages over 1200
 * bytes, but it imports the raw 32-byte key into a new OpenSSL key object for every message
 * (a 64 KiB Noise frame) and concatenates ciphertext and tag into a fresh buffer. Here the key
 * object is made once per key and reused, and the output is written into one buffer. Same
 * algorithm, same bytes on the wire: peers with and without it interoperate. The handshake's
 * X25519 and HKDF stay as they are (noise's pure-JS ones).
 */
import { createCipheriv, createDecipheriv, createHash, createSecretKey, type KeyObject } from 'node:crypto';
import { pureJsCrypto, type ICryptoInterface } from '@libp2p/noise';

type Bytes = Parameters<ICryptoInterface['hashSHA256']>[0];

const TAG_BYTES = 16;
/** One key object per Noise cipher key (CipherState keeps its key array until it rekeys). */
const keyObjects = new WeakMap<Uint8Array, KeyObject>();

function keyOf(k: Uint8Array): KeyObject {
  let ko = keyObjects.get(k);
  if (ko === undefined) {
    ko = createSecretKey(Uint8Array.from(k));
    keyObjects.set(k, ko);
  }
  return ko;
}

function parts(data: Bytes): Iterable<Uint8Array> {
  return data instanceof Uint8Array ? [data] : data;
}

function flat(data: Bytes): Uint8Array {
  return data instanceof Uint8Array ? data : data.subarray();
}

export const nodeNoiseCrypto: ICryptoInterface = {
  ...pureJsCrypto,
  hashSHA256(data) {
    const h = createHash('sha256');
    for (const p of parts(data)) h.update(p);
    return h.digest();
  },
  chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
    const cipher = createCipheriv('chacha20-poly1305', keyOf(k), nonce, { authTagLength: TAG_BYTES });
    cipher.setAAD(ad, { plaintextLength: plaintext.byteLength });
    const out = Buffer.allocUnsafe(plaintext.byteLength + TAG_BYTES);
    let off = 0;
    for (const p of parts(plaintext)) off += cipher.update(p).copy(out, off);
    off += cipher.final().copy(out, off);
    cipher.getAuthTag().copy(out, off);
    return out;
  },
  chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k) {
    const ct = flat(ciphertext);
    if (ct.byteLength < TAG_BYTES) throw new Error('Invalid chacha20poly1305 decryption');
    const decipher = createDecipheriv('chacha20-poly1305', keyOf(k), nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(ad, { plaintextLength: ct.byteLength - TAG_BYTES });
    decipher.setAuthTag(ct.subarray(ct.byteLength - TAG_BYTES));
    const body = decipher.update(ct.subarray(0, ct.byteLength - TAG_BYTES));
    // final() throws when the tag does not verify
    const rest = decipher.final();
    return rest.byteLength === 0 ? body : Buffer.concat([body, rest]);
  },
};
