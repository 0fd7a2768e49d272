/** The gossip layer: signed state frames, the membership table with SWIM failure detection, and the service. */
export {
  MAX_FRAME_BYTES,
  SuspicionSchema,
  encodeState,
  encodeSuspicion,
  decodeFrame,
  stampForBroadcast,
  type Suspicion,
  type DecodedFrame,
  type DropReason,
  type FrameKind,
} from './codec.ts';
export {
  DEFAULT_GOSSIP_OPTIONS,
  resolveGossipOptions,
  Membership,
  type GossipOptions,
  type MembershipEntry,
  type MemberStatus,
  type MembershipEvent,
  type MembershipListener,
  type MembershipDeps,
  type Evidence,
  type Prober,
} from './membership.ts';
export {
  GossipService,
  MAX_FRAMES_PER_PULL,
  type GossipServiceDeps,
  type GossipStats,
  type SelfMutator,
} from './service.ts';
export * from './state.ts';
export type { Sign, Verify, GossipTransport } from './ports.ts';
