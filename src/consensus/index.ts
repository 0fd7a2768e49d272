/** The Raft core: a pure state machine (RawNode) and its log-storage port. */
export * from './types.ts';
export { RawNode, type PeerStatus, type RaftStatus, encodeConfChange, decodeConfChange } from './raw-node.ts';
export { MemoryStorage } from './memory-storage.ts';
export { bootstrapLog, BOOTSTRAP_TERM, type BootstrapLog } from './bootstrap.ts';
export type { ProgressState } from './progress.ts';
export { describeEntry, describeMessage, describeReady, describeSnapshot, describeConfState } from './describe.ts';
