/**
 * What the gossip layer needs from the outside world. `node` implements these over libp2p
 * (gossipsub for broadcast, `/fabric/sync/1` for anti-entropy pulls, `/fabric/swim/1` for
 * probes); tests and the simulation implement them in memory.
 */

/** Signs with this daemon's identity key. */
export type Sign = (data: Uint8Array) => Promise<Uint8Array>;

/** Checks that `sig` over `data` was made by the identity key of `peerId`. Never throws. */
export type Verify = (peerId: string, data: Uint8Array, sig: Uint8Array) => Promise<boolean>;

/**
 * What an anti-entropy puller already holds: one `[peerId, incarnation, seq]` per peer whose
 * state it has. The answer carries only states newer than these, or of peers not listed.
 */
export type PullDigest = readonly (readonly [peerId: string, incarnation: number, seq: number])[];

export interface GossipTransport {
  /** Sends a frame to every peer of the fabric (best effort, via gossipsub). */
  broadcast(frame: Uint8Array): Promise<void>;
  /** Asks one peer for the signed state frames it holds that `have` lacks (anti-entropy). */
  pull(peerId: string, have: PullDigest, signal: AbortSignal): Promise<Uint8Array[]>;
  /** Direct liveness probe of `target`: true when it answered before `signal` aborted. */
  probe(target: string, signal: AbortSignal): Promise<boolean>;
  /** Indirect probe: asks `helper` to probe `target` on our behalf (SWIM ping-req). */
  probeVia(helper: string, target: string, signal: AbortSignal): Promise<boolean>;
}
