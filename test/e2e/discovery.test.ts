/**
 * Discovery through a real daemon: `--nvidia-smi PATH` and `FABRIC_NVIDIA_SMI` run another
 * executable in place of nvidia-smi; output that cannot be read leaves the host CPU-only with a
 * warning, and the daemon keeps running.
 */
import { afterAll, describe, expect, test } from 'vitest';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Fabric, LOOPBACK } from './harness.ts';

const FIXTURES = join(import.meta.dirname, '..', '..', 'fixtures', 'devices', 'nvidia', 'xml');

function script(dir: string, name: string, body: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

describe('discovery in a running daemon', () => {
  const fabric = new Fabric();
  afterAll(() => fabric.cleanup());

  test('--nvidia-smi runs the given executable: a real A10G report gives one A10G', async () => {
    const tool = script(fabric.root, 'smi-a10g', `case "$*" in\n  "-q -x") cat '${join(FIXTURES, 'a10g.xml')}' ;;\n  *) echo "unsupported: $*" >&2; exit 2 ;;\nesac`);
    const d = fabric.daemon('a10g');
    await d.start(['init', ...LOOPBACK, '--nvidia-smi', tool]);
    const [self] = await d.nodes();
    expect(self!.devices).toHaveLength(1);
    expect(self!.devices[0]!.model).toMatch(/A10G/);
    expect(self!.devices[0]!.uuid).toMatch(/^GPU-/);
    expect(self!.devices[0]!.memoryMiB).toBeGreaterThan(22_000);
  });

  test('FABRIC_NVIDIA_SMI printing garbage: the host joins CPU-only with a warning naming the tool', async () => {
    const tool = script(fabric.root, 'smi-garbage', 'echo "this is not what nvidia-smi prints"');
    const d = fabric.daemon('garbage');
    process.env['FABRIC_NVIDIA_SMI'] = tool;
    try {
      await d.start(['init', ...LOOPBACK]);
    } finally {
      delete process.env['FABRIC_NVIDIA_SMI'];
    }
    const s = await d.status();
    expect(s.devices).toBe(0);
    expect(s.warnings.join('\n')).toMatch(/nvidia-smi/);
    const [self] = await d.nodes();
    expect(self!.warnings.join('\n')).toMatch(/nvidia-smi/);
    const human = await d.cli(['status']);
    expect(human.stdout).toMatch(/warnings\s+nvidia-smi/);
  });

  test('a tool that is not installed means no GPUs of that vendor and no warning', async () => {
    const d = fabric.daemon('missing');
    await d.start(['init', ...LOOPBACK, '--nvidia-smi', join(fabric.root, 'does-not-exist')]);
    const s = await d.status();
    expect(s.devices).toBe(0);
    expect(s.warnings.filter((w) => /nvidia/.test(w))).toEqual([]);
  });
});
