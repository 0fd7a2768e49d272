/**
 * The libp2p host of host.ts with the transport changes that bulk checkpoint traffic needs:
 *
 *   - the private network protected by `fabricPsk` (AES-256-CTR, psk-protector.ts) instead of
 *     `@libp2p/pnet`, whose xsalsa20 WASM cipher is slow (~440 MiB/s) and crashes the process
 *     (`WebAssembly.Memory.grow(): Maximum memory size exceeded`) once a connection carries
 *     bulk data while another connection exists;
 *   - Noise with `nodeNoiseCrypto` (noise-crypto.ts): the same cipher, one OpenSSL key object per
 *     key instead of one per 64 KiB frame.
 *
 * Everything else (services, connection limits, gossipsub settings) is host.ts's. This file is
 * the proposal for host.ts: once host.ts builds its host this way, it goes away and its users
 * (the replication benchmark, the checkpoint transfer tests) call createHost.
 */
import { createLibp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@libp2p/noise';
import { yamux } from '@libp2p/yamux';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { gossipsub } from '@libp2p/gossipsub';
import type { FabricHost, HostOptions } from './host.ts';
import { nodeNoiseCrypto } from './noise-crypto.ts';
import { fabricPsk } from './psk-protector.ts';

export async function createTunedHost(opts: HostOptions): Promise<FabricHost> {
  return createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: opts.listen },
    transports: [tcp()],
    connectionEncrypters: [noise({ crypto: nodeNoiseCrypto })],
    streamMuxers: [yamux()],
    connectionProtector: fabricPsk({ swarmKey: opts.swarmKey }),
    connectionManager: {
      maxConnections: 512,
      inboundConnectionThreshold: 1000,
      maxIncomingPendingConnections: 256,
      dialTimeout: 5_000,
    },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        globalSignaturePolicy: 'StrictNoSign',
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        heartbeatInterval: 700,
        maxInboundDataLength: 512 * 1024,
        scoreParams: { IPColocationFactorWeight: 0 },
      }),
    },
  });
}
