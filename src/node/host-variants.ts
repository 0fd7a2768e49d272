/**
 * host.ts's libp2p host with another connection protector, to compare transports side by side
 * (the replication benchmark's `--transport`, the protector tests):
 *
 *   fabric-psk       host.ts as it is: fabric-psk in `encrypt` mode (AES-256-CTR under Noise)
 *   fabric-psk-auth  fabric-psk in `authenticate` mode: the swarm-key proof, then Noise alone
 *   pnet             @libp2p/pnet (xsalsa20 WASM), what host.ts had before psk-protector.ts; it
 *                    is slower and can crash the process on bulk data (see psk-protector.ts)
 *
 * Everything but the protector (Noise crypto, muxer, services, connection limits) is host.ts's
 * own: createHost with another `protector`. The daemon itself always uses the default.
 */
import { preSharedKey } from '@libp2p/pnet';
import { createHost, type FabricHost, type HostOptions } from './host.ts';
import { swarmKeyFileText } from './identity.ts';
import { fabricPsk } from './psk-protector.ts';

export const HOST_VARIANTS = ['fabric-psk', 'fabric-psk-auth', 'pnet'] as const;
export type HostVariant = (typeof HOST_VARIANTS)[number];

export function isHostVariant(v: string): v is HostVariant {
  return (HOST_VARIANTS as readonly string[]).includes(v);
}

export async function createHostVariant(opts: HostOptions, variant: HostVariant): Promise<FabricHost> {
  if (variant === 'fabric-psk') return createHost(opts);
  const protector =
    variant === 'pnet' ? preSharedKey({ psk: new TextEncoder().encode(swarmKeyFileText(opts.swarmKey)) }) : fabricPsk({ swarmKey: opts.swarmKey, mode: 'authenticate' });
  return createHost({ ...opts, protector });
}
