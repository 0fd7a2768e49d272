import { describe, expect, test } from 'vitest';
import { splitCaptureSections } from '../../src/devices/fake/captures.ts';
import { migProfileGigabytes, migProfileSlices, migSlicesFromSmCount } from '../../src/devices/probe/nvidia-common.ts';
import { COMPUTE_CAP_FIELDS, mergeComputeCapability, parseNvidiaQueryGpuCsv } from '../../src/devices/probe/nvidia-csv.ts';
import {
  mergeNvidiaList,
  mergeNvidiaMigGpuInstances,
  parseNvidiaMigGpuInstances,
  parseNvidiaSmiList,
  parseNvidiaSmiText,
} from '../../src/devices/probe/nvidia-text.ts';
import { allMatches, expectDiscoveryError, listFixtures, readFixture } from './fixtures.ts';

/** The `nvidia-smi -a` reports of multi-GPU machines: every GPU is the same model. */
const MULTI_GPU: Record<string, { count: number; model: string; memoryMiB: number; architecture: string }> = {
  'A100SXM40GBx8_smi_-a.txt': { count: 8, model: 'NVIDIA A100-SXM4-40GB', memoryMiB: 40960, architecture: 'Ampere' },
  'A100SXMx4_smi_-a.txt': { count: 4, model: 'NVIDIA A100-SXM4-80GB', memoryMiB: 81920, architecture: 'Ampere' },
  'A40x10_smi_-a.txt': { count: 10, model: 'NVIDIA A40', memoryMiB: 46068, architecture: 'Ampere' },
  'GH200_smi_-a.txt': { count: 1, model: 'NVIDIA GH200 480GB', memoryMiB: 97871, architecture: 'Hopper' },
  'H100NVLx2_smi_-a.txt': { count: 2, model: 'NVIDIA H100 NVL', memoryMiB: 95830, architecture: 'Hopper' },
  'H100SXMx8_smi_-a.txt': { count: 8, model: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, architecture: 'Hopper' },
  'H200_smi_-a.txt': { count: 1, model: 'NVIDIA H200', memoryMiB: 143771, architecture: 'Hopper' },
  'L40S_smi_-a.txt': { count: 1, model: 'NVIDIA L40S', memoryMiB: 46068, architecture: 'Ada Lovelace' },
  'RTX6000Ada_x8_smi_-a.txt': { count: 8, model: 'NVIDIA RTX 6000 Ada Generation', memoryMiB: 49140, architecture: 'Ada Lovelace' },
  'V100_x8_smi_-a.txt': { count: 8, model: 'Tesla V100-SXM2-16GB', memoryMiB: 16384, architecture: 'Volta' },
};

describe('parseNvidiaSmiText on multi-GPU `nvidia-smi -a` reports', () => {
  test('the table covers every multi-GPU capture', () => {
    expect(Object.keys(MULTI_GPU).sort()).toEqual(listFixtures('nvidia/captures/multi-gpu', '_-a.txt'));
  });

  test.each(Object.entries(MULTI_GPU))('%s', (file, expected) => {
    const text = readFixture(`nvidia/captures/multi-gpu/${file}`);
    const devices = parseNvidiaSmiText(text);
    expect(devices).toHaveLength(expected.count);
    // UUIDs and bus ids in file order, found by plain regexes over the raw text.
    expect(devices.map((d) => d.uuid)).toEqual(allMatches(text, /GPU UUID\s+:\s+(GPU-[0-9a-f-]+)/));
    expect(devices.map((d) => d.pciBusId)).toEqual(allMatches(text, /^\s+Bus Id\s+:\s+0000(\S+)$/m).map((b) => b.toLowerCase()));
    devices.forEach((d, i) => {
      expect(d).toMatchObject({ index: i, vendor: 'nvidia', model: expected.model, memoryMiB: expected.memoryMiB, architecture: expected.architecture, migEnabled: false, migInstances: [] });
      expect(d.memoryUsedMiB).toBeGreaterThanOrEqual(0);
    });
  });

  test('8x H100 SXM: bus ids 18, 2a, 3a, 5d, 9a, ab, ba, db', () => {
    const devices = parseNvidiaSmiText(readFixture('nvidia/captures/multi-gpu/H100SXMx8_smi_-a.txt'));
    expect(devices.map((d) => d.pciBusId)).toEqual(['18', '2a', '3a', '5d', '9a', 'ab', 'ba', 'db'].map((b) => `0000:${b}:00.0`));
    expect(devices[0]!.uuid).toBe('GPU-b42dd28e-ffdd-8720-1df0-98bd8cdc05b1');
  });

  test('a report pasted with its shell prompt line still reads', () => {
    const text = readFixture('nvidia/captures/multi-gpu/A100SXM40GBx8_smi_-a.txt');
    expect(text.startsWith('$nvidia-smi -a')).toBe(true);
    expect(parseNvidiaSmiText(text)).toHaveLength(8);
  });
});

const EXPORTER_DIR = 'nvidia/captures/nvidia_gpu_exporter';
const EXPORTER_FILES = listFixtures(EXPORTER_DIR, '.txt');

/** GPU model, memory and MIG layout of each nvidia_gpu_exporter capture (single-GPU machines, UUIDs masked). */
const EXPORTER: Record<string, { model: string; memoryMiB: number; pciBusId: string; mig: string[]; computeCap: string }> = {
  'linux-x86_64__nvidia-geforce-rtx-2080-super__595.71.05.txt': { model: 'NVIDIA GeForce RTX 2080 SUPER', memoryMiB: 8192, pciBusId: '0000:0c:00.0', mig: [], computeCap: '7.5' },
  'linux-x86_64__nvidia-geforce-rtx-2080-super__610.57.04.txt': { model: 'NVIDIA GeForce RTX 2080 SUPER', memoryMiB: 8192, pciBusId: '0000:0c:00.0', mig: [], computeCap: '7.5' },
  'linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05.txt': { model: 'NVIDIA GeForce RTX 4080 SUPER', memoryMiB: 16376, pciBusId: '0000:01:00.0', mig: [], computeCap: '8.9' },
  'linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt': { model: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, pciBusId: '0000:00:09.0', mig: [], computeCap: '9.0' },
  'linux-x86_64__nvidia-h100-mig__590.48.01.txt': { model: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, pciBusId: '0000:00:09.0', mig: ['3g.40gb', '2g.20gb', '1g.10gb', '1g.10gb'], computeCap: '9.0' },
  'linux-x86_64__nvidia-h200-mig__590.48.01.txt': { model: 'NVIDIA H200', memoryMiB: 143771, pciBusId: '0000:83:00.0', mig: ['1c.3g.71gb', '2c.3g.71gb', '2g.35gb', '1g.18gb', '1g.18gb'], computeCap: '9.0' },
  'linux-x86_64__nvidia-h200__590.48.01.txt': { model: 'NVIDIA H200', memoryMiB: 143771, pciBusId: '0000:83:00.0', mig: [], computeCap: '9.0' },
  'linux-x86_64__nvidia-l40s__595.80.txt': { model: 'NVIDIA L40S', memoryMiB: 46068, pciBusId: '0000:01:00.0', mig: [], computeCap: '8.9' },
  'windows-x86_64__nvidia-geforce-rtx-2080-super__591.86.txt': { model: 'NVIDIA GeForce RTX 2080 SUPER', memoryMiB: 8192, pciBusId: '0000:0c:00.0', mig: [], computeCap: '7.5' },
  'windows-x86_64__nvidia-geforce-rtx-2080-super__610.62.txt': { model: 'NVIDIA GeForce RTX 2080 SUPER', memoryMiB: 8192, pciBusId: '0000:0c:00.0', mig: [], computeCap: '7.5' },
};

function sections(file: string, command: string) {
  return splitCaptureSections(readFixture(`${EXPORTER_DIR}/${file}`)).filter((s) => s.command === command || (command.endsWith('=') && s.command.startsWith(command)));
}

describe('nvidia_gpu_exporter captures: the -q, -L and --query-gpu sections', () => {
  test('the table covers every capture', () => {
    expect(Object.keys(EXPORTER).sort()).toEqual(EXPORTER_FILES);
  });

  test.each(Object.entries(EXPORTER))('%s: -q idle and under load', (file, expected) => {
    const queries = sections(file, 'nvidia-smi -q');
    expect(queries.map((s) => s.label)).toEqual(['idle :: query (-q)', 'load :: query (-q)']);
    for (const section of queries) {
      const [gpu, ...rest] = parseNvidiaSmiText(section.output);
      expect(rest).toHaveLength(0);
      expect(gpu).toMatchObject({ index: 0, model: expected.model, memoryMiB: expected.memoryMiB, pciBusId: expected.pciBusId, uuid: 'GPU-00000000-0000-0000-0000-000000000000' });
      expect(gpu!.migEnabled).toBe(expected.mig.length > 0);
      // -q alone does not print profile names: these are inferred from SM counts and memory.
      expect(gpu!.migInstances.map((m) => m.profile)).toEqual(expected.mig);
    }
  });

  test.each(Object.entries(EXPORTER))('%s: -L', (file, expected) => {
    const [list] = sections(file, 'nvidia-smi -L');
    const listed = parseNvidiaSmiList(list!.output);
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ index: 0, name: expected.model, uuid: 'GPU-00000000-0000-0000-0000-000000000000' });
    expect(listed[0]!.mig.map((m) => m.profile)).toEqual(expected.mig);
    expect(listed[0]!.mig.map((m) => m.deviceIndex)).toEqual(expected.mig.map((_p, i) => i));
    // The collector masks MIG UUIDs with distinct placeholders MIG-0000000N-….
    expect(new Set(listed[0]!.mig.map((m) => m.uuid)).size).toBe(expected.mig.length);
  });

  test.each(Object.entries(EXPORTER))('%s: --query-gpu CSV gives the compute capability', (file, expected) => {
    const csvSections = sections(file, 'nvidia-smi --query-gpu=');
    expect(csvSections).toHaveLength(2);
    for (const section of csvSections) {
      const rows = parseNvidiaQueryGpuCsv(section.output);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ index: '0', name: expected.model, compute_cap: expected.computeCap, 'memory.total': `${expected.memoryMiB} MiB` });
    }
  });

  test('H100 in MIG mode: GPU instances 2, 3, 9, 10 with 40448/20096/9984/9984 MiB', () => {
    const [gpu] = parseNvidiaSmiText(sections('linux-x86_64__nvidia-h100-mig__590.48.01.txt', 'nvidia-smi -q')[0]!.output);
    expect(gpu!.migInstances).toEqual([
      { uuid: '', profile: '3g.40gb', gpuInstanceId: 2, computeInstanceId: 0, memoryMiB: 40448, computeSlices: 3 },
      { uuid: '', profile: '2g.20gb', gpuInstanceId: 3, computeInstanceId: 0, memoryMiB: 20096, computeSlices: 2 },
      { uuid: '', profile: '1g.10gb', gpuInstanceId: 9, computeInstanceId: 0, memoryMiB: 9984, computeSlices: 1 },
      { uuid: '', profile: '1g.10gb', gpuInstanceId: 10, computeInstanceId: 0, memoryMiB: 9984, computeSlices: 1 },
    ]);
    // MIG mode: the -q report has no whole-GPU utilization.
    expect(gpu!.utilizationPct).toBeUndefined();
  });

  test('H200 in MIG mode: GPU instance 2 split into compute instances 0 (16 SMs) and 1 (32 SMs)', () => {
    const [gpu] = parseNvidiaSmiText(sections('linux-x86_64__nvidia-h200-mig__590.48.01.txt', 'nvidia-smi -q')[0]!.output);
    expect(gpu!.migInstances.slice(0, 2)).toEqual([
      { uuid: '', profile: '1c.3g.71gb', gpuInstanceId: 2, computeInstanceId: 0, memoryMiB: 71424, computeSlices: 3 },
      { uuid: '', profile: '2c.3g.71gb', gpuInstanceId: 2, computeInstanceId: 1, memoryMiB: 71424, computeSlices: 3 },
    ]);
  });

  test('-L merged into -q: MIG UUIDs land on the instances by MIG device index', () => {
    const file = 'linux-x86_64__nvidia-h200-mig__590.48.01.txt';
    const devices = parseNvidiaSmiText(sections(file, 'nvidia-smi -q')[0]!.output);
    const { unmatched } = mergeNvidiaList(devices, parseNvidiaSmiList(sections(file, 'nvidia-smi -L')[0]!.output));
    expect(unmatched).toBe(0);
    expect(devices[0]!.migInstances.map((m) => [m.profile, m.uuid, m.gpuInstanceId])).toEqual([
      ['1c.3g.71gb', 'MIG-00000000-0000-0000-0000-000000000000', 2],
      ['2c.3g.71gb', 'MIG-00000001-0000-0000-0000-000000000001', 2],
      ['2g.35gb', 'MIG-00000002-0000-0000-0000-000000000002', 3],
      ['1g.18gb', 'MIG-00000003-0000-0000-0000-000000000003', 9],
      ['1g.18gb', 'MIG-00000004-0000-0000-0000-000000000004', 10],
    ]);
  });

  test('compute capability merges into devices by UUID', () => {
    const file = 'linux-x86_64__nvidia-l40s__595.80.txt';
    const devices = parseNvidiaSmiText(sections(file, 'nvidia-smi -q')[0]!.output);
    mergeComputeCapability(devices, parseNvidiaQueryGpuCsv(sections(file, 'nvidia-smi --query-gpu=')[0]!.output));
    expect(devices[0]!.computeCapability).toBe('8.9');
  });
});

describe('query-gpu CSV extracts', () => {
  test.each(listFixtures('nvidia/query-gpu-csv', '.csv'))('%s', (file) => {
    const rows = parseNvidiaQueryGpuCsv(readFixture(`nvidia/query-gpu-csv/${file}`));
    expect(rows).toHaveLength(1);
    const model = Object.entries(EXPORTER).find(([capture]) => file.includes(capture.replace(/\.txt$/, '')))?.[1];
    expect(model, 'each extract comes from one of the captures').toBeDefined();
    expect(rows[0]).toMatchObject({ compute_cap: model!.computeCap, name: model!.model, uuid: 'GPU-00000000-0000-0000-0000-000000000000' });
  });

  test('headerless output with the fields discovery asks for', () => {
    expect(parseNvidiaQueryGpuCsv('0, GPU-aa, 9.0\n1, GPU-bb, 8.0\n', COMPUTE_CAP_FIELDS)).toEqual([
      { index: '0', uuid: 'GPU-aa', compute_cap: '9.0' },
      { index: '1', uuid: 'GPU-bb', compute_cap: '8.0' },
    ]);
  });

  test('a row with the wrong number of values is unreadable', () => {
    expectDiscoveryError(() => parseNvidiaQueryGpuCsv('0, GPU-aa\n', COMPUTE_CAP_FIELDS), /nvidia-smi --query-gpu: row 1 has 2 values for 3 fields/);
  });
});

describe('MIG listings (nvidia-smi -L and nvidia-smi mig)', () => {
  test('H100 PCIe -L: 3g.40gb + 3x 1g.10gb with real MIG UUIDs', () => {
    const [gpu, ...rest] = parseNvidiaSmiList(readFixture('nvidia/mig/scaleway_H100-PCIe_r525_nvidia-smi-L_mig.txt'));
    expect(rest).toHaveLength(0);
    expect(gpu).toEqual({
      index: 0,
      name: 'NVIDIA H100 PCIe',
      uuid: 'GPU-7cd6d4d6-9fa8-13be-3c42-09a1b2280a02',
      mig: [
        { profile: '3g.40gb', deviceIndex: 0, uuid: 'MIG-da06d78f-7534-56a0-a062-62fef012be91' },
        { profile: '1g.10gb', deviceIndex: 1, uuid: 'MIG-8aa1fc52-9818-58ec-bc64-8f0cae121bb4' },
        { profile: '1g.10gb', deviceIndex: 2, uuid: 'MIG-42fa9c93-1430-5ccc-b623-c02fb93b7f5a' },
        { profile: '1g.10gb', deviceIndex: 3, uuid: 'MIG-6d96b431-44ba-5360-80b0-9359561c927d' },
      ],
    });
  });

  test('H100 PCIe mig -lgi: three 1g.10gb (GI 7, 8, 9) and a 3g.40gb (GI 2 at 4:4)', () => {
    const rows = parseNvidiaMigGpuInstances(readFixture('nvidia/mig/scaleway_H100-PCIe_r525_mig-lgi_3g40gb+3x1g10gb.txt'));
    expect(rows.map((r) => [r.profile, r.profileId, r.gpuInstanceId, `${r.placementStart}:${r.placementSize}`])).toEqual([
      ['1g.10gb', 19, 7, '0:1'],
      ['1g.10gb', 19, 8, '1:1'],
      ['1g.10gb', 19, 9, '2:1'],
      ['3g.40gb', 9, 2, '4:4'],
    ]);
  });

  test('A100-40GB mig -lgi: seven 1g.5gb, GI 7 to 13', () => {
    const rows = parseNvidiaMigGpuInstances(readFixture('nvidia/mig/nvidia-cloud-native-docs_A100-40GB_mig-lgi_7x1g5gb.txt'));
    expect(rows).toHaveLength(7);
    expect(rows.every((r) => r.gpu === 0 && r.profile === '1g.5gb' && r.profileId === 19)).toBe(true);
    expect(rows.map((r) => r.gpuInstanceId)).toEqual([7, 8, 9, 10, 11, 12, 13]);
  });

  test('mig -lgi names replace inferred profile names by GPU instance id', () => {
    const devices = parseNvidiaSmiText(sections('linux-x86_64__nvidia-h200-mig__590.48.01.txt', 'nvidia-smi -q')[0]!.output);
    mergeNvidiaMigGpuInstances(devices, [
      { gpu: 0, profile: '3g.71gb+me', profileId: 9, gpuInstanceId: 2, placementStart: 0, placementSize: 4 },
      { gpu: 0, profile: '2g.35gb', profileId: 14, gpuInstanceId: 3, placementStart: 4, placementSize: 2 },
    ]);
    expect(devices[0]!.migInstances.map((m) => m.profile)).toEqual(['1c.3g.71gb+me', '2c.3g.71gb+me', '2g.35gb', '1g.18gb', '1g.18gb']);
  });

  test('SM counts of every H100 PCIe GPU-instance profile (mig -lgip) give its slice count', () => {
    const lgip = readFixture('nvidia/mig/scaleway_H100-PCIe_r525_mig-lgip.txt');
    const profiles = [...lgip.matchAll(/MIG (\d+g\.\d+gb)(?:\+me)?\s+\d+\s+\d+\/\d+\s+[\d.]+\s+\w+\s+(\d+)/g)].map((m) => ({ name: m[1]!, sm: Number(m[2]) }));
    expect(profiles.map((p) => p.name)).toEqual(['1g.10gb', '1g.10gb', '1g.20gb', '2g.20gb', '3g.40gb', '4g.40gb', '7g.80gb']);
    for (const p of profiles) expect(migSlicesFromSmCount('Hopper', p.sm), p.name).toBe(migProfileSlices(p.name));
    // The placement list agrees: profile 9 (3g.40gb) sits at {0,4} with 4 memory slices.
    expect(readFixture('nvidia/mig/scaleway_H100-PCIe_r525_mig-lgipp.txt')).toMatch(/Profile ID {2}9 Placements: \{0,4\}:4/);
  });

  test('A100 SM steps: 14/28/42/56 SMs are 1g..4g, 98 SMs 7g', () => {
    expect([14, 28, 42, 56, 98].map((sm) => migSlicesFromSmCount('Ampere', sm))).toEqual([1, 2, 3, 4, 7]);
  });

  test('profile memory is eighths of the marketed size, rounded as NVIDIA names them', () => {
    // A slice reports a little less than its share of the board: use 97% of 1/8, 2/8, 4/8, 8/8.
    const slices = (parentMiB: number) => [1, 2, 4, 8].map((eighths) => migProfileGigabytes(Math.floor((parentMiB * eighths * 0.97) / 8), parentMiB));
    expect(slices(40960)).toEqual([5, 10, 20, 40]); // A100-SXM4-40GB: 1g.5gb … 7g.40gb
    expect(slices(95830)).toEqual([12, 24, 47, 94]); // H100 NVL, sold as 94 GB: 1g.12gb … 7g.94gb
    expect(slices(143771)).toEqual([18, 35, 71, 141]); // H200, sold as 141 GB: 1g.18gb … 7g.141gb
  });

  test.each([
    ['empty', '', /nvidia-smi -L: no "GPU <n>: <name> \(UUID: \.\.\.\)" lines/],
    ['an error message', 'NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver.', /nvidia-smi -L: unexpected line/],
  ])('-L %s → DISCOVERY_FAILED', (_name, input, message) => {
    expectDiscoveryError(() => parseNvidiaSmiList(input), message);
  });

  test('mig -lgi without its table → DISCOVERY_FAILED', () => {
    expectDiscoveryError(() => parseNvidiaMigGpuInstances('No GPU instances found: Not Found\n'), /nvidia-smi mig -lgi: no "GPU instances:" table/);
  });
});

describe('parseNvidiaSmiText on bad output', () => {
  test.each([
    ['empty', '', /nvidia-smi -q: no "GPU <bus id>" sections in output/],
    ['an XML document', readFixture('nvidia/xml/a10g.xml'), /nvidia-smi -q: no "GPU <bus id>" sections/],
    ['a report cut before the UUID', readFixture('nvidia/captures/multi-gpu/L40S_smi_-a.txt').split('GPU UUID')[0]!, /nvidia-smi -q: GPU 0 \(0000:a1:00.0\) has no UUID/],
  ])('%s → DISCOVERY_FAILED naming the tool', (_name, input, message) => {
    expectDiscoveryError(() => parseNvidiaSmiText(input), message);
  });

  test('a report of zero attached GPUs is a host without GPUs', () => {
    expect(parseNvidiaSmiText('==============NVSMI LOG==============\n\nAttached GPUs : 0\n')).toEqual([]);
  });
});
