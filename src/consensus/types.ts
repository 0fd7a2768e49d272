/**
 * The Raft core's data types, in the shape of etcd's raft (raftpb + the Storage interface).
 * The core is a pure state machine: it never touches a socket, a disk or a clock. The driver in
 * `src/node` persists what `ready()` hands it (entries, hard state, snapshot) BEFORE sending the
 * messages of that same Ready, then applies committed entries, then calls `advance()`.
 */

/** A peer id (the libp2p peer id string in the fabric; short names in tests). */
export type NodeId = string;

export type EntryType = 'normal' | 'conf-change';

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  /** Opaque to the core: the state machine's command (normal) or an encoded ConfChange. */
  data: Uint8Array;
}

/** Single-step membership change: add or remove one voter (or learner) at a time. */
export interface ConfChange {
  type: 'add-voter' | 'remove-voter' | 'add-learner';
  node: NodeId;
}

export interface ConfState {
  voters: NodeId[];
  /** Non-voting members that receive the log (a voter-to-be catches up as a learner first). */
  learners: NodeId[];
}

/** What must be on disk before any message that depends on it is sent. */
export interface HardState {
  term: number;
  vote: NodeId | null;
  commit: number;
}

export interface SnapshotMetadata {
  index: number;
  term: number;
  confState: ConfState;
}

export interface Snapshot {
  metadata: SnapshotMetadata;
  /** The state machine's serialized state at `metadata.index`; opaque to the core. */
  data: Uint8Array;
}

export type MessageType =
  | 'app' // append entries (leader → follower)
  | 'app-resp'
  | 'vote'
  | 'vote-resp'
  | 'pre-vote'
  | 'pre-vote-resp'
  | 'heartbeat'
  | 'heartbeat-resp'
  | 'snap' // install snapshot
  | 'timeout-now' // leadership transfer: campaign at once
  | 'read-index' // follower asks the leader for a read index
  | 'read-index-resp'
  | 'transfer-leader' // a follower asks the leader to hand leadership to `from`... see core docs
  | 'prop'; // a proposal forwarded from a follower to the leader

export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  /** app: term of the entry before `entries`; vote: last log term of the candidate. */
  logTerm: number;
  /** app: index of the entry before `entries`; vote: last log index; app-resp: match index or rejected index. */
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  /** app-resp on reject: the follower's hint for where to back off to (conflict back-off). */
  rejectHint: number;
  snapshot?: Snapshot;
  /** read-index: the request's context, echoed back in the ReadState. */
  context?: Uint8Array;
}

/** A linearizable read: once `applied >= index`, the read with this `context` may be served. */
export interface ReadState {
  index: number;
  context: Uint8Array;
}

export type Role = 'follower' | 'pre-candidate' | 'candidate' | 'leader';

export interface SoftState {
  leader: NodeId | null;
  role: Role;
}

export interface Ready {
  /** Changed volatile state (not persisted), for the driver's information. */
  softState?: SoftState;
  /** Must be persisted (fsync) before `messages` are sent. Absent when unchanged. */
  hardState?: HardState;
  /** New log entries to append durably (may overwrite a conflicting suffix) before sending `messages`. */
  entries: Entry[];
  /** A snapshot to install durably (from a leader's `snap`) before sending `messages`. */
  snapshot?: Snapshot;
  /** Entries committed by a quorum, to apply to the state machine in order. */
  committedEntries: Entry[];
  /** To send after the above are durable. */
  messages: Message[];
  readStates: ReadState[];
}

/**
 * The log-storage port the core reads from (etcd's `Storage`). The driver appends to it what
 * each Ready asks for; the core only reads. Implementations: in memory (tests, simulation) and
 * on disk in `src/node` (checksummed, fsynced).
 */
export interface LogStorage {
  /**
   * The persisted hard state, and the configuration as of the snapshot. On restart the driver
   * passes `applied` = the snapshot's index (or later, if its state machine is durable and the
   * configuration returned here is as of that index); conf changes after it are re-applied.
   */
  initialState(): { hardState: HardState; confState: ConfState };
  /**
   * Entries in [lo, hi), at most `maxBytes` of data (at least one entry). Throws FabricError
   * LOG_COMPACTED below firstIndex, LOG_UNAVAILABLE beyond lastIndex. (The core only asks
   * within [firstIndex, lastIndex + 1), and term() within [firstIndex - 1, lastIndex]; it calls
   * firstIndex()/lastIndex() often, so keep those cheap.)
   */
  entries(lo: number, hi: number, maxBytes?: number): Entry[];
  /** Term of the entry at index i (also valid for the snapshot's index). */
  term(i: number): number;
  /** Index of the first entry still in the log (snapshot index + 1). */
  firstIndex(): number;
  lastIndex(): number;
  snapshot(): Snapshot;
}

export interface RaftConfig {
  id: NodeId;
  /** Ticks without hearing from a leader before campaigning; randomized in [electionTick, 2*electionTick). */
  electionTick: number;
  heartbeatTick: number;
  /**
   * Ticks between a leader's heartbeats to learners (default heartbeatTick, >= heartbeatTick).
   * Learners never vote, so they need heartbeats only to learn the commit index of an idle log.
   */
  learnerHeartbeatTick?: number;
  storage: LogStorage;
  /** Index of the last entry already applied by the state machine (on restart). */
  applied: number;
  /** A random integer in [0, n): the only source of randomness (election jitter). */
  randomInt: (n: number) => number;
  preVote: boolean;
  checkQuorum: boolean;
  /** Upper bound of entry data bytes in one append message (batching). */
  maxSizePerMsg: number;
  /** Appends in flight to one follower before waiting for acks (pipelining). */
  maxInflightMsgs: number;
  /** How committed entries are read for Ready, bounded for memory. */
  maxCommittedSizePerReady?: number;
}
