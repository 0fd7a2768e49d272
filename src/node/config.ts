/** The daemon's configuration (`config.json`) and its small persistent state (`state.json`). */
import { multiaddr } from '@multiformats/multiaddr';
import { z } from 'zod';
import { NodeLabelsSchema } from '../gossip/state.ts';

/** Long enough that a reboot or a daemon upgrade does not cost a voter, short enough to heal the same hour. */
export const DEFAULT_DEAD_VOTER_GRACE_MS = 30_000;

export const DaemonConfigSchema = z.object({
  v: z.literal(1),
  fabricId: z.string().min(1).max(64),
  listen: z.array(z.string().min(1)).min(1),
  apiPort: z.number().int().min(0).max(65535),
  /** TCP port for checkpoint data (bulk channels) on the listen address's IP: 0 any free one, 'off' libp2p only. */
  bulkPort: z.union([z.number().int().min(0).max(65535), z.literal('off')]).default(0),
  labels: NodeLabelsSchema,
  /** Bootstrap multiaddrs from the join token (empty for the peer that ran `fabric init`). */
  bootstrap: z.array(z.string()),
  simulateGpus: z.string().optional(),
  nvidiaSmi: z.string().optional(),
  rocmSmi: z.string().optional(),
  createdAtMs: z.number().int(),
  raft: z
    .object({
      /** Start a new Raft group with this peer as its only voter (`fabric init`); read only while the raft dir is new. */
      bootstrap: z.boolean(),
      /** How long a voter must have been dead before the leader replaces it. */
      deadVoterGraceMs: z.number().int().min(0).max(86_400_000),
    })
    .default({ bootstrap: false, deadVoterGraceMs: DEFAULT_DEAD_VOTER_GRACE_MS }),
});
export type DaemonConfig = z.infer<typeof DaemonConfigSchema>;

/**
 * Where bulk channels listen: the IP of the first /ip4 or /ip6 TCP listen address, on
 * `bulkPort`. Undefined when bulk channels are off or no listen address has an IP.
 */
export function bulkListenOf(config: DaemonConfig): { host: string; port: number } | undefined {
  if (config.bulkPort === 'off') return undefined;
  for (const addr of config.listen) {
    let parts;
    try {
      parts = multiaddr(addr).getComponents();
    } catch {
      continue;
    }
    const ip = parts.find((c) => c.name === 'ip4' || c.name === 'ip6')?.value;
    if (ip !== undefined && parts.some((c) => c.name === 'tcp')) return { host: ip, port: config.bulkPort };
  }
  return undefined;
}

export const DaemonStateSchema = z.object({
  /** Grows by one at every start: the gossip version's first half, so peers tell a restart from a stale record. */
  incarnation: z.number().int().min(0),
  /** Last known addresses of peers, dialed at start so a restarted daemon finds the fabric without its token. */
  knownPeers: z.record(z.string(), z.array(z.string())),
  /** This daemon's own addresses when it last ran (what `fabric token` offers when it is stopped). */
  selfAddrs: z.array(z.string()),
});
export type DaemonState = z.infer<typeof DaemonStateSchema>;
