/**
 * A small, real training job that needs nothing but Node: a two-layer neural network learns to
 * tell apart the three arms of a noisy spiral (a classic problem no straight line can solve),
 * trained with minibatch Adam. It is what `fabric demo` runs, and an example of a job that uses
 * fabric's checkpoint contract:
 *
 *   FABRIC_CHECKPOINT_DIR     every N steps the job writes model.json there: weights, Adam's
 *                             moments, the step, and the sampler's random state
 *   FABRIC_CHECKPOINT_COMMIT  then runs this command with ` --step N` appended (fabric sets it to
 *                             its `fabric checkpoint commit`); unset: no commit
 *   FABRIC_RESTORE_DIR        set when the job resumes: it loads model.json from there and
 *                             carries on from that step, exactly where the saved run was
 *
 * Resuming gives bit-for-bit the run that was not interrupted: the data comes from a fixed seed,
 * and the minibatch sampler's state is part of the checkpoint.
 *
 *   node examples/train/train.ts [--steps 300] [--checkpoint-every 20] [--step-delay-ms 0]
 *                                [--seed 7] [--log-every 10] [--lr 0.02] [--batch 64] [--hidden 48]
 * (environment TRAIN_STEPS, TRAIN_CHECKPOINT_EVERY, TRAIN_STEP_DELAY_MS work as well; flags win.)
 *
 * On SIGTERM (cancel, preemption) it finishes the current step, checkpoints that step unless it is
 * already committed, commits it, and exits with code 143: a preempted run resumes where it stopped.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';

const CLASSES = 3;
const POINTS_PER_CLASS = 200;
/** Spiral radius: wide enough that tanh units bend around the arms from the start. */
const RADIUS = 3;
const CHECKPOINT_FILE = 'model.json';
const FORMAT = 'fabric-example-train/1';

// ---------------------------------------------------------------- configuration

const Int = (min: number) => z.coerce.number().int().min(min);
const ConfigSchema = z.object({
  steps: Int(1).default(300),
  checkpointEvery: Int(1).default(20),
  stepDelayMs: Int(0).default(0),
  seed: Int(0).default(7),
  logEvery: Int(1).default(10),
  lr: z.coerce.number().positive().max(1).default(0.02),
  batch: Int(1).default(64),
  hidden: Int(1).max(4096).default(48),
});
type Config = z.infer<typeof ConfigSchema>;

const FLAGS = {
  steps: { type: 'string' },
  'checkpoint-every': { type: 'string' },
  'step-delay-ms': { type: 'string' },
  seed: { type: 'string' },
  'log-every': { type: 'string' },
  lr: { type: 'string' },
  batch: { type: 'string' },
  hidden: { type: 'string' },
} as const;

function readConfig(): Config {
  let values: ReturnType<typeof parseArgs<{ options: typeof FLAGS; strict: true }>>['values'];
  try {
    values = parseArgs({ options: FLAGS, strict: true }).values;
  } catch (err) {
    fail(`bad arguments: ${err instanceof Error ? err.message : String(err)}`);
  }
  const env = process.env;
  const parsed = ConfigSchema.safeParse({
    steps: values.steps ?? env.TRAIN_STEPS,
    checkpointEvery: values['checkpoint-every'] ?? env.TRAIN_CHECKPOINT_EVERY,
    stepDelayMs: values['step-delay-ms'] ?? env.TRAIN_STEP_DELAY_MS,
    seed: values.seed,
    logEvery: values['log-every'],
    lr: values.lr,
    batch: values.batch,
    hidden: values.hidden,
  });
  if (!parsed.success) {
    fail(`bad arguments: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

function fail(message: string): never {
  process.stderr.write(`train: ${message}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------- randomness (mulberry32: state is one uint32)

class Rng {
  state: number;
  constructor(state: number) {
    this.state = state >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  gaussian(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

// ---------------------------------------------------------------- data: three interleaved spiral arms

interface Dataset {
  x: Float64Array; // n × 2
  y: Int32Array;
  n: number;
}

function spiral(seed: number): Dataset {
  const rng = new Rng(seed ^ 0x5eed5eed);
  const n = CLASSES * POINTS_PER_CLASS;
  const x = new Float64Array(n * 2);
  const y = new Int32Array(n);
  for (let c = 0; c < CLASSES; c++) {
    for (let i = 0; i < POINTS_PER_CLASS; i++) {
      const r = (i + 1) / POINTS_PER_CLASS;
      const angle = (c * 2 * Math.PI) / CLASSES + r * 1.5 * Math.PI + rng.gaussian() * 0.15;
      const k = c * POINTS_PER_CLASS + i;
      x[2 * k] = RADIUS * r * Math.sin(angle);
      x[2 * k + 1] = RADIUS * r * Math.cos(angle);
      y[k] = c;
    }
  }
  return { x, y, n };
}

// ---------------------------------------------------------------- model: 2 → hidden (tanh) → 3 (softmax)

const PARAM_NAMES = ['w1', 'b1', 'w2', 'b2'] as const;
type ParamName = (typeof PARAM_NAMES)[number];
type Params = Record<ParamName, Float64Array>;

function shapes(hidden: number): Record<ParamName, number> {
  return { w1: 2 * hidden, b1: hidden, w2: hidden * CLASSES, b2: CLASSES };
}

function zeros(hidden: number): Params {
  const s = shapes(hidden);
  return { w1: new Float64Array(s.w1), b1: new Float64Array(s.b1), w2: new Float64Array(s.w2), b2: new Float64Array(s.b2) };
}

function initParams(hidden: number, rng: Rng): Params {
  const p = zeros(hidden);
  const a1 = Math.sqrt(6 / (2 + hidden));
  const a2 = Math.sqrt(6 / (hidden + CLASSES));
  for (let i = 0; i < p.w1.length; i++) p.w1[i] = (rng.next() * 2 - 1) * a1;
  for (let i = 0; i < p.w2.length; i++) p.w2[i] = (rng.next() * 2 - 1) * a2;
  return p;
}

/** Mean cross-entropy and accuracy over `rows`; with `grad`, adds the gradient of the mean loss into it. */
function evaluate(p: Params, hidden: number, data: Dataset, rows: ArrayLike<number>, grad?: Params): { loss: number; accuracy: number } {
  const h = new Float64Array(hidden);
  const probs = new Float64Array(CLASSES);
  const dlogits = new Float64Array(CLASSES);
  let loss = 0;
  let correct = 0;
  const m = rows.length;
  for (let r = 0; r < m; r++) {
    const k = rows[r]!;
    const x0 = data.x[2 * k]!;
    const x1 = data.x[2 * k + 1]!;
    for (let j = 0; j < hidden; j++) h[j] = Math.tanh(x0 * p.w1[j]! + x1 * p.w1[hidden + j]! + p.b1[j]!);
    let max = -Infinity;
    for (let c = 0; c < CLASSES; c++) {
      let z = p.b2[c]!;
      for (let j = 0; j < hidden; j++) z += h[j]! * p.w2[j * CLASSES + c]!;
      probs[c] = z;
      if (z > max) max = z;
    }
    let sum = 0;
    for (let c = 0; c < CLASSES; c++) {
      probs[c] = Math.exp(probs[c]! - max);
      sum += probs[c]!;
    }
    let best = 0;
    for (let c = 0; c < CLASSES; c++) {
      probs[c] = probs[c]! / sum;
      if (probs[c]! > probs[best]!) best = c;
    }
    const label = data.y[k]!;
    loss -= Math.log(Math.max(probs[label]!, 1e-300));
    if (best === label) correct++;
    if (!grad) continue;
    // Backward: d(mean loss)/d(logit c) = (p_c − [c = label]) / m, then through w2, tanh, w1.
    for (let c = 0; c < CLASSES; c++) dlogits[c] = (probs[c]! - (c === label ? 1 : 0)) / m;
    for (let c = 0; c < CLASSES; c++) grad.b2[c]! += dlogits[c]!;
    for (let j = 0; j < hidden; j++) {
      let dh = 0;
      for (let c = 0; c < CLASSES; c++) {
        grad.w2[j * CLASSES + c]! += h[j]! * dlogits[c]!;
        dh += p.w2[j * CLASSES + c]! * dlogits[c]!;
      }
      const dpre = dh * (1 - h[j]! * h[j]!);
      grad.b1[j]! += dpre;
      grad.w1[j]! += x0 * dpre;
      grad.w1[hidden + j]! += x1 * dpre;
    }
  }
  return { loss: loss / m, accuracy: correct / m };
}

// ---------------------------------------------------------------- Adam

interface Adam {
  m: Params;
  v: Params;
  t: number;
}

const BETA1 = 0.9;
const BETA2 = 0.999;
const EPS = 1e-8;

function adamStep(p: Params, g: Params, opt: Adam, lr: number): void {
  opt.t += 1;
  const c1 = 1 - BETA1 ** opt.t;
  const c2 = 1 - BETA2 ** opt.t;
  for (const name of PARAM_NAMES) {
    const w = p[name];
    const grad = g[name];
    const m = opt.m[name];
    const v = opt.v[name];
    for (let i = 0; i < w.length; i++) {
      m[i] = BETA1 * m[i]! + (1 - BETA1) * grad[i]!;
      v[i] = BETA2 * v[i]! + (1 - BETA2) * grad[i]! * grad[i]!;
      w[i]! -= (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + EPS);
    }
  }
}

// ---------------------------------------------------------------- checkpoints

const Vector = z.array(z.number());
const ParamsSchema = z.object({ w1: Vector, b1: Vector, w2: Vector, b2: Vector });
const CheckpointSchema = z.object({
  format: z.literal(FORMAT),
  step: z.number().int().min(0),
  seed: z.number().int(),
  hidden: z.number().int().min(1),
  rngState: z.number().int().min(0).max(0xffffffff),
  params: ParamsSchema,
  adam: z.object({ m: ParamsSchema, v: ParamsSchema, t: z.number().int().min(0) }),
  loss: z.number(),
});
type Checkpoint = z.infer<typeof CheckpointSchema>;

const toJson = (p: Params) => ({ w1: Array.from(p.w1), b1: Array.from(p.b1), w2: Array.from(p.w2), b2: Array.from(p.b2) });

function fromJson(raw: z.infer<typeof ParamsSchema>, hidden: number, what: string): Params {
  const s = shapes(hidden);
  const out = zeros(hidden);
  for (const name of PARAM_NAMES) {
    if (raw[name].length !== s[name]) fail(`checkpoint ${what}.${name} has ${raw[name].length} values, expected ${s[name]}`);
    out[name].set(raw[name]);
  }
  return out;
}

function writeDurably(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

function saveCheckpoint(dir: string, ckpt: Checkpoint): void {
  mkdirSync(dir, { recursive: true });
  writeDurably(join(dir, CHECKPOINT_FILE), JSON.stringify(ckpt));
}

function loadCheckpoint(dir: string): Checkpoint {
  const path = join(dir, CHECKPOINT_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot resume: ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const parsed = CheckpointSchema.safeParse(raw);
  if (!parsed.success) fail(`cannot resume: ${path} is not a checkpoint of this job: ${parsed.error.issues[0]?.message ?? ''}`);
  return parsed.data;
}

/** Runs the commit command; true when it committed. */
function commitCheckpoint(command: string, step: number): boolean {
  const r = spawnSync('/bin/sh', ['-c', `${command} --step ${step}`], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, FABRIC_CHECKPOINT_STEP: String(step) },
  });
  if (r.status === 0) {
    process.stdout.write(`checkpoint step ${step} committed\n`);
    return true;
  }
  const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit code ${r.status}`;
  process.stderr.write(`train: committing checkpoint step ${step} failed (${why})\n`);
  return false;
}

// ---------------------------------------------------------------- the loop

async function main(): Promise<void> {
  // From the start: a stop asked for while the job loads (or restores) still ends it cleanly.
  let stopping = false;
  process.on('SIGTERM', () => {
    stopping = true;
  });
  const cfg = readConfig();
  const checkpointDir = process.env.FABRIC_CHECKPOINT_DIR || undefined;
  const restoreDir = process.env.FABRIC_RESTORE_DIR || undefined;
  const commitCommand = process.env.FABRIC_CHECKPOINT_COMMIT || undefined;
  const data = spiral(cfg.seed);
  const all = Int32Array.from({ length: data.n }, (_, i) => i);

  let step = 0;
  let rng = new Rng(cfg.seed);
  let params = initParams(cfg.hidden, rng);
  let adam: Adam = { m: zeros(cfg.hidden), v: zeros(cfg.hidden), t: 0 };
  if (restoreDir !== undefined) {
    const ck = loadCheckpoint(restoreDir);
    if (ck.hidden !== cfg.hidden || ck.seed !== cfg.seed) {
      fail(`cannot resume: checkpoint was made with --hidden ${ck.hidden} --seed ${ck.seed}, this run has --hidden ${cfg.hidden} --seed ${cfg.seed}`);
    }
    step = ck.step;
    rng = new Rng(ck.rngState);
    params = fromJson(ck.params, cfg.hidden, 'params');
    adam = { m: fromJson(ck.adam.m, cfg.hidden, 'adam.m'), v: fromJson(ck.adam.v, cfg.hidden, 'adam.v'), t: ck.adam.t };
    process.stdout.write(`resumed from step ${step} (loss ${ck.loss.toFixed(4)})\n`);
  } else {
    const first = evaluate(params, cfg.hidden, data, all);
    process.stdout.write(`step 0/${cfg.steps} loss ${first.loss.toFixed(4)} accuracy ${first.accuracy.toFixed(3)}\n`);
  }
  if (checkpointDir === undefined) process.stdout.write('FABRIC_CHECKPOINT_DIR is not set: no checkpoints\n');

  /** The step whose checkpoint is saved, and committed where there is a commit command (-1: none yet). */
  let checkpointed = restoreDir !== undefined ? step : -1;
  const checkpoint = (loss: number) => {
    if (checkpointDir === undefined) return;
    saveCheckpoint(checkpointDir, {
      format: FORMAT,
      step,
      seed: cfg.seed,
      hidden: cfg.hidden,
      rngState: rng.state,
      params: toJson(params),
      adam: { m: toJson(adam.m), v: toJson(adam.v), t: adam.t },
      loss,
    });
    process.stdout.write(`checkpoint step ${step} saved\n`);
    if (commitCommand === undefined || commitCheckpoint(commitCommand, step)) checkpointed = step;
  };

  const batch = new Int32Array(Math.min(cfg.batch, data.n));
  while (step < cfg.steps && !stopping) {
    for (let i = 0; i < batch.length; i++) batch[i] = Math.floor(rng.next() * data.n);
    const grad = zeros(cfg.hidden);
    evaluate(params, cfg.hidden, data, batch, grad);
    adamStep(params, grad, adam, cfg.lr);
    step++;
    const report = step % cfg.logEvery === 0 || step === cfg.steps;
    const due = step % cfg.checkpointEvery === 0 || step === cfg.steps;
    if (report || due) {
      const { loss, accuracy } = evaluate(params, cfg.hidden, data, all);
      if (report) process.stdout.write(`step ${step}/${cfg.steps} loss ${loss.toFixed(4)} accuracy ${accuracy.toFixed(3)}\n`);
      if (due) checkpoint(loss);
    }
    // Yield every step, so that SIGTERM is seen; sleep when asked to go slowly.
    await new Promise((resolve) => (cfg.stepDelayMs > 0 ? setTimeout(resolve, cfg.stepDelayMs) : setImmediate(resolve)));
  }

  const final = evaluate(params, cfg.hidden, data, all);
  if (stopping) {
    // Asked to stop (cancel, preemption, fencing): checkpoint the step reached, unless that one
    // is already committed, so that the next run loses nothing. A commit that was under way when
    // SIGTERM came was signalled too (it is in this job's process group) and may have failed:
    // then this one is the retry.
    process.stdout.write(`stopping at step ${step}: SIGTERM\n`);
    if (checkpointed !== step) checkpoint(final.loss);
    process.exit(143);
  }
  process.stdout.write(`done: step ${step} loss ${final.loss.toFixed(4)} accuracy ${final.accuracy.toFixed(3)}\n`);
}

await main();
