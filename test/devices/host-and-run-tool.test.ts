import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { HostSchema } from '../../src/devices/model.ts';
import { countNumaNodes, readHostInfo } from '../../src/devices/probe/host.ts';
import { runTool } from '../../src/node/run-tool.ts';

describe('readHostInfo', () => {
  test('CPU model and core count from node:os, memory in MiB', () => {
    const host = readHostInfo();
    expect(HostSchema.safeParse(host).success).toBe(true);
    expect(host.cpuCores).toBe(cpus().length);
    expect(host.memoryMiB).toBeGreaterThan(64);
    expect(host.cpuModel.length).toBeGreaterThan(0);
  });

  const sysfs = mkdtempSync(join(tmpdir(), 'fabric-numa-'));
  afterAll(() => rmSync(sysfs, { recursive: true, force: true }));

  test('NUMA nodes are the nodeN entries of sysfs', () => {
    for (const name of ['node0', 'node1', 'possible', 'has_cpu', 'power']) mkdirSync(join(sysfs, name));
    expect(countNumaNodes(sysfs)).toBe(2);
    expect(countNumaNodes(join(sysfs, 'missing'))).toBeUndefined();
  });
});

describe('runTool (execFile)', () => {
  const node = { file: process.execPath, prefixArgs: ['-e'] };

  test('stdout, stderr and exit 0', async () => {
    expect(await runTool(node, ["process.stdout.write('out'); process.stderr.write('err')"])).toEqual({ code: 0, stdout: 'out', stderr: 'err', notFound: false });
  });

  test('a non-zero exit keeps its code and output', async () => {
    expect(await runTool(node, ["process.stdout.write('partial'); process.exit(6)"])).toEqual({ code: 6, stdout: 'partial', stderr: '', notFound: false });
  });

  test('a missing executable is notFound', async () => {
    expect(await runTool({ file: '/nonexistent/fabric-test/nvidia-smi', prefixArgs: [] }, ['-L'])).toMatchObject({ code: null, notFound: true });
  });

  test('extra environment variables reach the tool', async () => {
    const result = await runTool({ ...node, env: { FABRIC_TEST_VALUE: 'xyz' } }, ['process.stdout.write(process.env.FABRIC_TEST_VALUE + " " + (process.env.PATH ? "path" : "nopath"))']);
    expect(result.stdout).toBe('xyz path');
  });

  test('aborting rejects with ABORTED and stops the tool', async () => {
    const controller = new AbortController();
    const running = runTool(node, ['setInterval(() => {}, 1000)'], controller.signal);
    controller.abort();
    await expect(running).rejects.toSatisfy((err: unknown) => isFabricError(err, 'ABORTED'));
    const already = runTool(node, ['0'], controller.signal);
    await expect(already).rejects.toSatisfy((err: unknown) => isFabricError(err, 'ABORTED'));
  });
});
