/** Builds the libp2p host: TCP, Noise, Yamux, a private network (swarm key, psk-protector.ts), identify, ping, gossipsub. */
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@libp2p/noise';
import { yamux } from '@libp2p/yamux';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { gossipsub, type GossipSub } from '@libp2p/gossipsub';
import type { ConnectionProtector, PrivateKey } from '@libp2p/interface';
import type { Identify } from '@libp2p/identify';
import type { Ping } from '@libp2p/ping';
import { nodeNoiseCrypto } from './noise-crypto.ts';
import { fabricPsk } from './psk-protector.ts';

export type FabricHost = Libp2p<{ identify: Identify; ping: Ping; pubsub: GossipSub }>;

export interface HostOptions {
  privateKey: PrivateKey;
  swarmKey: Uint8Array;
  listen: string[];
  /** Another private-network protector (benchmarks comparing transports: host-variants.ts); default fabric-psk. */
  protector?: () => ConnectionProtector;
}

export async function createHost(opts: HostOptions): Promise<FabricHost> {
  return createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: opts.listen },
    transports: [tcp()],
    // Noise on OpenSSL's ChaCha20-Poly1305 with one key object per key (noise-crypto.ts).
    connectionEncrypters: [noise({ crypto: nodeNoiseCrypto })],
    streamMuxers: [yamux()],
    // A host without the fabric's swarm key cannot even complete a connection. Not @libp2p/pnet:
    // its xsalsa20 WASM cipher crashes the process once a connection carries bulk data while
    // another exists (STACK.md); psk-protector.ts does the same job on AES-256-CTR.
    connectionProtector: opts.protector ?? fabricPsk({ swarmKey: opts.swarmKey }),
    connectionManager: {
      maxConnections: 512,
      // Many daemons on one host dial each other at once (tests, `fabric demo`); the default
      // five per second per address resets those connections.
      inboundConnectionThreshold: 1000,
      maxIncomingPendingConnections: 256,
      dialTimeout: 5_000,
    },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        // States and suspicion announcements carry their own Ed25519 signature (src/gossip/codec.ts), which
        // also covers frames relayed by anti-entropy; a second gossipsub signature would only cost CPU.
        globalSignaturePolicy: 'StrictNoSign',
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        heartbeatInterval: 700,
        maxInboundDataLength: 512 * 1024,
        // Gossipsub's IP-colocation penalty (P6: -5 × (peers on one IP - 10)²) takes every peer
        // out of the mesh once more than 10 share an address, and graylists them all (nothing is
        // delivered) past 13: a fabric on one host, or behind one NAT, went deaf at 14 daemons.
        // The swarm key already keeps strangers out, so the Sybil guard buys nothing here.
        scoreParams: { IPColocationFactorWeight: 0 },
      }),
    },
  });
}
