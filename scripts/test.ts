/**
 * `npm test`: type check, import rules, then the whole vitest suite; ends with the plain line
 * `N passed, N failed` that CI reads. Exits non-zero when anything failed.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const bin = (name: string) => join(import.meta.dirname, '..', 'node_modules', '.bin', name);
const extraArgs = process.argv.slice(2);

function step(title: string, cmd: string, args: string[]): boolean {
  process.stdout.write(`\n== ${title}\n`);
  const started = Date.now();
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  process.stdout.write(`== ${title}: ${r.status === 0 ? 'ok' : 'FAILED'} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
  return r.status === 0;
}

let checksFailed = 0;
if (extraArgs.length === 0) {
  if (!step('type check (tsc)', bin('tsc'), ['-p', 'tsconfig.json'])) checksFailed++;
  if (!step('import rules (dependency-cruiser)', bin('depcruise'), ['src', '--config', '.dependency-cruiser.cjs'])) checksFailed++;
}

const outDir = mkdtempSync(join(tmpdir(), 'fabric-test-'));
const report = join(outDir, 'vitest.json');
step('tests (vitest)', bin('vitest'), ['run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...extraArgs]);

let passed = 0;
let failed = checksFailed;
try {
  const r = JSON.parse(readFileSync(report, 'utf8')) as { numPassedTests: number; numFailedTests: number; numFailedTestSuites?: number; numTotalTests: number };
  passed += r.numPassedTests;
  failed += r.numFailedTests + (r.numFailedTestSuites ?? 0);
  if (r.numTotalTests === 0) failed++;
} catch {
  failed++; // vitest died before writing its report
}
rmSync(outDir, { recursive: true, force: true });
process.stdout.write(`\n${passed} passed, ${failed} failed\n`);
process.exit(failed === 0 ? 0 : 1);
