/**
 * The records of the replicated fabric state and the versioned snapshot that carries them.
 * Each record is a zod schema: the same definition gives the TypeScript type and checks a
 * snapshot that arrives from disk or from the leader before any of it is believed.
 */
import { z } from 'zod';
import { FabricError } from '../../core/index.ts';
import { jsonObjectProblem, type JsonObject } from './json.ts';

export const JOB_STATES = ['queued', 'placed', 'running', 'succeeded', 'failed', 'cancelled', 'lost', 'restarting'] as const;
export const JobStateSchema = z.enum(JOB_STATES);
export type JobState = z.infer<typeof JobStateSchema>;

/** States a job never leaves. */
export const TERMINAL_STATES: ReadonlySet<JobState> = new Set<JobState>(['succeeded', 'failed', 'cancelled']);

/** States in which a job holds allocations, and only these: leaving them releases its devices. */
export const HOLDING_STATES: ReadonlySet<JobState> = new Set<JobState>(['placed', 'running']);

/** States from which `alloc.place` may place a job (a first placement or a re-placement). */
export const PLACEABLE_STATES: ReadonlySet<JobState> = new Set<JobState>(['queued', 'restarting']);

/**
 * Where `job.transition` may take a job from each state. `placed` is entered only by
 * `alloc.place` and `cancelled` only by `job.cancel`, which carry what those steps need.
 * `placed → succeeded` is legal because a short job may finish before its start is reported;
 * `lost` is not terminal: the leader re-places the job (via `restarting`) or gives up (`failed`).
 */
export const JOB_TRANSITIONS: Readonly<Record<JobState, readonly JobState[]>> = {
  queued: ['failed'],
  placed: ['running', 'succeeded', 'failed', 'lost', 'restarting'],
  running: ['succeeded', 'failed', 'lost', 'restarting'],
  lost: ['restarting', 'failed'],
  restarting: ['failed'],
  succeeded: [],
  failed: [],
  cancelled: [],
};

/** Size limits of the replicated state. Part of the snapshot, so every replica bounds alike. */
export const FsmLimitsSchema = z.object({
  /** Idempotency table: at most this many request ids are remembered… */
  maxRequests: z.number().int().min(1),
  /** …and none older than this (by the leader's clock stamped on commands). */
  requestRetentionMs: z.number().int().min(0),
  /** Audit trail: a ring of the last this many entries. */
  auditEntries: z.number().int().min(1),
  /** Committed checkpoints one job may hold before `checkpoint.gc` must collect some. */
  maxCheckpointsPerJob: z.number().int().min(1),
  /** Attempt history kept per job (the newest). */
  attemptsKept: z.number().int().min(1),
});
export type FsmLimits = z.infer<typeof FsmLimitsSchema>;

export const DEFAULT_FSM_LIMITS: Readonly<FsmLimits> = {
  maxRequests: 100_000,
  requestRetentionMs: 24 * 60 * 60 * 1000,
  auditEntries: 10_000,
  maxCheckpointsPerJob: 256,
  attemptsKept: 64,
};

/** Largest job spec kept, as compact JSON. */
export const MAX_SPEC_BYTES = 64 * 1024;

export const JobSpecSchema = z.custom<JsonObject>().superRefine((value, ctx) => {
  const problem = jsonObjectProblem(value, MAX_SPEC_BYTES);
  if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
});

const Text = z.string().max(1024);
const Id = z.string().min(1).max(256);
const Time = z.number().int().min(0);

/** One placement of a job and how it ended. */
export const AttemptSchema = z.object({
  attempt: z.number().int().min(1),
  epoch: z.number().int().min(1),
  peerIds: z.array(Id),
  placedAt: Time,
  startedAt: Time.nullable(),
  endedAt: Time.nullable(),
  /** The state the job left `placed`/`running` for; null while the attempt is live. */
  outcome: JobStateSchema.nullable(),
  reason: Text.nullable(),
});
export type Attempt = z.infer<typeof AttemptSchema>;

export const JobSchema = z.object({
  id: Id,
  tenant: Id,
  name: Text,
  priority: z.number().int(),
  preemptible: z.boolean(),
  spec: JobSpecSchema,
  state: JobStateSchema,
  /** Placements so far; 0 until first placed. Reports name it, so a stale attempt's are refused. */
  attempt: z.number().int().min(0),
  /** Epoch of the latest placement (0 before any): fences checkpoints and status of older ones. */
  epoch: z.number().int().min(0),
  /** Live allocations (only while placed or running). */
  allocationIds: z.array(Id),
  submittedAt: Time,
  submittedBy: Id,
  updatedAt: Time,
  /** Why the job is in its state, when someone said (cancel reason, failure message). */
  reason: Text.nullable(),
  exitCode: z.number().int().nullable(),
  attempts: z.array(AttemptSchema),
});
export type Job = z.infer<typeof JobSchema>;

export const DeviceGrantSchema = z.object({
  /** GPU UUID, or MIG UUID for a slice. */
  uuid: Id,
  /** Thousandths of the device held; the grants of live allocations on one device sum to ≤ 1000. */
  milli: z.number().int().min(1).max(1000),
  /** For a MIG slice, its parent GPU: the parent cannot be granted as a GPU while a slice is out. */
  parentUuid: Id.nullable(),
});
export type DeviceGrant = z.infer<typeof DeviceGrantSchema>;

/** A job's share of one peer. A gang placement is one allocation per peer, all with one epoch. */
export const AllocationSchema = z.object({
  id: Id,
  jobId: Id,
  tenant: Id,
  peerId: Id,
  epoch: z.number().int().min(1),
  attempt: z.number().int().min(1),
  devices: z.array(DeviceGrantSchema),
  placedAt: Time,
});
export type Allocation = z.infer<typeof AllocationSchema>;

export const CheckpointSchema = z.object({
  jobId: Id,
  manifestId: Id,
  step: z.number().int().min(0),
  sizeBytes: z.number().int().min(0),
  /** Peers holding a full replica, in the order the committer gave. */
  holders: z.array(Id),
  epoch: z.number().int().min(1),
  attempt: z.number().int().min(0),
  committedAt: Time,
  committedBy: Id,
});
export type Checkpoint = z.infer<typeof CheckpointSchema>;

export const TenantSchema = z.object({
  name: Id,
  /** Most GPUs held at once (fractions count by their share); null: no limit. */
  maxGpus: z.number().int().min(0).nullable(),
  /** Most GPU-hours consumed in total; null: no limit. */
  maxGpuHours: z.number().min(0).nullable(),
  /** Consumption of released allocations, in thousandths of a GPU × milliseconds. */
  usedMilliGpuMs: z.number().min(0),
  createdAt: Time,
  updatedAt: Time,
});
export type Tenant = z.infer<typeof TenantSchema>;

export const REJECT_CODES = [
  /** The bytes are not a valid command. */
  'BAD_COMMAND',
  /** The log index was applied before (a driver replaying entries); nothing was done. */
  'ALREADY_APPLIED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  /** The job's state does not allow the command. */
  'ILLEGAL_TRANSITION',
  /** A report for an attempt other than the job's current one. */
  'STALE_ATTEMPT',
  /** An epoch older than (or otherwise not) the job's current one: the fencing refusal. */
  'STALE_EPOCH',
  /** A device is already held by a live allocation on that peer. */
  'DEVICE_BUSY',
  'QUOTA_EXCEEDED',
  'LIMIT_REACHED',
  /** The request id was first used for a command of another type. */
  'REQUEST_ID_REUSED',
] as const;
export type RejectCode = (typeof REJECT_CODES)[number];

export type ApplyValue =
  /** job.submit, job.cancel, job.transition */
  | { jobId: string; state: JobState; attempt: number }
  /** alloc.place */
  | { jobId: string; state: JobState; attempt: number; epoch: number; allocationIds: string[] }
  /** alloc.release */
  | { jobId: string; state: JobState; epoch: number; released: string[] }
  /** checkpoint.commit */
  | { jobId: string; manifestId: string; step: number }
  /** checkpoint.gc: what the daemons may now delete */
  | { jobId: string; removed: { manifestId: string; holders: string[] }[] }
  /** tenant.upsert */
  | { tenant: string; created: boolean }
  /** noop */
  | Record<string, never>;

export type ApplyResult = { ok: true; value: ApplyValue } | { ok: false; code: RejectCode; message: string };

const ApplyResultSchema = z.union([
  z.object({ ok: z.literal(true), value: z.record(z.string(), z.unknown()) }),
  z.object({ ok: z.literal(false), code: z.enum(REJECT_CODES), message: z.string() }),
]);

/** A remembered request: a retry with the same id gets `result` back without re-applying. */
export const RequestRecordSchema = z.object({
  requestId: Id,
  type: z.string(),
  /** The state machine's clock when first applied; the table forgets by this age. */
  at: Time,
  // Written by this module from ApplyResult values, so the loose check on `value` is enough.
  result: ApplyResultSchema as unknown as z.ZodType<ApplyResult>,
});
export type RequestRecord = z.infer<typeof RequestRecordSchema>;

export const AuditEntrySchema = z.object({
  seq: z.number().int().min(0),
  index: z.number().int().min(1),
  /** The leader's clock stamped on the command; null for bytes that did not decode. */
  at: Time.nullable(),
  actor: z.string().nullable(),
  type: z.string().nullable(),
  requestId: z.string().nullable(),
  /** What the command was about: a job id or a tenant name. */
  subject: z.string().nullable(),
  ok: z.boolean(),
  code: z.enum(REJECT_CODES).nullable(),
  message: Text.nullable(),
  /** A retry answered from the idempotency table. */
  replay: z.boolean(),
});
export type AuditEntry = z.infer<typeof AuditEntrySchema>;

export const SNAPSHOT_VERSION = 1;

export const SnapshotV1Schema = z.object({
  v: z.literal(1),
  limits: FsmLimitsSchema,
  appliedIndex: z.number().int().min(0),
  /** High-water mark of the leaders' clocks seen in commands: time only ever moves forward here. */
  clock: Time,
  jobs: z.array(JobSchema),
  allocations: z.array(AllocationSchema),
  /** Per job, in commit order (the last is the latest). */
  checkpoints: z.array(z.object({ jobId: Id, entries: z.array(CheckpointSchema) })),
  tenants: z.array(TenantSchema),
  /** Oldest first: the order in which the table forgets. */
  requests: z.array(RequestRecordSchema),
  /** Oldest first. */
  audit: z.array(AuditEntrySchema),
  auditSeq: z.number().int().min(0),
});
export type SnapshotV1 = z.infer<typeof SnapshotV1Schema>;

/**
 * Upgrades from older snapshot versions, keyed by the version they read: `MIGRATIONS.get(n)`
 * turns a version-n snapshot into a version-(n+1) one. Empty while version 1 is the only one.
 */
const MIGRATIONS: ReadonlyMap<number, (old: Record<string, unknown>) => Record<string, unknown>> = new Map();

/** Brings a decoded snapshot of any known version to the current one, or refuses it clearly. */
export function migrateSnapshot(decoded: unknown): SnapshotV1 {
  if (typeof decoded !== 'object' || decoded === null || Array.isArray(decoded)) {
    throw new FabricError('BAD_INPUT', 'state snapshot is not an object');
  }
  let snapshot = decoded as Record<string, unknown>;
  const version = snapshot['v'];
  if (typeof version !== 'number' || !Number.isInteger(version)) {
    throw new FabricError('BAD_INPUT', 'state snapshot has no version number');
  }
  if (version > SNAPSHOT_VERSION || version < 1) {
    throw new FabricError(
      'BAD_INPUT',
      `state snapshot version ${version} is unknown to this fabric, which reads versions 1 to ${SNAPSHOT_VERSION}: upgrade this peer`,
    );
  }
  for (let v = version; v < SNAPSHOT_VERSION; v++) {
    const migrate = MIGRATIONS.get(v);
    if (migrate === undefined) throw new FabricError('INTERNAL', `no migration from state snapshot version ${v}`);
    snapshot = migrate(snapshot);
  }
  const parsed = SnapshotV1Schema.safeParse(snapshot);
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, 5).map((issue) => `${issue.path.join('.') || '$'}: ${issue.message}`);
    throw new FabricError('BAD_INPUT', `invalid state snapshot: ${issues.join('; ')}`);
  }
  return parsed.data;
}
