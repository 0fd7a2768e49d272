/** `fabric demo`, the README's first command, end to end, and that it leaves nothing behind. */
import { describe, expect, test } from 'vitest';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { runCli } from './harness.ts';

describe('fabric demo', () => {
  test('starts a fabric, runs a checkpointing job, kills its host, the job resumes elsewhere, and it cleans up', async () => {
    const before = new Set(readdirSync(tmpdir()).filter((f) => f.startsWith('fabric-demo-')));
    const r = await runCli(['demo'], {}, 240_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/All 4 daemons see each other/);
    expect(r.stdout).toMatch(/8×H100 80GB HBM3 NV18/);
    expect(r.stdout).toMatch(/Submitted a training job \(j-[0-9a-f]+\)/);
    expect(r.stdout).toMatch(/\| checkpoint step 20 committed/);
    expect(r.stdout).toMatch(/Killing peer-\d, the job's host, with kill -9/);
    expect(r.stdout).toMatch(/Every other daemon marked it dead \d+ ms after the kill/);
    expect(r.stdout).toMatch(/\| resumed from step [1-9]\d*/);
    expect(r.stdout).toMatch(/\| done: step 300 loss 0\.\d+ accuracy 0\.9\d+/);
    expect(r.stdout).toMatch(/The job succeeded after 2 attempts/);
    expect(r.stdout).toMatch(/Restart: \d+ ms from the kill/);
    const lost = /Work lost: (\d+) steps/.exec(r.stdout);
    expect(lost).not.toBeNull();
    expect(Number(lost![1])).toBeLessThanOrEqual(20);
    expect(r.stdout).toMatch(/Daemons stopped and their data removed/);
    const after = readdirSync(tmpdir()).filter((f) => f.startsWith('fabric-demo-') && !before.has(f));
    expect(after).toEqual([]);
  }, 270_000);
});
