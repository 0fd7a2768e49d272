/**
 * A private-network connection protector on AES-256-CTR (OpenSSL, AES-NI), to take the place of
 * `@libp2p/pnet` in host.ts.
 *
 * Why. pnet's cipher is the `xsalsa20` package (WASM). It runs at about 440 MiB/s here, and it
 * has a memory bug (STACK.md): every instance keeps a view of the shared WASM memory, a view
 * goes stale when another instance grows the memory, and a stale instance grows it again on its
 * next input. Once inputs exceed the initial memory (~0.6 MiB: any bulk transfer, where yamux
 * and Noise hand the protector everything queued at once) and two connections exist, the memory
 * grows until `WebAssembly.Memory.grow()` throws inside a socket event handler, which takes the
 * whole daemon down. Checkpoint replication triggers it within a second.
 *
 * What it keeps. Like pnet, every byte after a short handshake is encrypted with a stream cipher
 * keyed from the pre-shared swarm key, so a host without the key cannot even negotiate a
 * protocol, and Noise inside provides authentication and integrity.
 *
 * Handshake. Each side sends 32 random bytes (its nonce) and then the first 16 bytes of its
 * encrypted stream, which are a fixed confirmation block. Each direction's key and IV are
 * HKDF-SHA256(swarm key, salt = the sender's nonce, info = "fabric-psk/1 " + the sender's role),
 * so the two directions never share a keystream and a reflected handshake does not confirm.
 * A peer with another key fails the confirmation at once with a clear error, instead of the
 * garbled Noise handshake pnet gives. The wire format differs from pnet's: every daemon of a
 * fabric must use the same protector.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, timingSafeEqual, type Cipheriv, type Decipheriv } from 'node:crypto';
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface';
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils';

export const PSK_PROTOCOL_INFO = 'fabric-psk/1';
const NONCE_BYTES = 32;
const CONFIRM = new TextEncoder().encode('fabric-psk/1 ok!'); // 16 bytes
const HANDSHAKE_TIMEOUT_MS = 5_000;

type Role = 'dialer' | 'listener';

function keyMaterial(psk: Uint8Array, nonce: Uint8Array, senderRole: Role): { key: Buffer; iv: Buffer } {
  const okm = Buffer.from(hkdfSync('sha256', psk, nonce, `${PSK_PROTOCOL_INFO} ${senderRole}`, 48));
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
  readonly [Symbol.toStringTag] = 'fabric-psk';

  constructor(psk: Uint8Array) {
    if (psk.length !== 32) throw new Error(`swarm key must be 32 bytes, got ${psk.length}`);
    this.#psk = Uint8Array.from(psk);
  }

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    const signal = options?.signal ?? AbortSignal.timeout(HANDSHAKE_TIMEOUT_MS);
    const localRole: Role = connection.direction === 'outbound' ? 'dialer' : 'listener';
    const remoteRole: Role = localRole === 'dialer' ? 'listener' : 'dialer';
    const localNonce = randomBytes(NONCE_BYTES);
    const out = keyMaterial(this.#psk, localNonce, localRole);
    const encrypt = createCipheriv('aes-256-ctr', out.key, out.iv);
    const hello = Buffer.concat([localNonce, encrypt.update(CONFIRM)]);

    const bytes = byteStream(connection);
    const [reply] = await Promise.all([bytes.read({ bytes: NONCE_BYTES + CONFIRM.length, signal }), bytes.write(hello, { signal })]);
    const remote = reply.subarray();
    const remoteNonce = remote.subarray(0, NONCE_BYTES);
    if (timingSafeEqual(remoteNonce, localNonce)) throw new Error('fabric-psk: the peer echoed our nonce');
    const inn = keyMaterial(this.#psk, remoteNonce, remoteRole);
    const decrypt = createDecipheriv('aes-256-ctr', inn.key, inn.iv);
    const confirm = decrypt.update(remote.subarray(NONCE_BYTES));
    if (!timingSafeEqual(confirm, CONFIRM)) {
      throw new Error('fabric-psk: the peer does not hold this fabric\'s swarm key');
    }
    const inner = bytes.unwrap();
    if (!isMultiaddrConnection(inner)) throw new Error('fabric-psk: can only protect a multiaddr connection');
    return new PskStream({ maConn: inner, encrypt, decrypt });
  }
}

/** The protector factory for libp2p's `connectionProtector` option: `fabricPsk({ swarmKey })`. */
export function fabricPsk(init: { swarmKey: Uint8Array }): () => ConnectionProtector {
  return () => new FabricPskProtector(init.swarmKey);
}
