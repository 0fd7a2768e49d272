/**
 * The job spec: what a job asks of the fabric, as one zod schema shared by the CLI flags, the HTTP
 * API and spec files. `parseJobSpec` names every bad field; `resolveRequest` turns a valid spec
 * into the normalized request the scheduler works with.
 *
 * GPUs come in four forms:
 * - a count: `gpus: 4` (whole GPUs; with `nodes`, the total over the gang);
 * - a fraction of one GPU: `gpus: 0.25` → a 250/1000 share of one GPU, time-sliced with others;
 * - a MIG slice: `mig: "3g.40gb"` → one MIG instance of exactly that profile;
 * - `gpus: "auto"` (or `model` hints without `gpus`): sizing from the model hints picks how many GPUs
 *   of which memory size (see sizing.ts).
 */
import { z } from 'zod';
import { FabricError } from '../core/index.ts';
import { VendorSchema, type Vendor } from '../devices/model.ts';
import { parseMemoryMiB, parseParamCount } from './quantity.ts';
import { compileSelector, selectorProblem, type CompiledSelector } from './selector.ts';
import { DTYPES, MODES, estimateMemory, type MemoryEstimate, type ModelHints } from './sizing.ts';

export const MILLI_PER_GPU = 1000;

const TenantName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" or "-", starting with a letter or digit');

/** A memory size: `40GiB`, `80GB`, `512MiB`, or a number of MiB. */
const Size = z.union([z.string().max(32), z.number()]).superRefine((value, ctx) => {
  const parsed = parseMemoryMiB(value);
  if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', message: parsed });
});

const LabelKey = z.string().min(1).max(63).regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*$/, 'label keys are letters, digits, . _ / -');

/** A requirement on a peer label, as Kubernetes' NodeSelectorRequirement. */
export const LabelRequirementSchema = z
  .strictObject({
    key: LabelKey,
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
    values: z.array(z.string().max(255)).max(32).optional(),
  })
  .superRefine((req, ctx) => {
    const needsValues = req.operator === 'In' || req.operator === 'NotIn';
    if (needsValues && (req.values === undefined || req.values.length === 0)) {
      ctx.addIssue({ code: 'custom', path: ['values'], message: `${req.operator} needs at least one value` });
    }
    if (!needsValues && req.values !== undefined && req.values.length > 0) {
      ctx.addIssue({ code: 'custom', path: ['values'], message: `${req.operator} takes no values` });
    }
  });
export type LabelRequirement = z.infer<typeof LabelRequirementSchema>;

const WeightedRequirement = z.strictObject({ weight: z.number().int().min(1).max(100), requirement: LabelRequirementSchema });

const AffinitySchema = z.strictObject({
  /** Every requirement must hold (anti-affinity: none may hold). */
  required: z.array(LabelRequirementSchema).max(16).optional(),
  /** Scored: peers that satisfy (anti-affinity: that do not satisfy) a requirement gain its weight. */
  preferred: z.array(WeightedRequirement).max(16).optional(),
});

export const ModelHintsSchema = z.strictObject({
  params: z.union([z.string().max(32), z.number()]).superRefine((value, ctx) => {
    const parsed = parseParamCount(value);
    if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', message: parsed });
  }),
  dtype: z.enum(DTYPES).default('bf16'),
  mode: z.enum(MODES).default('inference'),
  contextLength: z.number().int().min(1).max(10_000_000).optional(),
  batch: z.number().int().min(1).max(100_000).optional(),
  layers: z.number().int().min(1).max(10_000).optional(),
  hiddenSize: z.number().int().min(1).max(1_000_000).optional(),
  heads: z.number().int().min(1).max(100_000).optional(),
  kvHeads: z.number().int().min(1).max(100_000).optional(),
  loraRank: z.number().int().min(1).max(65_536).optional(),
  activationCheckpointing: z.boolean().optional(),
});

export const JobSpecSchema = z
  .strictObject({
    name: z.string().min(1).max(256).optional(),
    tenant: TenantName.optional(),
    /** Higher runs first and may preempt lower preemptible jobs. */
    priority: z.number().int().min(-1_000_000).max(1_000_000).optional(),
    /** Whether a higher-priority job may take this job's devices (after a checkpoint). */
    preemptible: z.boolean().optional(),

    gpus: z.union([z.number().gt(0).max(65_536), z.literal('auto')]).optional(),
    mig: z
      .string()
      .regex(/^(\d+c\.)?\d+g\.\d+gb(\+[a-z0-9]+)?$/, 'a MIG profile such as 1g.10gb, 3g.40gb or 1c.3g.71gb')
      .optional(),
    /** Memory each GPU (or the job's share of one) must have. */
    gpuMemory: Size.optional(),
    /** Allowed GPU models (any of them): "H100", "A100-SXM4-80GB", "MI300X". */
    models: z.array(z.string().min(1).max(128)).min(1).max(32).optional(),
    vendor: VendorSchema.optional(),
    /** A device selector expression; see selector.ts. */
    selector: z
      .string()
      .max(1024)
      .superRefine((value, ctx) => {
        const problem = selectorProblem(value);
        if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
      })
      .optional(),
    /** `nvlink`: a multi-GPU member's GPUs must all be NVLink (or AMD XGMI) peers of each other. */
    interconnect: z.enum(['nvlink', 'any']).optional(),
    /** CPU cores per member (fractions allowed). */
    cpu: z.number().min(0).max(100_000).optional(),
    /** Host memory per member. */
    memory: Size.optional(),

    /** Gang: this many peers, all or nothing. */
    nodes: z.number().int().min(1).max(256).optional(),
    gpusPerNode: z.number().int().min(1).max(64).optional(),

    spotTolerant: z.boolean().optional(),
    maxPricePerGpuHour: z.number().min(0).max(1_000_000).optional(),
    affinity: AffinitySchema.optional(),
    antiAffinity: AffinitySchema.optional(),
    /** Spread a gang's members over distinct values of this peer label (instead of packing one zone). */
    spreadOver: z.enum(['zone', 'region', 'cloud']).optional(),

    model: ModelHintsSchema.optional(),
    /** Queue the job even when no peer of the fabric could ever run it (it waits for new peers). */
    waitForCapacity: z.boolean().optional(),

    /**
     * Retries of a failed attempt (exit code ≠ 0, killed), each placed again, maybe elsewhere,
     * after a growing wait; the runner's retry policy (src/runner/retry.ts) reads these fields.
     */
    retry: z
      .strictObject({
        maxAttempts: z.number().int().min(1).max(1000),
        backoffBaseMs: z.number().int().min(0).max(3_600_000).optional(),
        backoffCapMs: z.number().int().min(0).max(86_400_000).optional(),
        backoffFactor: z.number().min(1).max(16).optional(),
        jitter: z.boolean().optional(),
      })
      .optional(),

    // What the runner needs; placement only carries them.
    command: z.array(z.string().max(4096)).max(1024).optional(),
    env: z.record(z.string().max(256), z.string().max(32_768)).optional(),
    workdir: z.string().max(4096).optional(),
    checkpointDir: z.string().max(4096).optional(),
  })
  .superRefine((spec, ctx) => {
    const issue = (path: string, message: string): void => ctx.addIssue({ code: 'custom', path: [path], message });
    const gpus = spec.gpus;
    const fractional = typeof gpus === 'number' && gpus < 1;
    if (typeof gpus === 'number') {
      if (fractional && Math.abs(gpus * MILLI_PER_GPU - Math.round(gpus * MILLI_PER_GPU)) > 1e-9) {
        issue('gpus', 'a fraction of a GPU is counted in thousandths (0.25, 0.125, 0.001)');
      }
      if (gpus > 1 && !Number.isInteger(gpus)) issue('gpus', 'more than one GPU must be a whole number');
    }
    if (gpus === 'auto' && spec.model === undefined) issue('gpus', '"auto" sizes the job from `model` hints: give them');
    if (spec.mig !== undefined && gpus !== undefined) issue('mig', 'a MIG slice is one device: leave `gpus` out');
    if (spec.mig !== undefined && spec.vendor === 'amd') issue('mig', 'MIG is an NVIDIA feature');
    if (fractional && (spec.nodes ?? 1) > 1) issue('gpus', 'a fraction of a GPU cannot be a gang');
    if (fractional && spec.gpusPerNode !== undefined) issue('gpusPerNode', 'a fraction of a GPU has no per-node count');
    if (spec.gpusPerNode !== undefined && spec.nodes === undefined) issue('gpusPerNode', 'needs `nodes`');
    if (spec.nodes !== undefined && typeof gpus === 'number' && gpus >= 1) {
      if (spec.gpusPerNode !== undefined && gpus !== spec.nodes * spec.gpusPerNode) {
        issue('gpus', `is the gang's total: nodes × gpusPerNode = ${spec.nodes * spec.gpusPerNode}, not ${gpus}`);
      } else if (spec.gpusPerNode === undefined && gpus % spec.nodes !== 0) {
        issue('gpus', `${gpus} GPUs do not split evenly over ${spec.nodes} nodes`);
      }
    }
    if (spec.interconnect === 'nvlink' && (fractional || spec.mig !== undefined)) {
      issue('interconnect', 'NVLink placement is for whole GPUs');
    }
    if (spec.spreadOver !== undefined && spec.nodes === undefined && gpus !== 'auto') {
      issue('spreadOver', 'spreads the members of a gang: needs `nodes`');
    }
    if (spec.model?.kvHeads !== undefined && spec.model.heads === undefined) {
      ctx.addIssue({ code: 'custom', path: ['model', 'kvHeads'], message: 'needs `heads` too' });
    }
  });
export type JobSpec = z.infer<typeof JobSpecSchema>;
export type JobSpecInput = z.input<typeof JobSpecSchema>;

export interface SpecIssue {
  path: string;
  message: string;
}

function issuesOf(error: z.ZodError): SpecIssue[] {
  return error.issues.map((issue) => ({ path: issue.path.map(String).join('.') || '$', message: issue.message }));
}

/** Validates a spec; throws FabricError BAD_INPUT naming every bad field (also in `details.issues`). */
export function parseJobSpec(input: unknown): JobSpec {
  const parsed = JobSpecSchema.safeParse(input);
  if (!parsed.success) {
    const issues = issuesOf(parsed.error);
    throw new FabricError('BAD_INPUT', `invalid job spec: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, {
      details: { issues },
    });
  }
  return parsed.data;
}

// ---- the normalized request ----

/** What one member of a job (the whole job, or one peer's part of a gang) needs on its peer. */
export interface MemberDemand {
  /** Devices per member: whole GPUs, or 1 for a share or a MIG slice; 0 for a CPU-only job. */
  gpus: number;
  /** Thousandths of each device: 1000 for whole GPUs and MIG slices, less for a share. */
  milli: number;
  /** MIG profile, or null. */
  mig: string | null;
  /** Memory each device (or, for a share, the share of its memory) must have; 0 when unasked. */
  minMemoryMiB: number;
  /** All of the member's GPUs must be NVLink/XGMI peers. */
  nvlink: boolean;
  cpuMilli: number;
  memoryMiB: number;
}

export interface DeviceConstraint {
  vendor: Vendor | null;
  models: readonly string[] | null;
  selector: CompiledSelector | null;
  selectorText: string | null;
}

export interface PeerConstraint {
  spotTolerant: boolean;
  maxPricePerGpuHour: number | null;
  required: readonly LabelRequirement[];
  forbidden: readonly LabelRequirement[];
  preferred: readonly { weight: number; requirement: LabelRequirement }[];
  avoided: readonly { weight: number; requirement: LabelRequirement }[];
}

export interface PlacementRequest {
  jobId: string;
  tenant: string;
  priority: number;
  preemptible: boolean;
  /**
   * Peers the job spans (1 unless the spec asks for a gang), or null for `auto` sizing, which
   * decides GPU count, GPU size and, when the model needs more GPUs than one peer holds, the
   * fewest peers.
   */
  nodes: number | null;
  /** What each member needs (for `auto`, the CPU and memory part; GPUs come from sizing). */
  member: MemberDemand;
  device: DeviceConstraint;
  peer: PeerConstraint;
  spreadOver: 'zone' | 'region' | 'cloud' | null;
  /** Set for `auto` sizing. */
  sizing: { hints: ModelHints; estimate: MemoryEstimate } | null;
  waitForCapacity: boolean;
}

export const DEFAULT_TENANT = 'default';

function hintsOf(model: NonNullable<JobSpec['model']>): ModelHints {
  const params = parseParamCount(model.params) as number;
  const hints: ModelHints = { params, dtype: model.dtype, mode: model.mode };
  for (const key of ['contextLength', 'batch', 'layers', 'hiddenSize', 'heads', 'kvHeads', 'loraRank', 'activationCheckpointing'] as const) {
    if (model[key] !== undefined) (hints as unknown as Record<string, unknown>)[key] = model[key];
  }
  return hints;
}

/** The scheduler's view of a valid spec. `jobId` names the job in plans and explanations. */
export function resolveRequest(spec: JobSpec, jobId: string): PlacementRequest {
  const gpus = spec.gpus ?? (spec.model !== undefined ? 'auto' : spec.mig !== undefined ? 1 : 0);
  const auto = gpus === 'auto';
  const nodes = spec.nodes ?? null;
  const fractional = typeof gpus === 'number' && gpus > 0 && gpus < 1;
  const totalGpus = typeof gpus === 'number' ? (fractional ? 1 : gpus) : 0;
  let perMember = 0;
  if (!auto) {
    if (nodes !== null) perMember = spec.gpusPerNode ?? (spec.gpus === undefined ? 0 : totalGpus / nodes);
    else perMember = totalGpus;
  }
  const member: MemberDemand = {
    gpus: perMember,
    milli: fractional ? Math.round((gpus as number) * MILLI_PER_GPU) : MILLI_PER_GPU,
    mig: spec.mig ?? null,
    minMemoryMiB: spec.gpuMemory === undefined ? 0 : (parseMemoryMiB(spec.gpuMemory) as number),
    nvlink: spec.interconnect === 'nvlink',
    cpuMilli: Math.round((spec.cpu ?? 0) * 1000),
    memoryMiB: spec.memory === undefined ? 0 : (parseMemoryMiB(spec.memory) as number),
  };
  const hints = spec.model === undefined ? null : hintsOf(spec.model);
  return {
    jobId,
    tenant: spec.tenant ?? DEFAULT_TENANT,
    priority: spec.priority ?? 0,
    preemptible: spec.preemptible ?? false,
    nodes: nodes ?? (auto ? null : 1),
    member,
    device: {
      vendor: spec.vendor ?? null,
      models: spec.models ?? null,
      selector: spec.selector === undefined ? null : compileSelector(spec.selector),
      selectorText: spec.selector ?? null,
    },
    peer: {
      spotTolerant: spec.spotTolerant ?? false,
      maxPricePerGpuHour: spec.maxPricePerGpuHour ?? null,
      required: spec.affinity?.required ?? [],
      forbidden: spec.antiAffinity?.required ?? [],
      preferred: spec.affinity?.preferred ?? [],
      avoided: spec.antiAffinity?.preferred ?? [],
    },
    spreadOver: spec.spreadOver ?? null,
    sizing: auto && hints !== null ? { hints, estimate: estimateMemory(hints) } : null,
    waitForCapacity: spec.waitForCapacity ?? false,
  };
}

/** Parses and resolves in one step; throws FabricError BAD_INPUT like parseJobSpec. */
export function requestFromSpec(input: unknown, jobId: string): PlacementRequest {
  return resolveRequest(parseJobSpec(input), jobId);
}

/** Whether a label map satisfies one requirement. */
export function labelMatches(labels: Readonly<Record<string, string>>, req: LabelRequirement): boolean {
  const value = labels[req.key];
  switch (req.operator) {
    case 'Exists':
      return value !== undefined;
    case 'DoesNotExist':
      return value === undefined;
    case 'In':
      return value !== undefined && (req.values ?? []).includes(value);
    case 'NotIn':
      return value === undefined || !(req.values ?? []).includes(value);
  }
}

export function describeRequirement(req: LabelRequirement): string {
  switch (req.operator) {
    case 'Exists':
      return `has label ${req.key}`;
    case 'DoesNotExist':
      return `lacks label ${req.key}`;
    case 'In':
      return `${req.key} in (${(req.values ?? []).join(', ')})`;
    case 'NotIn':
      return `${req.key} not in (${(req.values ?? []).join(', ')})`;
  }
}
