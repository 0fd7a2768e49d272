/** The HTTP API's contract: response and request shapes shared by the daemon, the client and (later) the UI. */
import { z } from 'zod';
import { DeviceSchema, HostSchema, LinkSchema } from '../devices/model.ts';
import { LabelsSchema } from '../gossip/state.ts';
import { CheckpointSchema, JobSchema } from '../placement/fsm/state.ts';
import { JobSpecSchema } from '../placement/spec.ts';

export { JobSpecSchema };
export type { JobSpec, JobSpecInput } from '../placement/spec.ts';

export const PeerStatusSchema = z.enum(['alive', 'suspect', 'dead']);
export type PeerStatus = z.infer<typeof PeerStatusSchema>;

export const NodeViewSchema = z.object({
  peerId: z.string(),
  self: z.boolean(),
  state: PeerStatusSchema,
  zone: z.string().nullable(),
  region: z.string().nullable(),
  cloud: z.string().nullable(),
  spot: z.boolean(),
  pricePerGpuHour: z.number().nullable(),
  /** Every label as key → value, the well-known ones (zone, region, cloud, spot) included. */
  labels: z.record(z.string(), z.string()),
  addrs: z.array(z.string()),
  host: HostSchema.nullable(),
  devices: z.array(DeviceSchema),
  links: z.array(LinkSchema),
  warnings: z.array(z.string()),
  allocatedDevices: z.array(z.string()),
  incarnation: z.number(),
  seq: z.number(),
  /** How long ago this daemon last heard from the peer (ms); 0 for itself. */
  lastHeardAgoMs: z.number(),
  /** The peer's own wall-clock time of its latest state version; null until its state arrived. */
  updatedAtMs: z.number().nullable(),
});
export type NodeView = z.infer<typeof NodeViewSchema>;

export const NodesResponseSchema = z.object({ nodes: z.array(NodeViewSchema) });

export const StatusResponseSchema = z.object({
  peerId: z.string(),
  fabricId: z.string(),
  dataDir: z.string(),
  addrs: z.array(z.string()),
  apiUrl: z.string(),
  version: z.string(),
  incarnation: z.number(),
  uptimeMs: z.number(),
  peers: z.object({ alive: z.number(), suspect: z.number(), dead: z.number(), connected: z.number() }),
  devices: z.number(),
  warnings: z.array(z.string()),
  gossip: z.object({ droppedFrames: z.number(), suspicions: z.number(), falseSuspicions: z.number() }),
  raft: z.lazy(() => RaftStatusViewSchema),
});
export type StatusResponse = z.infer<typeof StatusResponseSchema>;

export const TokenResponseSchema = z.object({ token: z.string() });
export type TokenResponse = z.infer<typeof TokenResponseSchema>;

export const ErrorResponseSchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) });
export type ErrorResponse = z.infer<typeof ErrorResponseSchema>;

export const LabelsChangeSchema = z.object({
  set: LabelsSchema.default({}),
  remove: z.array(z.string().max(63)).max(64).default([]),
});
export type LabelsChange = z.infer<typeof LabelsChangeSchema>;

export const NodeResponseSchema = z.object({ node: NodeViewSchema });

/** What a daemon knows of the Raft group: its own view when it is a member, else the leader's. */
export const RaftStatusViewSchema = z.object({
  /** This daemon's place in the group. */
  member: z.enum(['voter', 'learner', 'none']),
  role: z.enum(['leader', 'follower', 'candidate', 'pre-candidate']),
  leader: z.string().nullable(),
  term: z.number(),
  voters: z.array(z.string()),
  learners: z.array(z.string()),
  commit: z.number(),
  applied: z.number(),
  /** `local`: this daemon's replica; `leader`: asked of the leader (this daemon holds no replica). */
  source: z.enum(['local', 'leader']),
});
export type RaftStatusView = z.infer<typeof RaftStatusViewSchema>;

export const RaftPeerSchema = z.object({
  peerId: z.string(),
  role: z.enum(['voter', 'learner']),
  leader: z.boolean(),
  /** Gossiped health as the leader sees it. */
  health: z.enum(['alive', 'suspect', 'dead', 'unknown']),
  zone: z.string().nullable(),
  /** Highest log index known replicated on the peer. */
  match: z.number(),
  /** Entries behind the leader's last index. */
  lag: z.number(),
});
export type RaftPeer = z.infer<typeof RaftPeerSchema>;

export const RaftPeersResponseSchema = z.object({
  leader: z.string().nullable(),
  term: z.number(),
  commit: z.number(),
  applied: z.number(),
  lastIndex: z.number(),
  peers: z.array(RaftPeerSchema),
});
export type RaftPeersResponse = z.infer<typeof RaftPeersResponseSchema>;

/** A job submission: the spec (placement/spec.ts, shared by CLI flags, spec files and this API). */
export const JobSubmitRequestSchema = z.strictObject({
  /** Idempotency id: a retry with the same id never creates a second job. Chosen by the daemon when absent. */
  requestId: z.string().min(8).max(128).optional(),
  spec: JobSpecSchema,
});
export type JobSubmitRequest = z.infer<typeof JobSubmitRequestSchema>;

export const JobSubmitResponseSchema = z.object({ jobId: z.string(), state: z.string(), index: z.number() });
export type JobSubmitResponse = z.infer<typeof JobSubmitResponseSchema>;

export const JobCancelRequestSchema = z.strictObject({ reason: z.string().max(1024).optional(), requestId: z.string().min(8).max(128).optional() });
export type JobCancelRequest = z.infer<typeof JobCancelRequestSchema>;

export { JobSchema, CheckpointSchema };
export type { Job, Checkpoint } from '../placement/fsm/state.ts';
export const JobsResponseSchema = z.object({ jobs: z.array(JobSchema) });
export const JobDetailSchema = JobSchema.extend({ checkpoints: z.array(CheckpointSchema) });
export type JobDetail = z.infer<typeof JobDetailSchema>;
export const JobResponseSchema = z.object({ job: JobDetailSchema });

export const JobLogsQuerySchema = z.object({
  stream: z.enum(['stdout', 'stderr']).default('stdout'),
  /** Stream offset to read from; absent: the tail. */
  from: z.coerce.number().int().min(0).optional(),
  tail: z.coerce.number().int().min(0).max(1024 * 1024).default(64 * 1024),
  /** Hold the answer up to this long for new output (following). */
  wait: z.coerce.number().int().min(0).max(30_000).default(0),
});
export type JobLogsQuery = z.infer<typeof JobLogsQuerySchema>;

export const JobLogsResponseSchema = z.object({
  jobId: z.string(),
  /** The peer the output was read from: where the job's latest attempt runs or ran. */
  peerId: z.string(),
  attempt: z.number(),
  state: z.string(),
  start: z.number(),
  end: z.number(),
  /** Output lost to log rotation between the asked offset and `start`. */
  dropped: z.number(),
  size: z.number(),
  /** The bytes, base64. */
  data: z.string(),
});
export type JobLogsResponse = z.infer<typeof JobLogsResponseSchema>;

const PeerScoreSchema = z.object({ peerId: z.string(), total: z.number(), plugins: z.record(z.string(), z.number()) });

/** Why a job waits, or why it went where it did (the scheduler's explanation, computed on the leader). */
export const ExplanationSchema = z.object({
  jobId: z.string(),
  peers: z.number(),
  feasible: z.number(),
  removed: z.array(z.object({ filter: z.string(), reason: z.string(), count: z.number(), code: z.string() })),
  shape: z.string(),
  sizing: z.string().nullable(),
  chosen: z.array(PeerScoreSchema.extend({ devices: z.array(z.string()) })),
  runnersUp: z.array(PeerScoreSchema),
  summary: z.string(),
});
export type ExplanationView = z.infer<typeof ExplanationSchema>;

export const ExplainResponseSchema = z.object({
  state: z.string(),
  explanation: ExplanationSchema.nullable(),
  note: z.string().nullable(),
});
export type ExplainResponse = z.infer<typeof ExplainResponseSchema>;

export const CheckpointCommitRequestSchema = z.strictObject({
  /** The allocation's epoch the job runs under (FABRIC_EPOCH): a stale one is refused. */
  epoch: z.number().int().min(1),
  /** Absent: one past the job's latest committed step. */
  step: z.number().int().min(0).optional(),
  /** The directory to commit (absolute); absent: the job's FABRIC_CHECKPOINT_DIR on its host. */
  dir: z.string().min(1).max(4096).optional(),
});
export type CheckpointCommitRequest = z.infer<typeof CheckpointCommitRequestSchema>;

export const CheckpointCommitResponseSchema = z.object({
  jobId: z.string(),
  step: z.number(),
  manifestId: z.string(),
  sizeBytes: z.number(),
  /** Bytes this host had not stored before (unchanged chunks are neither stored nor sent again). */
  newBytes: z.number(),
  holders: z.array(z.string()),
  /** Bytes sent to the replicas. */
  sentBytes: z.number(),
  ms: z.number(),
  index: z.number(),
});
export type CheckpointCommitResponse = z.infer<typeof CheckpointCommitResponseSchema>;
