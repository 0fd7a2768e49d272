/** `fabric demo`, the README's first command, end to end, and that it leaves nothing behind. */
import { describe, expect, test } from 'vitest';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { runCli } from './harness.ts';

describe('fabric demo', () => {
  test('starts a fabric, kills a host, sees it dead and back, and cleans up', async () => {
    const before = new Set(readdirSync(tmpdir()).filter((f) => f.startsWith('fabric-demo-')));
    const r = await runCli(['demo'], {}, 120_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/All 4 daemons see each other/);
    expect(r.stdout).toMatch(/8×H100 80GB HBM3 NV18/);
    expect(r.stdout).toMatch(/Killing peer-1 .* with kill -9/);
    expect(r.stdout).toMatch(/Every other daemon marked it dead \d+ ms after the kill/);
    expect(r.stdout).toMatch(/back under the same peer id \(same: .*incarnation 2\)/);
    expect(r.stdout).toMatch(/Daemons stopped and their data removed/);
    const after = readdirSync(tmpdir()).filter((f) => f.startsWith('fabric-demo-') && !before.has(f));
    expect(after).toEqual([]);
  }, 150_000);
});
