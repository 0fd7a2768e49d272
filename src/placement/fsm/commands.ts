/**
 * The commands of the replicated fabric state: what the leader proposes to Raft and every replica
 * applies. Each carries who asked (`actor`), the client's idempotency id (`requestId`) and the
 * leader's wall clock when it proposed (`at`), so that applying is a pure function of the log.
 *
 * Objects are strict: an unknown field is refused rather than silently dropped, so that a replica
 * running older code never applies a newer command differently from one that understands it.
 */
import { Packr } from 'msgpackr';
import { z } from 'zod';
import { FabricError, errorMessage } from '../../core/index.ts';
import { JobSpecSchema, JobStateSchema } from './state.ts';

/** Largest encoded command accepted: a spec at its limit plus room for the envelope. */
export const MAX_COMMAND_BYTES = 128 * 1024;

const Id = z.string().min(1).max(256);
const Reason = z.string().max(1024);
/** Tenant names appear in CLI output, URLs and logs: keep them tame. */
const TenantName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" or "-", starting with a letter or digit');

const base = {
  /** Idempotency id chosen by the client; a retry reuses it. */
  requestId: z.string().min(1).max(128),
  /** Who asked: a peer id, or a tenant user. */
  actor: z.string().min(1).max(256),
  /** The leader's wall clock (ms since the epoch) when it proposed the command. */
  at: z.number().int().min(0),
};

function distinct(values: readonly string[]): boolean {
  return new Set(values).size === values.length;
}

export const JobSubmitSchema = z.strictObject({
  type: z.literal('job.submit'),
  ...base,
  /** Assigned by the leader, so that it is known before the command commits. */
  jobId: Id,
  tenant: TenantName,
  name: z.string().min(1).max(256),
  priority: z.number().int().min(-1_000_000).max(1_000_000),
  preemptible: z.boolean(),
  /** The job's spec as given; its schema belongs to placement, here it is only plain JSON. */
  spec: JobSpecSchema,
});

export const JobCancelSchema = z.strictObject({
  type: z.literal('job.cancel'),
  ...base,
  jobId: Id,
  reason: Reason.optional(),
});

export const JobTransitionSchema = z.strictObject({
  type: z.literal('job.transition'),
  ...base,
  jobId: Id,
  /** The attempt the report is about; a report about an older attempt is refused. */
  attempt: z.number().int().min(0),
  to: JobStateSchema,
  reason: Reason.optional(),
  exitCode: z.number().int().optional(),
});

export const DeviceRequestSchema = z.strictObject({
  uuid: Id,
  /** Thousandths of the device (fractional GPUs); absent means the whole device. */
  milli: z.number().int().min(1).max(1000).optional(),
  /** The parent GPU of a MIG slice. */
  parentUuid: Id.optional(),
});

export const AllocPlaceSchema = z
  .strictObject({
    type: z.literal('alloc.place'),
    ...base,
    jobId: Id,
    /** Must be greater than every epoch this job was placed with before. */
    epoch: z.number().int().min(1),
    /** One entry per peer; a gang is placed whole or not at all. */
    allocations: z
      .array(z.strictObject({ peerId: Id, devices: z.array(DeviceRequestSchema).max(64) }))
      .min(1)
      .max(256),
  })
  .superRefine((command, ctx) => {
    if (!distinct(command.allocations.map((allocation) => allocation.peerId))) {
      ctx.addIssue({ code: 'custom', path: ['allocations'], message: 'a peer appears twice' });
    }
    command.allocations.forEach((allocation, i) => {
      if (!distinct(allocation.devices.map((device) => device.uuid))) {
        ctx.addIssue({ code: 'custom', path: ['allocations', i, 'devices'], message: 'a device appears twice' });
      }
    });
  });

export const AllocReleaseSchema = z.strictObject({
  type: z.literal('alloc.release'),
  ...base,
  jobId: Id,
  /** The placement being released; releasing an older one is refused. */
  epoch: z.number().int().min(1),
  reason: Reason.optional(),
});

export const CheckpointCommitSchema = z
  .strictObject({
    type: z.literal('checkpoint.commit'),
    ...base,
    jobId: Id,
    /** The epoch of the allocation that wrote it: the fencing token. */
    epoch: z.number().int().min(1),
    step: z.number().int().min(0),
    manifestId: Id,
    sizeBytes: z.number().int().min(0),
    holders: z.array(Id).min(1).max(32),
  })
  .superRefine((command, ctx) => {
    if (!distinct(command.holders)) ctx.addIssue({ code: 'custom', path: ['holders'], message: 'a holder appears twice' });
  });

export const CheckpointGcSchema = z.strictObject({
  type: z.literal('checkpoint.gc'),
  ...base,
  jobId: Id,
  /** How many of the newest checkpoints to keep. */
  keep: z.number().int().min(0).max(10_000),
});

export const TenantUpsertSchema = z.strictObject({
  type: z.literal('tenant.upsert'),
  ...base,
  tenant: TenantName,
  /** Most GPUs held at once; null: no limit. */
  maxGpus: z.number().int().min(0).max(1_000_000).nullable(),
  /** Most GPU-hours in total; null: no limit. */
  maxGpuHours: z.number().min(0).max(1e12).nullable(),
});

/** Proposed by a new leader to commit an entry of its own term; changes nothing. */
export const NoopSchema = z.strictObject({ type: z.literal('noop'), ...base });

export const CommandSchema = z.discriminatedUnion('type', [
  JobSubmitSchema,
  JobCancelSchema,
  JobTransitionSchema,
  AllocPlaceSchema,
  AllocReleaseSchema,
  CheckpointCommitSchema,
  CheckpointGcSchema,
  TenantUpsertSchema,
  NoopSchema,
]);
export type Command = z.infer<typeof CommandSchema>;
export type CommandType = Command['type'];
export type CommandOf<T extends CommandType> = Extract<Command, { type: T }>;

export const COMMAND_TYPES: readonly CommandType[] = CommandSchema.options.map((option) => option.shape.type.value);

const packr = new Packr({ useRecords: false });

function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.join('.') || '$'}: ${issue.message}`)
    .join('; ');
}

/** Checks a command and encodes it for a Raft entry. Throws FabricError BAD_INPUT when invalid. */
export function encodeCommand(command: Command): Uint8Array {
  const parsed = CommandSchema.safeParse(command);
  if (!parsed.success) {
    throw new FabricError('BAD_INPUT', `invalid ${String(command?.type)} command: ${describeIssues(parsed.error)}`);
  }
  // msgpackr packs into a shared scratch buffer: hand out bytes of our own.
  const bytes = new Uint8Array(packr.pack(parsed.data));
  if (bytes.byteLength > MAX_COMMAND_BYTES) {
    throw new FabricError('BAD_INPUT', `${command.type} command is ${bytes.byteLength} bytes, over the ${MAX_COMMAND_BYTES}-byte limit`);
  }
  return bytes;
}

/** Decodes and checks the bytes of a Raft entry. Throws FabricError BAD_INPUT saying what is wrong. */
export function decodeCommand(data: Uint8Array): Command {
  if (!(data instanceof Uint8Array)) throw new FabricError('BAD_INPUT', 'command is not bytes');
  if (data.byteLength === 0) throw new FabricError('BAD_INPUT', 'command is empty');
  if (data.byteLength > MAX_COMMAND_BYTES) {
    throw new FabricError('BAD_INPUT', `command is ${data.byteLength} bytes, over the ${MAX_COMMAND_BYTES}-byte limit`);
  }
  let decoded: unknown;
  try {
    decoded = packr.unpack(data);
  } catch (err) {
    throw new FabricError('BAD_INPUT', `command is not valid msgpack: ${errorMessage(err)}`, { cause: err });
  }
  const parsed = CommandSchema.safeParse(decoded);
  if (!parsed.success) {
    const type = typeof decoded === 'object' && decoded !== null ? (decoded as { type?: unknown }).type : undefined;
    const what = typeof type === 'string' ? `${type.slice(0, 64)} command` : 'command';
    throw new FabricError('BAD_INPUT', `invalid ${what}: ${describeIssues(parsed.error)}`);
  }
  return parsed.data;
}
