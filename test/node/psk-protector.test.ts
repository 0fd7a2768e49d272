/**
 * The fabric-psk connection protector (both modes) and the OpenSSL Noise cipher, on real hosts
 * over loopback TCP: host.ts's host, and its variants of host-variants.ts.
 */
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { Libp2p, Stream } from '@libp2p/interface';
import { noise } from '@libp2p/noise';
import { tcp } from '@libp2p/tcp';
import { yamux } from '@libp2p/yamux';
import { createLibp2p } from 'libp2p';
import { afterAll, describe, expect, it } from 'vitest';
import { createHostVariant } from '../../src/node/host-variants.ts';
import { newSwarmKey } from '../../src/node/identity.ts';
import { fabricPsk, type PskMode } from '../../src/node/psk-protector.ts';
import { pseudoRandomBytes, sha256 } from '../checkpoint/util.ts';

const ECHO = '/fabric-test/sink/1';
const hosts: Libp2p[] = [];
afterAll(async () => {
  for (const h of hosts) await h.stop();
});

async function tuned(swarmKey: Uint8Array, pskMode: PskMode = 'encrypt'): Promise<Libp2p> {
  const h = await createHostVariant({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] }, pskMode === 'encrypt' ? 'fabric-psk' : 'fabric-psk-auth');
  hosts.push(h);
  return h;
}

/** A plain host with stock Noise crypto and the fabric-psk protector. */
async function plainNoise(swarmKey: Uint8Array): Promise<Libp2p> {
  const h = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: fabricPsk({ swarmKey }),
  });
  hosts.push(h);
  return h;
}

/** Serves a protocol that hashes everything it receives and answers with the hex digest. */
async function serveDigest(h: Libp2p): Promise<void> {
  await h.handle(ECHO, async (stream) => {
    const { createHash } = await import('node:crypto');
    const hash = createHash('sha256');
    for await (const chunk of stream) {
      if (chunk instanceof Uint8Array) hash.update(chunk);
      else for (const b of chunk) hash.update(b);
    }
    stream.send(new TextEncoder().encode(hash.digest('hex')));
    await stream.close().catch(() => {});
  });
}

/** Sends `data` in 1 MiB writes (waiting for drain) and returns the receiver's digest. */
async function sendAndDigest(from: Libp2p, to: Libp2p, data: Uint8Array): Promise<string> {
  const stream: Stream = await from.dialProtocol(to.getMultiaddrs(), ECHO, { signal: AbortSignal.timeout(10_000) });
  for (let off = 0; off < data.length; off += 1 << 20) {
    if (!stream.send(data.subarray(off, off + (1 << 20)))) {
      await new Promise<void>((resolve, reject) => {
        stream.addEventListener('drain', () => resolve(), { once: true });
        stream.addEventListener('close', () => reject(new Error('closed while waiting for drain')), { once: true });
      });
    }
  }
  // close() ends our writable end; the answer still comes back on the readable end
  const closing = stream.close();
  let reply = '';
  for await (const chunk of stream) reply += new TextDecoder().decode(chunk instanceof Uint8Array ? chunk : chunk.subarray());
  await closing;
  return reply;
}

describe('fabric-psk protector', () => {
  const key = newSwarmKey();

  it('carries bulk data intact over several connections at once (pnet\'s xsalsa20 crashed here)', async () => {
    const a = await tuned(key);
    const b = await tuned(key);
    const c = await tuned(key);
    await serveDigest(b);
    await serveDigest(c);
    const data = pseudoRandomBytes(24 * 1024 * 1024, 'bulk');
    const [db, dc] = await Promise.all([sendAndDigest(a, b, data), sendAndDigest(a, c, data)]);
    expect(db).toBe(sha256(data));
    expect(dc).toBe(sha256(data));
  });

  it('interoperates with stock Noise crypto (same cipher, same bytes on the wire)', async () => {
    const a = await tuned(key);
    const b = await plainNoise(key);
    await serveDigest(a);
    await serveDigest(b);
    const data = pseudoRandomBytes(3 * 1024 * 1024 + 17, 'interop');
    expect(await sendAndDigest(a, b, data)).toBe(sha256(data));
    expect(await sendAndDigest(b, a, data)).toBe(sha256(data));
  });

  /** The dial error with its causes, as one string. */
  const explain = (err: unknown): string => {
    const parts: string[] = [];
    for (let e: unknown = err; e instanceof Error && parts.length < 5; e = (e as { cause?: unknown }).cause) parts.push(e.message);
    if (err instanceof AggregateError) for (const x of err.errors) parts.push(explain(x));
    return parts.join(' / ');
  };

  for (const mode of ['encrypt', 'authenticate'] as const) {
    it(`refuses a host with another swarm key, saying why (${mode})`, async () => {
      const a = await tuned(key, mode);
      const stranger = await tuned(newSwarmKey(), mode);
      await serveDigest(a);
      const err = await stranger.dial(a.getMultiaddrs(), { signal: AbortSignal.timeout(5_000) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(explain(err)).toMatch(/does not hold this fabric's swarm key/);
      expect(a.getConnections(stranger.peerId)).toHaveLength(0);
    });
  }

  it('in authenticate mode, proves the key and then carries bulk data under Noise alone', async () => {
    const a = await tuned(key, 'authenticate');
    const b = await tuned(key, 'authenticate');
    await serveDigest(b);
    const data = pseudoRandomBytes(8 * 1024 * 1024 + 5, 'auth-mode');
    expect(await sendAndDigest(a, b, data)).toBe(sha256(data));
  });

  it('refuses a peer that uses the other mode, naming both', async () => {
    const a = await tuned(key, 'encrypt');
    const b = await tuned(key, 'authenticate');
    await serveDigest(a);
    const err = await b.dial(a.getMultiaddrs(), { signal: AbortSignal.timeout(5_000) }).catch((e: unknown) => e);
    expect(explain(err)).toMatch(/mode encrypt, this host with authenticate/);
  });
});
