/**
 * The job of the recovery benchmark: a "training" loop whose checkpoint is a large state file
 * (default 1 GiB of random bytes, written once, the same at every checkpoint, as frozen weights
 * would be) plus the step. Every `--checkpoint-every` steps it writes the step and commits with
 * FABRIC_CHECKPOINT_COMMIT; on start it resumes from FABRIC_RESTORE_DIR, checking the state file
 * is whole. It prints machine-readable lines the benchmark reads from its log:
 *
 *   launched <epoch ms> attempt <n>      (first thing: the process runs, its restore in place)
 *   started <epoch ms> attempt <n> resumed <step|none> state-bytes <n>   (state read and checked)
 *   step <n> <epoch ms>
 *   committed <n> <epoch ms>
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, readSync, renameSync, statSync, writeFileSync, writeSync } from 'node:fs';

process.stdout.write(`launched ${Date.now()} attempt ${process.env['FABRIC_ATTEMPT'] ?? '?'}\n`);

/** SHA-256 of a file, read in blocks (no buffer of its whole size). */
function fileSha256(path: string): string {
  const hash = createHash('sha256');
  const block = Buffer.allocUnsafe(16 * 1024 * 1024);
  const fd = openSync(path, 'r');
  try {
    for (let n = readSync(fd, block); n > 0; n = readSync(fd, block)) hash.update(block.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    'state-mib': { type: 'string', default: '1024' },
    'step-ms': { type: 'string', default: '100' },
    'checkpoint-every': { type: 'string', default: '20' },
  },
});
const stateBytes = Number(values['state-mib']) * 1024 * 1024;
const stepMs = Number(values['step-ms']);
const every = Number(values['checkpoint-every']);
const ckptDir = process.env['FABRIC_CHECKPOINT_DIR'];
if (ckptDir === undefined) throw new Error('FABRIC_CHECKPOINT_DIR is not set: run me as a fabric job');
const restoreDir = process.env['FABRIC_RESTORE_DIR'];
const commit = process.env['FABRIC_CHECKPOINT_COMMIT'];

let step = 0;
let resumed: number | null = null;
/** The state's SHA-256: read back from a verified restore, else computed below. */
let stateSha: string | undefined;
if (restoreDir !== undefined && existsSync(join(restoreDir, 'step.json'))) {
  const saved = JSON.parse(readFileSync(join(restoreDir, 'step.json'), 'utf8')) as { step: number; sha256: string };
  const sha = fileSha256(join(restoreDir, 'state.bin'));
  if (sha !== saved.sha256) throw new Error(`restored state.bin is not the one checkpointed (${sha} != ${saved.sha256})`);
  step = saved.step;
  resumed = step;
  stateSha = sha;
  // The state file is the checkpoint's: keep it where the next checkpoint reads it.
  renameSync(join(restoreDir, 'state.bin'), join(ckptDir, 'state.bin'));
}

const statePath = join(ckptDir, 'state.bin');
if (!existsSync(statePath) || statSync(statePath).size !== stateBytes) {
  const fd = openSync(statePath, 'w');
  const block = randomBytes(4 * 1024 * 1024);
  for (let written = 0; written < stateBytes; written += block.length) writeSync(fd, block, 0, Math.min(block.length, stateBytes - written));
  fsyncSync(fd);
  closeSync(fd);
}
stateSha ??= fileSha256(statePath);
process.stdout.write(`started ${Date.now()} attempt ${process.env['FABRIC_ATTEMPT'] ?? '?'} resumed ${resumed ?? 'none'} state-bytes ${stateBytes}\n`);

for (;;) {
  await new Promise((r) => setTimeout(r, stepMs));
  step++;
  process.stdout.write(`step ${step} ${Date.now()}\n`);
  if (step % every === 0 && commit !== undefined) {
    writeFileSync(join(ckptDir, 'step.json'), JSON.stringify({ step, sha256: stateSha }));
    const r = spawnSync('/bin/sh', ['-c', `${commit} --step ${step}`], { stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status === 0) process.stdout.write(`committed ${step} ${Date.now()}\n`);
  }
}
