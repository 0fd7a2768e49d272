/**
 * A private-network connection protector to take the place of `@libp2p/pnet` in host.ts.
 *
 * Why. pnet's cipher is the `xsalsa20` package (WASM). It runs at about 440 MiB/s here, and it
 * has a memory bug (STACK.md): every instance keeps a view of the shared WASM memory, a view
 * goes stale when another instance grows the memory, and a stale instance grows it again on its
 * next input. Once inputs exceed the initial memory (~0.6 MiB: any bulk transfer, where yamux
 * and Noise hand the protector everything queued at once) and two connections exist, the memory
 * grows until `WebAssembly.Memory.grow()` throws inside a socket event handler, which takes the
 * whole daemon down.
 *
 * Handshake (both sides at once, one round trip each way):
 *   1. send  [mode byte][32-byte random nonce]
 *   2. on the peer's: refuse another mode, refuse our own nonce echoed back, then send
 *      proof = HMAC-SHA256(swarm key, "fabric-psk/1 proof" | role | own nonce | peer nonce)
 *   3. check the peer's proof (with its role): a peer without the key fails here, with an error
 *      that says so, before a single byte of Noise is exchanged. Proofs bind both fresh nonces,
 *      so a recorded handshake cannot be replayed.
 *
 * Modes (every daemon of a fabric must use the same one; a mismatch is refused by name):
 *   - `encrypt` (default, what pnet gives): every byte after the handshake is AES-256-CTR
 *     (OpenSSL, AES-NI), one key and IV per direction from HKDF-SHA256(swarm key, both nonces,
 *     sender role). Even the protocol negotiation and the Noise handshake are hidden.
 *   - `authenticate`: the key proof only, then the connection as it is. Noise inside still
 *     encrypts and authenticates every stream; what an eavesdropper can see is that it is
 *     libp2p (multistream-select and Noise handshake bytes), not what it carries. It saves one
 *     cipher pass and one buffer copy per byte on both ends, the cheapest way for bulk data.
 * The wire format is not pnet's: a fabric switches all its daemons at once.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual, type Cipheriv, type Decipheriv } from 'node:crypto';
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface';
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils';

export const PSK_PROTOCOL_INFO = 'fabric-psk/1';
export type PskMode = 'encrypt' | 'authenticate';
const MODE_BYTE: Record<PskMode, number> = { encrypt: 1, authenticate: 2 };
const NONCE_BYTES = 32;
const PROOF_BYTES = 32;
const HANDSHAKE_TIMEOUT_MS = 5_000;

type Role = 'dialer' | 'listener';

function proof(psk: Uint8Array, role: Role, ownNonce: Uint8Array, peerNonce: Uint8Array): Buffer {
  return createHmac('sha256', psk).update(`${PSK_PROTOCOL_INFO} proof ${role}`).update(ownNonce).update(peerNonce).digest();
}

function keyMaterial(psk: Uint8Array, dialerNonce: Uint8Array, listenerNonce: Uint8Array, senderRole: Role): { key: Buffer; iv: Buffer } {
  const salt = Buffer.concat([dialerNonce, listenerNonce]);
  const okm = Buffer.from(hkdfSync('sha256', psk, salt, `${PSK_PROTOCOL_INFO} stream ${senderRole}`, 48));
  return { key: okm.subarray(0, 32), iv: okm.subarray(32, 48) };
}

interface PskStreamInit {
  maConn: MultiaddrConnection;
  encrypt: Cipheriv;
  decrypt: Decipheriv;
}

/** The connection seen through the cipher: what the upgrader runs Noise over. */
class PskStream extends AbstractMultiaddrConnection {
  readonly #maConn: MultiaddrConnection;
  readonly #encrypt: Cipheriv;
  readonly #decrypt: Decipheriv;

  constructor(init: PskStreamInit) {
    super({ remoteAddr: init.maConn.remoteAddr, direction: init.maConn.direction, log: init.maConn.log.newScope('fabric-psk') });
    this.#maConn = init.maConn;
    this.#encrypt = init.encrypt;
    this.#decrypt = init.decrypt;
    this.#maConn.addEventListener('message', (evt) => {
      const data = evt.data;
      if (data instanceof Uint8Array) this.onData(this.#decrypt.update(data));
      else for (const buf of data) this.onData(this.#decrypt.update(buf));
    });
    this.#maConn.addEventListener('drain', () => this.onMuxerDrain());
    this.#maConn.addEventListener('close', (evt) => {
      if (evt.error !== undefined) {
        if (evt.local === true) this.abort(evt.error);
        else this.onRemoteReset();
      } else {
        this.onTransportClosed();
      }
    });
  }

  sendData(data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): { sentBytes: number; canSendMore: boolean } {
    // The keystream has advanced once encrypted: every byte is handed on, the inner
    // connection buffers what it cannot send yet and says so through canSendMore.
    let canSendMore = true;
    for (const buf of data) canSendMore = this.#maConn.send(this.#encrypt.update(buf)) && canSendMore;
    return { sentBytes: data.byteLength, canSendMore };
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    await this.#maConn.close(options);
  }

  sendReset(err: Error): void {
    this.#maConn.abort(err);
  }

  sendPause(): void {
    this.#maConn.pause();
  }

  sendResume(): void {
    this.#maConn.resume();
  }
}

function isMultiaddrConnection(s: MessageStream): s is MultiaddrConnection {
  return 'remoteAddr' in s;
}

class FabricPskProtector implements ConnectionProtector {
  readonly #psk: Uint8Array;
  readonly #mode: PskMode;
  readonly [Symbol.toStringTag] = 'fabric-psk';

  constructor(psk: Uint8Array, mode: PskMode) {
    if (psk.length !== 32) throw new Error(`swarm key must be 32 bytes, got ${psk.length}`);
    this.#psk = Uint8Array.from(psk);
    this.#mode = mode;
  }

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    const signal = options?.signal ?? AbortSignal.timeout(HANDSHAKE_TIMEOUT_MS);
    const localRole: Role = connection.direction === 'outbound' ? 'dialer' : 'listener';
    const remoteRole: Role = localRole === 'dialer' ? 'listener' : 'dialer';
    const localNonce = randomBytes(NONCE_BYTES);
    const bytes = byteStream(connection);

    const hello = Buffer.concat([Buffer.from([MODE_BYTE[this.#mode]]), localNonce]);
    const [peerHello] = await Promise.all([bytes.read({ bytes: 1 + NONCE_BYTES, signal }), bytes.write(hello, { signal })]);
    const peer = peerHello.subarray();
    const peerMode = Object.entries(MODE_BYTE).find(([, b]) => b === peer[0])?.[0];
    if (peerMode !== this.#mode) {
      throw new Error(`fabric-psk: the peer protects connections with mode ${peerMode ?? `#${String(peer[0])}`}, this host with ${this.#mode}`);
    }
    const remoteNonce = peer.subarray(1);
    if (timingSafeEqual(remoteNonce, localNonce)) throw new Error('fabric-psk: the peer echoed our nonce');

    const [peerProof] = await Promise.all([
      bytes.read({ bytes: PROOF_BYTES, signal }),
      bytes.write(proof(this.#psk, localRole, localNonce, remoteNonce), { signal }),
    ]);
    if (!timingSafeEqual(peerProof.subarray(), proof(this.#psk, remoteRole, remoteNonce, localNonce))) {
      throw new Error("fabric-psk: the peer does not hold this fabric's swarm key");
    }

    const inner = bytes.unwrap();
    if (!isMultiaddrConnection(inner)) throw new Error('fabric-psk: can only protect a multiaddr connection');
    if (this.#mode === 'authenticate') return inner;
    const dialerNonce = localRole === 'dialer' ? localNonce : remoteNonce;
    const listenerNonce = localRole === 'dialer' ? remoteNonce : localNonce;
    const out = keyMaterial(this.#psk, dialerNonce, listenerNonce, localRole);
    const inn = keyMaterial(this.#psk, dialerNonce, listenerNonce, remoteRole);
    return new PskStream({ maConn: inner, encrypt: createCipheriv('aes-256-ctr', out.key, out.iv), decrypt: createDecipheriv('aes-256-ctr', inn.key, inn.iv) });
  }
}

/** The protector factory for libp2p's `connectionProtector` option: `fabricPsk({ swarmKey })`. */
export function fabricPsk(init: { swarmKey: Uint8Array; mode?: PskMode }): () => ConnectionProtector {
  return () => new FabricPskProtector(init.swarmKey, init.mode ?? 'encrypt');
}
