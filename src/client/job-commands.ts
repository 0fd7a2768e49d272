/** The job commands of the CLI: run, submit, ps, job show, cancel. They work the same from every peer. */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { FabricError, errorMessage } from '../core/index.ts';
import { JobSpecSchema, type Job, type JobDetail, type JobSpecInput } from '../api/schemas.ts';
import { FabricClient } from './client.ts';
import { action, addDataDirOption, dataDirOf, parseFlags, printJson } from './cli-kit.ts';
import { formatAge, shortPeerId, table } from './format.ts';

type CommonFlags = { dataDir?: string; json?: boolean };
const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/** `fabric run` flags, checked before they become a spec (which the daemon checks again). */
const RunFlagsSchema = z.object({
  dataDir: z.string().optional(),
  json: z.boolean().optional(),
  follow: z.boolean().optional(),
  name: z.string().min(1).max(256).optional(),
  tenant: z.string().optional(),
  priority: z.coerce.number().int().optional(),
  preemptible: z.boolean().optional(),
  gpus: z.union([z.literal('auto'), z.coerce.number()]).optional(),
  mig: z.string().optional(),
  gpuMem: z.string().optional(),
  model: z.array(z.string()).optional(),
  vendor: z.string().optional(),
  selector: z.string().optional(),
  interconnect: z.string().optional(),
  cpu: z.coerce.number().optional(),
  memory: z.string().optional(),
  nodes: z.coerce.number().int().optional(),
  gpusPerNode: z.coerce.number().int().optional(),
  spotTolerant: z.boolean().optional(),
  maxPrice: z.coerce.number().optional(),
  spreadOver: z.string().optional(),
  params: z.string().optional(),
  dtype: z.string().optional(),
  mode: z.string().optional(),
  env: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*=/, 'environment entries are NAME=value')).optional(),
  workdir: z.string().optional(),
  checkpointDir: z.string().optional(),
  waitForCapacity: z.boolean().optional(),
});
type RunFlags = z.infer<typeof RunFlagsSchema>;

/** Builds a spec from `fabric run` flags; fields left out stay out (the daemon applies defaults). */
export function specFromRunFlags(flags: RunFlags, command: string[]): JobSpecInput {
  const spec: Record<string, unknown> = { command };
  const put = (key: string, value: unknown) => {
    if (value !== undefined) spec[key] = value;
  };
  put('name', flags.name);
  put('tenant', flags.tenant);
  put('priority', flags.priority);
  put('preemptible', flags.preemptible);
  put('gpus', flags.gpus);
  put('mig', flags.mig);
  put('gpuMemory', flags.gpuMem);
  put('models', flags.model);
  put('vendor', flags.vendor);
  put('selector', flags.selector);
  put('interconnect', flags.interconnect);
  put('cpu', flags.cpu);
  put('memory', flags.memory);
  put('nodes', flags.nodes);
  put('gpusPerNode', flags.gpusPerNode);
  put('spotTolerant', flags.spotTolerant);
  put('maxPricePerGpuHour', flags.maxPrice);
  put('spreadOver', flags.spreadOver);
  put('workdir', flags.workdir);
  put('checkpointDir', flags.checkpointDir);
  put('waitForCapacity', flags.waitForCapacity);
  if (flags.params !== undefined || flags.dtype !== undefined || flags.mode !== undefined) {
    // Without --params the spec check names the missing model.params along with any other problem.
    spec['model'] = { ...(flags.params ? { params: flags.params } : {}), ...(flags.dtype ? { dtype: flags.dtype } : {}), ...(flags.mode ? { mode: flags.mode } : {}) };
  }
  if (flags.env !== undefined) spec['env'] = Object.fromEntries(flags.env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  return spec as JobSpecInput;
}

/** Checks a spec on this side too, so a typo is named before anything is sent. */
function checkSpec(spec: unknown): JobSpecInput {
  const parsed = JobSpecSchema.safeParse(spec);
  if (parsed.success) return spec as JobSpecInput;
  throw new FabricError('BAD_INPUT', `invalid job spec: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(spec)'}: ${i.message}`).join('; ')}`);
}

/** A spec file: JSON or YAML (JSON is YAML, but a JSON syntax error reads better from the JSON parser). */
export function readSpecFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new FabricError('BAD_INPUT', `cannot read spec file ${path}: ${errorMessage(err)}`);
  }
  try {
    return /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new FabricError('BAD_INPUT', `${path} is not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML'}: ${errorMessage(err).split('\n')[0]}`);
  }
}

const ACTIVE = new Set(['queued', 'placed', 'running', 'restarting', 'lost']);

export function jobsTable(jobs: readonly Job[], now: number): string {
  const rows = jobs.map((j) => {
    const last = j.attempts.at(-1);
    const where = last === undefined || !['placed', 'running'].includes(j.state) ? '-' : last.peerIds.map(shortPeerId).join(',');
    return [j.id, j.name, j.tenant, j.state, String(j.attempt), where, formatAge(Math.max(0, now - j.submittedAt))];
  });
  return table(['JOB', 'NAME', 'TENANT', 'STATE', 'ATTEMPT', 'PEERS', 'AGE'], rows);
}

export function jobDetail(job: JobDetail, now: number): string {
  const lines = [
    `job       ${job.id} (${job.name})`,
    `state     ${job.state}${job.reason ? ` — ${job.reason}` : ''}${job.exitCode !== null ? ` (exit ${job.exitCode})` : ''}`,
    `tenant    ${job.tenant}, priority ${job.priority}${job.preemptible ? ', preemptible' : ''}`,
    `submitted ${formatAge(Math.max(0, now - job.submittedAt))} ago by ${job.submittedBy}`,
    `spec      ${JSON.stringify(job.spec)}`,
  ];
  if (job.attempts.length > 0) {
    lines.push('attempts');
    lines.push(table(['  #', 'EPOCH', 'PEERS', 'OUTCOME', 'REASON'], job.attempts.map((a) => [`  ${a.attempt}`, String(a.epoch), a.peerIds.map(shortPeerId).join(','), a.outcome ?? 'live', a.reason ?? ''])));
  }
  if (job.checkpoints.length > 0) {
    lines.push('checkpoints');
    lines.push(table(['  STEP', 'SIZE', 'HOLDERS', 'MANIFEST'], job.checkpoints.map((c) => [`  ${c.step}`, `${(c.sizeBytes / 1_048_576).toFixed(1)} MiB`, c.holders.map(shortPeerId).join(','), c.manifestId.slice(0, 16)])));
  }
  return lines.join('\n');
}

export function registerJobCommands(program: Command): void {
  const run = program
    .command('run')
    .description('run a command as a job on the fabric; prints the job id first')
    .argument('<command...>', 'the command and its arguments (put them after --)')
    .option('--name <name>', 'job name (default: the program)')
    .option('--tenant <tenant>', 'tenant the job is accounted to (default: default)')
    .option('--priority <n>', 'higher runs first and may preempt lower preemptible jobs (default 0)')
    .option('--preemptible', 'a higher-priority job may take its devices, after a checkpoint')
    .option('--gpus <n|fraction|auto>', 'GPUs: a count, a fraction of one GPU (0.25), or auto (with --params)')
    .option('--mig <profile>', 'one MIG slice of this profile, e.g. 3g.40gb')
    .option('--gpu-mem <size>', 'memory each GPU must have, e.g. 40GiB')
    .option('--model <name>', 'allowed GPU model, repeatable (H100, A100-SXM4-80GB, MI300X)', collect)
    .option('--vendor <vendor>', 'nvidia or amd')
    .option('--selector <expr>', 'device selector expression over device attributes')
    .option('--interconnect <kind>', 'nvlink: a multi-GPU member gets GPUs linked by NVLink/XGMI')
    .option('--cpu <cores>', 'CPU cores per member')
    .option('--memory <size>', 'host memory per member, e.g. 64GiB')
    .option('--nodes <n>', 'a gang over this many peers, placed all or nothing')
    .option('--gpus-per-node <n>', 'GPUs on each peer of the gang')
    .option('--spot-tolerant', 'may run on spot hosts')
    .option('--max-price <x>', 'highest price per GPU hour')
    .option('--spread-over <label>', 'spread a gang over zone, region or cloud')
    .option('--params <n>', 'model size (7B, 70e9): sizes memory and GPU count')
    .option('--dtype <dtype>', 'model weights dtype (bf16, fp16, fp32, int8, int4)')
    .option('--mode <mode>', 'inference, lora or full (fine-tune/train)')
    .option('--env <NAME=value>', 'environment variable for the job, repeatable', collect)
    .option('--workdir <dir>', 'working directory on the host')
    .option('--checkpoint-dir <dir>', 'where the job writes checkpoints (default: one the daemon makes)')
    .option('--wait-for-capacity', 'queue even if no peer of the fabric could run it today')
    .option('--follow', 'stay and show the job state until it ends')
    .option('--json', 'print {jobId, state} as JSON');
  addDataDirOption(run).action(
    action(async (command: string[], raw: Record<string, unknown>) => {
      const flags = parseFlags(RunFlagsSchema, raw);
      const spec = checkSpec(specFromRunFlags(flags, command));
      const client = FabricClient.fromDataDir(dataDirOf(flags));
      const r = await client.submitJob({ spec });
      if (flags.json) printJson(r);
      else process.stdout.write(`${r.jobId}\n`);
      if (flags.follow) await follow(client, r.jobId);
    }),
  );

  addDataDirOption(
    program
      .command('submit')
      .description('submit a job from a spec file (JSON or YAML, the same fields as `fabric run`)')
      .argument('<spec>', 'path of the spec file')
      .option('--json', 'print {jobId, state} as JSON'),
  ).action(
    action(async (path: string, flags: CommonFlags) => {
      const spec = checkSpec(readSpecFile(path));
      const r = await FabricClient.fromDataDir(dataDirOf(flags)).submitJob({ spec });
      if (flags.json) printJson(r);
      else process.stdout.write(`${r.jobId}\n`);
    }),
  );

  addDataDirOption(
    program
      .command('ps')
      .description('list jobs that are not finished')
      .option('--all', 'finished jobs too')
      .option('--json', 'print the jobs as JSON'),
  ).action(
    action(async (flags: CommonFlags & { all?: boolean }) => {
      const jobs = await FabricClient.fromDataDir(dataDirOf(flags)).jobs(flags.all === true);
      if (flags.json) printJson(jobs);
      else process.stdout.write(`${jobsTable(jobs, Date.now())}\n`);
    }),
  );

  const job = program.command('job').description('one job in detail');
  addDataDirOption(job.command('show').description('a job with its state, attempts and checkpoints').argument('<job>', 'job id').option('--json', 'print the job as JSON')).action(
    action(async (id: string, flags: CommonFlags) => {
      const detail = await FabricClient.fromDataDir(dataDirOf(flags)).job(id);
      if (flags.json) printJson(detail);
      else process.stdout.write(`${jobDetail(detail, Date.now())}\n`);
    }),
  );

  addDataDirOption(
    program
      .command('cancel')
      .description('cancel a job: its processes get SIGTERM, then SIGKILL after a grace period')
      .argument('<job>', 'job id')
      .option('--reason <text>', 'why, for the audit trail')
      .option('--json', 'print {jobId, state} as JSON'),
  ).action(
    action(async (id: string, flags: CommonFlags & { reason?: string }) => {
      const r = await FabricClient.fromDataDir(dataDirOf(flags)).cancelJob(id, flags.reason !== undefined ? { reason: flags.reason } : {});
      if (flags.json) printJson(r);
      else process.stdout.write(`${r.jobId} ${r.state}\n`);
    }),
  );
}

/** Shows state changes until the job ends; exits non-zero when it did not succeed. */
async function follow(client: FabricClient, jobId: string): Promise<void> {
  let last = '';
  for (;;) {
    const j = await client.job(jobId);
    const line = `${j.state}${j.attempts.length > 0 ? ` (attempt ${j.attempt} on ${j.attempts.at(-1)!.peerIds.map(shortPeerId).join(',')})` : ''}`;
    if (line !== last) process.stderr.write(`${jobId}: ${line}\n`);
    last = line;
    if (!ACTIVE.has(j.state)) {
      if (j.state !== 'succeeded') process.exitCode = 1;
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
