/** The job commands of the CLI: run, submit, ps, job show, cancel. They work the same from every peer. */
import { readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { FabricError, errorMessage } from '../core/index.ts';
import { JobSpecSchema, type ExplainResponse, type ExplanationView, type Job, type JobDetail, type JobSpecInput } from '../api/schemas.ts';
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
  retries: z.coerce.number().int().min(0).max(999).optional(),
  retryBackoffMs: z.coerce.number().int().min(0).max(3_600_000).optional(),
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
  if (flags.retries !== undefined) spec['retry'] = { maxAttempts: flags.retries + 1, ...(flags.retryBackoffMs !== undefined ? { backoffBaseMs: flags.retryBackoffMs } : {}) };
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

export function explainText(id: string, r: ExplainResponse): string {
  const lines = [`job ${id}: ${r.state}`];
  if (r.note !== null) lines.push(r.note);
  const e = r.explanation;
  if (e === null) return lines.join('\n');
  lines.push(`wants  ${e.shape}${e.sizing !== null ? ` (${e.sizing})` : ''}`);
  lines.push(e.summary);
  if (e.removed.length > 0) {
    lines.push(table(['  FILTER', 'PEERS', 'WHY'], e.removed.map((r) => [`  ${r.filter}`, r.count.toLocaleString('en-US'), r.reason])));
  }
  if (e.chosen.length > 0) {
    lines.push('chosen');
    const plugins = Object.keys(e.chosen[0]!.plugins);
    const row = (p: ExplanationView['runnersUp'][number], devices: string) => [`  ${shortPeerId(p.peerId)}`, p.total.toFixed(1), ...plugins.map((k) => (p.plugins[k] ?? 0).toFixed(1)), devices];
    lines.push(table(['  PEER', 'SCORE', ...plugins.map((k) => k.toUpperCase()), 'DEVICES'], [...e.chosen.map((c) => row(c, c.devices.join(','))), ...e.runnersUp.map((c) => row(c, '(runner-up)'))]));
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
    .option('--retries <n>', 'run a failed attempt again up to n times, placed anew each time (default 0)')
    .option('--retry-backoff-ms <ms>', 'wait before the first retry, doubling after (default 1000)')
    .option('--wait-for-capacity', 'queue even if no peer of the fabric could run it today')
    .option('--follow', 'stay: show the output and state changes until the job ends')
    .option('--json', 'print {jobId, state} as JSON');
  addDataDirOption(run).action(
    action(async (command: string[], raw: Record<string, unknown>) => {
      const flags = parseFlags(RunFlagsSchema, raw);
      const spec = checkSpec(specFromRunFlags(flags, command));
      const client = FabricClient.fromDataDir(dataDirOf(flags));
      const r = await client.submitJob({ spec });
      if (flags.json) printJson(r);
      else process.stdout.write(`${r.jobId}\n`);
      if (flags.follow) {
        await Promise.all([follow(client, r.jobId), showLogs(client, r.jobId, 'stdout', { follow: true, tail: 0 }, process.stdout), showLogs(client, r.jobId, 'stderr', { follow: true, tail: 0 }, process.stderr)]);
      }
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

  const checkpoint = program.command('checkpoint').description("a job's checkpoints");
  checkpoint
    .command('commit')
    .description('commit the checkpoint a job wrote into $FABRIC_CHECKPOINT_DIR: replicated to other peers, then recorded; run by the job itself')
    .option('--step <n>', 'the training step it holds (default: one past the latest committed)')
    .option('--job <id>', 'the job (default $FABRIC_JOB_ID)')
    .option('--epoch <n>', 'the epoch the job runs under (default $FABRIC_EPOCH)')
    .option('--dir <dir>', 'the directory to commit (default $FABRIC_CHECKPOINT_DIR)')
    .option('--data-dir <dir>', "the host daemon's data directory (default $FABRIC_DATA_DIR, as fabric sets it for jobs)")
    .option('--json', 'print the outcome as JSON')
    .action(
      action(async (raw: Record<string, unknown>) => {
        const env = process.env;
        const flags = parseFlags(
          z.object({
            step: z.coerce.number().int().min(0).optional(),
            job: z.string().min(1, 'no job: give --job or run inside a fabric job ($FABRIC_JOB_ID)'),
            epoch: z.coerce.number().int().min(1, 'no epoch: give --epoch or run inside a fabric job ($FABRIC_EPOCH)'),
            dir: z.string().optional(),
            dataDir: z.string().optional(),
            json: z.boolean().optional(),
          }),
          { ...raw, job: raw['job'] ?? env['FABRIC_JOB_ID'] ?? '', epoch: raw['epoch'] ?? env['FABRIC_EPOCH'] ?? 0, dir: raw['dir'] ?? env['FABRIC_CHECKPOINT_DIR'] },
        );
        const dir = flags.dir === undefined ? undefined : resolvePath(flags.dir);
        const r = await FabricClient.fromDataDir(dataDirOf(flags)).commitCheckpoint(flags.job, { epoch: flags.epoch, ...(flags.step !== undefined ? { step: flags.step } : {}), ...(dir !== undefined ? { dir } : {}) });
        if (flags.json) printJson(r);
        else {
          const mib = (b: number) => (b >= 1_048_576 ? `${(b / 1_048_576).toFixed(1)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
          process.stdout.write(`checkpoint step ${r.step} of ${r.jobId} committed: ${mib(r.sizeBytes)} (${mib(r.newBytes)} new, ${mib(r.sentBytes)} sent), held by ${r.holders.map(shortPeerId).join(', ')}, ${r.ms} ms\n`);
        }
      }),
    );

  addDataDirOption(
    program
      .command('explain')
      .description('why a job waits (how many peers each filter removed, and why), or where it went and the scores that chose it')
      .argument('<job>', 'job id')
      .option('--json', 'print the explanation as JSON'),
  ).action(
    action(async (id: string, flags: CommonFlags) => {
      const r = await FabricClient.fromDataDir(dataDirOf(flags)).explainJob(id);
      if (flags.json) {
        printJson(r);
        return;
      }
      process.stdout.write(`${explainText(id, r)}\n`);
    }),
  );

  addDataDirOption(
    program
      .command('logs')
      .description("a job's output (stdout, and stderr on stderr), read from the peer it runs on")
      .argument('<job>', 'job id')
      .option('-f, --follow', 'keep printing new output until the job ends, across restarts on other peers')
      .option('--tail <bytes>', 'without --follow: how much of the end to show (default 65536)', '65536')
      .option('--stdout', 'only stdout')
      .option('--stderr', 'only stderr'),
  ).action(
    action(async (id: string, raw: Record<string, unknown>) => {
      const flags = parseFlags(z.object({ dataDir: z.string().optional(), follow: z.boolean().optional(), tail: z.coerce.number().int().min(0).max(1024 * 1024), stdout: z.boolean().optional(), stderr: z.boolean().optional() }), raw);
      const client = FabricClient.fromDataDir(dataDirOf(flags));
      const opts = { follow: flags.follow === true, tail: flags.tail };
      const streams: ['stdout' | 'stderr', NodeJS.WritableStream][] = [];
      if (flags.stderr !== true || flags.stdout === true) streams.push(['stdout', process.stdout]);
      if (flags.stdout !== true || flags.stderr === true) streams.push(['stderr', process.stderr]);
      await Promise.all(streams.map(([stream, out]) => showLogs(client, id, stream, opts, out)));
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

/**
 * Prints a job's output. Without `follow`: the tail of the stream. With it: everything from the
 * start, then new output as it comes (long-polling the host), across attempts and hosts, until
 * the job has ended and its output is drained.
 */
async function showLogs(client: FabricClient, jobId: string, stream: 'stdout' | 'stderr', opts: { follow: boolean; tail: number }, out: NodeJS.WritableStream): Promise<void> {
  if (!opts.follow) {
    const r = await client.jobLogs(jobId, { stream, tail: opts.tail });
    out.write(Buffer.from(r.data, 'base64'));
    return;
  }
  let from = 0;
  let source = '';
  for (;;) {
    let r;
    try {
      r = await client.jobLogs(jobId, { stream, from, wait: 1_000 });
    } catch (err) {
      // Not started yet, or its host is gone while the job restarts elsewhere: wait and look again.
      if (err instanceof FabricError && (err.code === 'NOT_FOUND' || err.code === 'DAEMON_UNREACHABLE' || err.code === 'INTERNAL')) {
        const j = await client.job(jobId);
        if (!ACTIVE.has(j.state) && j.attempts.length === 0) return;
        await new Promise((res) => setTimeout(res, 500));
        continue;
      }
      throw err;
    }
    const here = `${r.peerId}#${r.attempt}`;
    if (here !== source) {
      if (source !== '' && stream === 'stdout') process.stderr.write(`--- ${jobId}: attempt ${r.attempt} on ${shortPeerId(r.peerId)} ---\n`);
      if (source !== '' && r.peerId !== source.split('#')[0]) {
        from = 0; // another host: its log of this job starts at 0
        source = here;
        continue;
      }
      source = here;
    }
    if (r.dropped > 0) out.write(`[fabric: ${r.dropped} bytes of output rotated away]\n`);
    if (r.data.length > 0) out.write(Buffer.from(r.data, 'base64'));
    from = r.end;
    if (r.end >= r.size && !ACTIVE.has(r.state)) return;
  }
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
