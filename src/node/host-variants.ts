/**
 * host.ts's libp2p host with another connection protector, to compare transports side by side
 * (the replication benchmark's `--transport`, the protector tests):
 *
 *   fabric-psk       host.ts as it is: fabric-psk in `encrypt` mode (AES-256-CTR under Noise)
 *   fabric-psk-auth  fabric-psk in `authenticate` mode: the swarm-key proof, then Noise alone
 *   pnet             @libp2p/pnet (xsalsa20 WASM), what host.ts had before psk-protector.ts; it
 *                    is slower and can crash the process on bulk data (see psk-protector.ts)
 *
 * Everything but the protector (Noise crypto, muxer, services, connection limits) is host.ts's;
 * keep the two in step. The daemon itself always uses createHost.
 */
import { createLibp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@libp2p/noise';
import { yamux } from '@libp2p/yamux';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { preSharedKey } from '@libp2p/pnet';
import { gossipsub } from '@libp2p/gossipsub';
import { createHost, type FabricHost, type HostOptions } from './host.ts';
import { swarmKeyFileText } from './identity.ts';
import { nodeNoiseCrypto } from './noise-crypto.ts';
import { fabricPsk } from './psk-protector.ts';

export const HOST_VARIANTS = ['fabric-psk', 'fabric-psk-auth', 'pnet'] as const;
export type HostVariant = (typeof HOST_VARIANTS)[number];

export function isHostVariant(v: string): v is HostVariant {
  return (HOST_VARIANTS as readonly string[]).includes(v);
}

export async function createHostVariant(opts: HostOptions, variant: HostVariant): Promise<FabricHost> {
  if (variant === 'fabric-psk') return createHost(opts);
  const connectionProtector =
    variant === 'pnet' ? preSharedKey({ psk: new TextEncoder().encode(swarmKeyFileText(opts.swarmKey)) }) : fabricPsk({ swarmKey: opts.swarmKey, mode: 'authenticate' });
  return createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: opts.listen },
    transports: [tcp()],
    connectionEncrypters: [noise({ crypto: nodeNoiseCrypto })],
    streamMuxers: [yamux()],
    connectionProtector,
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
