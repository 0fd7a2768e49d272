import { describe, expect, test } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { findCaptureSection } from '../../src/devices/fake/captures.ts';
import { PROFILES, simulatedTools } from '../../src/devices/fake/profiles.ts';
import { InventorySchema, type Host, type Inventory } from '../../src/devices/model.ts';
import { discoverInventory, type RunTool, type ToolCommand, type ToolResult } from '../../src/devices/probe/discover.ts';
import { runTool } from '../../src/node/run-tool.ts';
import { readFixture } from './fixtures.ts';

const HOST: Host = { cpuModel: 'Test CPU', cpuCores: 16, memoryMiB: 65536, numaNodes: 2 };
const NVIDIA: ToolCommand = { file: 'nvidia-smi', prefixArgs: [] };
const ROCM: ToolCommand = { file: 'rocm-smi', prefixArgs: [] };
const ROCMINFO: ToolCommand = { file: 'rocminfo', prefixArgs: [] };

type Reply = Partial<ToolResult> | Error;

/**
 * An in-memory RunTool: replies by `<file> <args>`. A tool with no entries at all is not
 * installed; an unlisted command of an installed tool exits 1.
 */
function scriptedRun(replies: Record<string, Reply>): RunTool & { calls: string[] } {
  const calls: string[] = [];
  const run = async (cmd: ToolCommand, args: string[]): Promise<ToolResult> => {
    const key = [cmd.file, ...cmd.prefixArgs, ...args].join(' ');
    calls.push(key);
    const reply = replies[key];
    if (reply instanceof Error) throw reply;
    if (reply) return { code: 0, stdout: '', stderr: '', notFound: false, ...reply };
    if (!Object.keys(replies).some((k) => k === cmd.file || k.startsWith(`${cmd.file} `))) return { code: null, stdout: '', stderr: '', notFound: true };
    return { code: 1, stdout: '', stderr: `unexpected call ${key}`, notFound: false };
  };
  return Object.assign(run, { calls });
}

const exporterSection = (file: string, command: string) =>
  findCaptureSection(readFixture(`nvidia/captures/nvidia_gpu_exporter/${file}`), command.endsWith('=') ? { commandPrefix: command } : { command })!.output;
const H100_MIG = 'linux-x86_64__nvidia-h100-mig__590.48.01.txt';
const L40S = 'linux-x86_64__nvidia-l40s__595.80.txt';

async function discover(replies: Record<string, Reply>, signal?: AbortSignal): Promise<{ inventory: Inventory; calls: string[] }> {
  const run = scriptedRun(replies);
  const inventory = await discoverInventory({ run, nvidiaSmi: NVIDIA, rocmSmi: ROCM, rocminfo: ROCMINFO, host: HOST, ...(signal ? { signal } : {}) });
  // Whatever happened, the result is a valid Inventory that can be gossiped.
  expect(InventorySchema.safeParse(inventory).success).toBe(true);
  return { inventory, calls: run.calls };
}

const ROCM_JSON_KEY = 'rocm-smi --showid --showproductname --showuniqueid --showserial --showbus --showmeminfo vram --showuse --showtoponuma --showtopotype --json';

describe('discoverInventory with scripted tools', () => {
  test('no vendor tool installed: CPU-only, no warnings', async () => {
    const { inventory } = await discover({});
    expect(inventory).toEqual({ host: HOST, devices: [], links: [], warnings: [] });
  });

  test('exit 127 from a shell counts as not installed', async () => {
    const { inventory, calls } = await discover({
      'nvidia-smi -q -x': { code: 127, stderr: 'bash: nvidia-smi: command not found' },
      [ROCM_JSON_KEY]: { code: 127, stderr: 'bash: rocm-smi: command not found' },
    });
    expect(inventory.devices).toEqual([]);
    expect(inventory.warnings).toEqual([]);
    expect(calls).toEqual(['nvidia-smi -q -x', ROCM_JSON_KEY]);
  });

  test('a driver without GPUs (nvidia-smi exit 6) is CPU-only without a warning', async () => {
    const { inventory } = await discover({ 'nvidia-smi -q -x': { code: 6, stdout: 'No devices were found' } });
    expect(inventory).toMatchObject({ devices: [], warnings: [] });
  });

  test('XML report, compute capability and topology', async () => {
    const { inventory, calls } = await discover({
      'nvidia-smi -q -x': { stdout: readFixture('nvidia/xml/a10g.xml') },
      'nvidia-smi --query-gpu=index,uuid,compute_cap --format=csv,noheader': { stdout: '0, GPU-9a9a6c50-2a47-2f51-a902-b82c3b127e94, 8.6\n' },
      'nvidia-smi topo -m': { stdout: exporterSection(L40S, 'nvidia-smi topo -m') },
    });
    expect(inventory.warnings).toEqual([]);
    expect(inventory.devices).toHaveLength(1);
    expect(inventory.devices[0]).toMatchObject({ model: 'NVIDIA A10G', memoryMiB: 23028, computeCapability: '8.6', numaNode: 0 });
    // No MIG instances: no reason to ask -L.
    expect(calls).not.toContain('nvidia-smi -L');
  });

  test('XML refused: falls back to the text report without a warning', async () => {
    const { inventory, calls } = await discover({
      'nvidia-smi -q -x': { code: 2, stderr: 'Invalid combination of input arguments.' },
      'nvidia-smi -q': { stdout: exporterSection(H100_MIG, 'nvidia-smi -q') },
      'nvidia-smi -L': { stdout: exporterSection(H100_MIG, 'nvidia-smi -L') },
      'nvidia-smi topo -m': { stdout: exporterSection(H100_MIG, 'nvidia-smi topo -m') },
    });
    expect(calls.slice(0, 3)).toEqual(['nvidia-smi -q -x', 'nvidia-smi -q', 'nvidia-smi -L']);
    expect(inventory.warnings).toEqual([]);
    expect(inventory.devices[0]!.migInstances.map((m) => `${m.profile} ${m.uuid}`)).toEqual([
      '3g.40gb MIG-00000000-0000-0000-0000-000000000000',
      '2g.20gb MIG-00000001-0000-0000-0000-000000000001',
      '1g.10gb MIG-00000002-0000-0000-0000-000000000002',
      '1g.10gb MIG-00000003-0000-0000-0000-000000000003',
    ]);
  });

  test.each([
    ['garbage', { stdout: 'Segmentation fault' }, { stdout: '%%%%' }, [/^nvidia-smi -q -x: no <nvidia_smi_log> document in output$/, /^nvidia-smi -q: no "GPU <bus id>" sections in output$/]],
    ['empty output', { stdout: '' }, { stdout: '' }, [/^nvidia-smi -q -x: no <nvidia_smi_log>/, /^nvidia-smi -q: no "GPU <bus id>" sections/]],
    [
      'truncated XML, failing text report',
      { stdout: readFixture('nvidia/xml/tesla-t4.xml').slice(0, 3000) },
      { code: 9, stderr: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." },
      [/^nvidia-smi -q -x: malformed XML/, /^nvidia-smi -q: exited 9: NVIDIA-SMI has failed because it couldn't communicate/],
    ],
  ])('unreadable nvidia-smi output (%s): zero devices, warnings name the commands', async (_name, xmlReply, textReply, warnings) => {
    const { inventory } = await discover({ 'nvidia-smi -q -x': xmlReply, 'nvidia-smi -q': textReply });
    expect(inventory.devices).toEqual([]);
    expect(inventory.links).toEqual([]);
    expect(inventory.host).toEqual(HOST);
    expect(inventory.warnings).toHaveLength(warnings.length);
    inventory.warnings.forEach((w, i) => expect(w).toMatch(warnings[i]!));
  });

  test('a RunTool that throws is a warning, not a crash', async () => {
    const { inventory } = await discover({ 'nvidia-smi -q -x': new Error('spawn EACCES'), 'nvidia-smi -q': new Error('spawn EACCES') });
    expect(inventory.warnings).toEqual(['nvidia-smi -q -x: could not run: spawn EACCES', 'nvidia-smi -q: could not run: spawn EACCES']);
  });

  test('topology failing or unreadable: devices stay, a warning says why', async () => {
    const report = { stdout: readFixture('nvidia/captures/multi-gpu/H100NVLx2_smi_-a.txt') };
    const failed = await discover({ 'nvidia-smi -q': report, 'nvidia-smi topo -m': { code: 3, stderr: 'Failed to initialize NVML: Unknown Error' } });
    expect(failed.inventory.devices).toHaveLength(2);
    expect(failed.inventory.links).toEqual([]);
    expect(failed.inventory.warnings).toEqual(['nvidia-smi topo -m: exited 3: Failed to initialize NVML: Unknown Error']);
    const garbled = await discover({ 'nvidia-smi -q': report, 'nvidia-smi topo -m': { stdout: 'GPU0\tGPU1\nGPU0\t X \n' } });
    expect(garbled.inventory.devices).toHaveLength(2);
    expect(garbled.inventory.warnings).toEqual(['nvidia-smi topo -m: row GPU0 is cut short (1 of 2 cells)']);
  });

  test('a topology of another GPU count: warned, links kept only between known GPUs', async () => {
    const { inventory } = await discover({
      'nvidia-smi -q': { stdout: readFixture('nvidia/captures/multi-gpu/H100NVLx2_smi_-a.txt') },
      'nvidia-smi topo -m': { stdout: readFixture('nvidia/topo/litgpt_nvlink_not_connected_output.txt') },
    });
    expect(inventory.warnings).toEqual(['nvidia-smi topo -m: matrix has 4 GPUs, nvidia-smi -q listed 2']);
    expect(inventory.links).toEqual([{ a: 0, b: 1, kind: 'phb', width: 0 }]);
  });

  test('MIG without -L: names from mig -lgi, a warning that MIG UUIDs are unknown', async () => {
    const { inventory } = await discover({
      'nvidia-smi -q -x': { stdout: readFixture('nvidia/xml/a100-sxm4-v12.xml') },
      'nvidia-smi -L': { code: 4, stderr: 'Insufficient Permissions' },
      'nvidia-smi mig -lgi': {
        stdout: ['| GPU instances:                     |', '|   0  MIG 1g.20gb     15        3          0:2     |', '|   0  MIG 1g.20gb     15        4          2:2     |', ''].join('\n'),
      },
      'nvidia-smi topo -m': { stdout: exporterSection(L40S, 'nvidia-smi topo -m') },
    });
    expect(inventory.warnings).toEqual(['nvidia-smi -L: exited 4: Insufficient Permissions; MIG device UUIDs unknown']);
    expect(inventory.devices[0]!.migInstances.map((m) => [m.profile, m.uuid, m.gpuInstanceId])).toEqual([
      ['1g.20gb', '', 3],
      ['1g.20gb', '', 4],
      ['1g.20gb', '', 5],
      ['1g.20gb', '', 6],
    ]);
  });

  test('-L listing MIG devices that -q does not have: warned', async () => {
    const { inventory } = await discover({
      'nvidia-smi -q -x': { stdout: readFixture('nvidia/xml/a100-sxm4-v12.xml') },
      'nvidia-smi -L': { stdout: readFixture('nvidia/mig/scaleway_H100-PCIe_r525_nvidia-smi-L_mig.txt').replace('Device  3', 'Device  7') },
      'nvidia-smi topo -m': { stdout: exporterSection(L40S, 'nvidia-smi topo -m') },
    });
    expect(inventory.warnings).toEqual(['nvidia-smi -L: 1 MIG device(s) not found in nvidia-smi -q output']);
    expect(inventory.devices[0]!.migInstances.map((m) => m.profile)).toEqual(['3g.40gb', '1g.10gb', '1g.10gb', '1g.20gb']);
  });

  test('rocm-smi JSON unreadable: text report, rocminfo for VRAM, link matrix', async () => {
    const { inventory, calls } = await discover({
      [ROCM_JSON_KEY]: { stdout: 'WARNING: unknown option --showtopotype' },
      'rocm-smi -a': { stdout: readFixture('amd/mi300x/MI300X_x4_smi_-a.txt') },
      rocminfo: { stdout: readFixture('amd/mi300x/MI300X_x4_rocminfo.txt') },
      'rocm-smi': { stdout: readFixture('amd/mi300x/MI300X_x4_smi.txt') },
      'rocm-smi --showtopotype': { stdout: readFixture('amd/litgpt_rocm_smi_xgmi_output_multi_gpu.txt') },
    });
    expect(inventory.warnings).toEqual([]);
    expect(calls).toEqual(['nvidia-smi -q -x', ROCM_JSON_KEY, 'rocm-smi -a', 'rocminfo', 'rocm-smi', 'rocm-smi --showtopotype']);
    expect(inventory.devices.map((d) => [d.index, d.memoryMiB, d.computeCapability])).toEqual([0, 1, 2, 3].map((i) => [i, 196592, 'gfx942']));
    expect(inventory.links).toHaveLength(6);
    expect(inventory.links.every((l) => l.kind === 'xgmi')).toBe(true);
  });

  test('rocminfo missing on the text path: GPUs kept with VRAM 0 and a warning', async () => {
    const { inventory } = await discover({
      [ROCM_JSON_KEY]: { code: 2, stderr: 'usage' },
      'rocm-smi -a': { stdout: readFixture('amd/mi300x/MI300X_x4_smi_-a.txt') },
      'rocm-smi --showtopotype': { stdout: readFixture('amd/litgpt_rocm_smi_xgmi_output_multi_gpu.txt') },
    });
    expect(inventory.devices.map((d) => d.memoryMiB)).toEqual([0, 0, 0, 0]);
    expect(inventory.warnings).toEqual(['rocm-smi: VRAM size unknown for GPU[0], GPU[1], GPU[2], GPU[3] (rocminfo: not installed)']);
  });

  test('NVIDIA and AMD on one host: AMD GPUs are numbered after the NVIDIA ones', async () => {
    const { inventory } = await discover({
      'nvidia-smi -q': { stdout: readFixture('nvidia/captures/multi-gpu/H100SXMx8_smi_-a.txt') },
      'nvidia-smi topo -m': { stdout: readFixture('nvidia/topo/nccl-issue1264_HGX-H100-SXM_NV18_TRUNCATED-after-NIC2.txt') },
      [ROCM_JSON_KEY]: { stdout: readFixture('amd/rocm-smi-json/mi100_rocm602.json') },
    });
    expect(inventory.devices.map((d) => `${d.index}:${d.vendor}`)).toEqual([...[0, 1, 2, 3, 4, 5, 6, 7].map((i) => `${i}:nvidia`), '8:amd', '9:amd', '10:amd', '11:amd']);
    expect(inventory.links).toHaveLength(28 + 6);
    expect(inventory.links.filter((l) => l.kind === 'node').map((l) => [l.a, l.b])).toEqual([[8, 9], [8, 10], [8, 11], [9, 10], [9, 11], [10, 11]]);
    expect(inventory.warnings).toEqual([]);
  });

  test('a long tool message is cut to one short line', async () => {
    const { inventory } = await discover({ 'nvidia-smi -q -x': { code: 1, stderr: `${'x'.repeat(1000)}\nsecond line` }, 'nvidia-smi -q': { code: 1 } });
    expect(inventory.warnings[0]!.length).toBeLessThan(200);
    expect(inventory.warnings[0]).not.toContain('second line');
    expect(inventory.warnings[1]).toBe('nvidia-smi -q: exited 1');
  });

  test('an aborted discovery rejects with ABORTED', async () => {
    const controller = new AbortController();
    controller.abort();
    let caught: unknown;
    try {
      await discover({ 'nvidia-smi -q -x': { stdout: '' } }, controller.signal);
    } catch (err) {
      caught = err;
    }
    expect(isFabricError(caught, 'ABORTED')).toBe(true);
  });
});

/** What each simulated profile must discover, through the real fake-smi child process. */
const EXPECTED: Record<string, { devices: number; vendor?: 'nvidia' | 'amd'; model?: string; memoryMiB?: number; links: number; linkKinds?: string[]; mig: number; numa?: (number | undefined)[]; computeCapability?: string; warnings: RegExp[] }> = {
  'h100-sxm-8': { devices: 8, vendor: 'nvidia', model: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, links: 28, linkKinds: ['nvlink18'], mig: 0, numa: [0, 0, 0, 0, 1, 1, 1, 1], warnings: [] },
  'a100-sxm-8': { devices: 8, vendor: 'nvidia', model: 'NVIDIA A100-SXM4-40GB', memoryMiB: 40960, links: 28, linkKinds: ['nvlink12'], mig: 0, numa: [0, 0, 0, 0, 0, 0, 0, 0], warnings: [] },
  'h100-mig': { devices: 1, vendor: 'nvidia', model: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, links: 0, mig: 4, numa: [0], computeCapability: '9.0', warnings: [] },
  'h200-mig': { devices: 1, vendor: 'nvidia', model: 'NVIDIA H200', memoryMiB: 143771, links: 0, mig: 5, numa: [0], computeCapability: '9.0', warnings: [] },
  'a100-mig': {
    devices: 1,
    vendor: 'nvidia',
    model: 'NVIDIA A100-SXM4-80GB',
    memoryMiB: 81920,
    links: 0,
    mig: 4,
    numa: [undefined],
    warnings: [/^nvidia-smi -L: exited 1: simulated profile a100-mig has no capture of `nvidia-smi -L`; MIG device UUIDs unknown$/, /^nvidia-smi topo -m: exited 1: /],
  },
  'l40s-1': { devices: 1, vendor: 'nvidia', model: 'NVIDIA L40S', memoryMiB: 46068, links: 0, mig: 0, numa: [0], computeCapability: '8.9', warnings: [] },
  'mi300x-4': { devices: 4, vendor: 'amd', model: 'AMD Instinct MI300X OAM', memoryMiB: 196592, links: 6, linkKinds: ['xgmi1'], mig: 0, computeCapability: 'gfx942', warnings: [] },
  'mi100-4': { devices: 4, vendor: 'amd', model: 'Arcturus GL-XL [Instinct MI100]', memoryMiB: 32752, links: 6, linkKinds: ['node0'], mig: 0, numa: [1, 1, 1, 1], warnings: [] },
  'cpu-only': { devices: 0, links: 0, mig: 0, warnings: [] },
};

function identifiers(inventory: Inventory): string[] {
  return inventory.devices.flatMap((d) => [d.uuid, ...d.migInstances.map((m) => m.uuid).filter((u) => u !== '')]);
}

describe.concurrent('discoverInventory through the fake tool as a child process', () => {
  test('every profile has an expectation', () => {
    expect(Object.keys(EXPECTED)).toEqual(PROFILES.map((p) => p.name));
  });

  test.each(Object.entries(EXPECTED))('%s', async (profile, expected) => {
    const [first, second] = await Promise.all(['seed-1', 'seed-2'].map((seed) => discoverInventory({ run: runTool, host: HOST, ...simulatedTools(profile, seed) })));
    for (const inventory of [first!, second!]) {
      expect(InventorySchema.safeParse(inventory).success).toBe(true);
      expect(inventory.devices).toHaveLength(expected.devices);
      expect(inventory.links).toHaveLength(expected.links);
      expect(inventory.warnings).toHaveLength(expected.warnings.length);
      inventory.warnings.forEach((w, i) => expect(w).toMatch(expected.warnings[i]!));
      expect(inventory.devices.map((d) => d.index)).toEqual(inventory.devices.map((_d, i) => i));
      for (const d of inventory.devices) {
        expect(d).toMatchObject({ vendor: expected.vendor, model: expected.model, memoryMiB: expected.memoryMiB });
        expect(d.computeCapability).toBe(expected.computeCapability);
      }
      expect(inventory.devices.reduce((n, d) => n + d.migInstances.length, 0)).toBe(expected.mig);
      if (expected.numa) expect(inventory.devices.map((d) => d.numaNode)).toEqual(expected.numa);
      if (expected.linkKinds) expect([...new Set(inventory.links.map((l) => `${l.kind}${l.width}`))]).toEqual(expected.linkKinds);
    }
    // Two seeds, two simulated daemons: no identifier in common, none repeated within one host.
    const ids1 = identifiers(first!);
    const ids2 = identifiers(second!);
    expect(new Set(ids1).size).toBe(ids1.length);
    expect(ids1.filter((id) => ids2.includes(id))).toEqual([]);
  });

  test('a MIG profile carries names and UUIDs from the simulated -L, and the same seed replays exactly', async () => {
    const [inventory, again] = await Promise.all([1, 2].map(() => discoverInventory({ run: runTool, host: HOST, ...simulatedTools('h200-mig', 'x') })));
    expect(again).toEqual(inventory);
    const instances = inventory!.devices[0]!.migInstances;
    expect(instances.map((m) => m.profile)).toEqual(['1c.3g.71gb', '2c.3g.71gb', '2g.35gb', '1g.18gb', '1g.18gb']);
    expect(instances.every((m) => /^MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(m.uuid))).toBe(true);
  });

  test('a real child process printing garbage: zero devices and warnings naming nvidia-smi', async () => {
    const garbage: ToolCommand = { file: process.execPath, prefixArgs: ['-e', "process.stdout.write('<html>502 Bad Gateway</html>')", '--'] };
    const missing: ToolCommand = { file: '/nonexistent/fabric-test/rocm-smi', prefixArgs: [] };
    const inventory = await discoverInventory({ run: runTool, host: HOST, nvidiaSmi: garbage, rocmSmi: missing, rocminfo: missing });
    expect(inventory.devices).toEqual([]);
    expect(inventory.warnings).toEqual(['nvidia-smi -q -x: no <nvidia_smi_log> document in output', 'nvidia-smi -q: no "GPU <bus id>" sections in output']);
  });
});
