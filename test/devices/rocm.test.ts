import { describe, expect, test } from 'vitest';
import {
  mergeRocmConcise,
  mergeRocminfo,
  normalizeAmdUniqueId,
  parseRocmSmiConcise,
  parseRocmSmiJson,
  parseRocmSmiText,
  parseRocminfo,
  parseRocmTopoType,
  toAmdDevices,
  toAmdLinks,
} from '../../src/devices/probe/rocm.ts';
import { allMatches, expectDiscoveryError, listFixtures, readFixture } from './fixtures.ts';

/** What each telegraf rocm-smi JSON sample holds. VRAM 34342961152 B = 32752 MiB, 12868124672 B = 12272 MiB. */
const JSON_SAMPLES: Record<string, { uuids: string[]; model: string; memoryMiB: number; pci: string[]; numa: number; gfx?: string; linkRecords: number }> = {
  // ROCm 5.7: no unique ids and serial 0: the PCI bus id names the GPU.
  'mi100_rocm571.json': {
    uuids: ['1e', '22', '3f', '43', '46', '49'].map((b) => `AMD-PCI-0000:${b}:00.0`),
    model: 'Arcturus GL-XL [Instinct MI100]',
    memoryMiB: 32752,
    pci: ['1e', '22', '3f', '43', '46', '49'].map((b) => `0000:${b}:00.0`),
    numa: 0,
    linkRecords: 15,
  },
  'mi100_rocm602.json': {
    uuids: ['GPU-79ccd55167a2124a', 'GPU-04edfb117a17a07d', 'GPU-d4a9ec48d03d261d', 'GPU-1b9dd972253c3736'],
    model: 'Arcturus GL-XL [Instinct MI100]',
    memoryMiB: 32752,
    pci: ['83', 'a3', 'c3', 'e3'].map((b) => `0000:${b}:00.0`),
    numa: 1,
    linkRecords: 6,
  },
  // ROCm 4.3 printed the PCI vendor id as the card series: the model falls back to the device id.
  'rx6700xt_rocm430.json': { uuids: ['AMD-PCI-0000:07:00.0'], model: 'AMD GPU 0x73df', memoryMiB: 12272, pci: ['0000:07:00.0'], numa: 0, linkRecords: 0 },
  'rx6700xt_rocm571.json': { uuids: ['AMD-PCI-0000:07:00.0'], model: 'Navi 22 [Radeon RX 6700/6700 XT / 6800M]', memoryMiB: 12272, pci: ['0000:07:00.0'], numa: 0, linkRecords: 0 },
  'rx6700xt_rocm602.json': { uuids: ['AMD-PCI-0000:07:00.0'], model: 'Navi 22 [Radeon RX 6700/6700 XT / 6800M]', memoryMiB: 12272, pci: ['0000:07:00.0'], numa: 0, linkRecords: 0 },
  'rx6700xt_rocm612.json': { uuids: ['AMD-PCI-0000:07:00.0'], model: 'Navi 22 [Radeon RX 6700/6700 XT / 6800M]', memoryMiB: 12272, pci: ['0000:07:00.0'], numa: 0, gfx: 'gfx1031', linkRecords: 0 },
  'vega-10-XT.json': { uuids: ['GPU-02150e7d042a1124'], model: 'AMD GPU 0x6861', memoryMiB: 16368, pci: ['0000:04:00.0'], numa: 0, linkRecords: 0 },
  // Trimmed to card0 by telegraf; the topology of all 8 GPUs stayed in `system`.
  'vega-20-WKS-GL-XE.json': { uuids: ['GPU-02f048617326b1ea'], model: 'Radeon Instinct MI50 32GB', memoryMiB: 32752, pci: ['0000:63:00.0'], numa: 0, linkRecords: 28 },
};

describe('parseRocmSmiJson on every real sample', () => {
  test('the table covers every JSON fixture', () => {
    expect(Object.keys(JSON_SAMPLES).sort()).toEqual(listFixtures('amd/rocm-smi-json', '.json'));
  });

  test.each(Object.entries(JSON_SAMPLES))('%s', (file, expected) => {
    const { gpus, links } = parseRocmSmiJson(readFixture(`amd/rocm-smi-json/${file}`));
    const devices = toAmdDevices(gpus, 'rocm-smi');
    expect(devices.map((d) => d.uuid)).toEqual(expected.uuids);
    expect(devices.map((d) => d.pciBusId)).toEqual(expected.pci);
    expect(devices.map((d) => d.index)).toEqual(expected.uuids.map((_u, i) => i));
    for (const d of devices) {
      expect(d).toMatchObject({ vendor: 'amd', model: expected.model, memoryMiB: expected.memoryMiB, numaNode: expected.numa, migEnabled: false, migInstances: [], utilizationPct: 0 });
      expect(d.computeCapability).toBe(expected.gfx);
    }
    expect(links).toHaveLength(expected.linkRecords);
  });

  test('MI100 x4 (ROCm 6.0.2): six PCIe pairs inside NUMA node 1', () => {
    const { gpus, links } = parseRocmSmiJson(readFixture('amd/rocm-smi-json/mi100_rocm602.json'));
    expect(toAmdLinks(links, toAmdDevices(gpus, 'rocm-smi'))).toEqual([
      { a: 0, b: 1, kind: 'node', width: 0 },
      { a: 0, b: 2, kind: 'node', width: 0 },
      { a: 0, b: 3, kind: 'node', width: 0 },
      { a: 1, b: 2, kind: 'node', width: 0 },
      { a: 1, b: 3, kind: 'node', width: 0 },
      { a: 2, b: 3, kind: 'node', width: 0 },
    ]);
  });

  test('links naming GPUs missing from the card list are dropped (Vega 20 sample: 1 card, 28 pairs)', () => {
    const { gpus, links } = parseRocmSmiJson(readFixture('amd/rocm-smi-json/vega-20-WKS-GL-XE.json'));
    expect(links.every((l) => l.type === 'PCIE')).toBe(true);
    expect(toAmdLinks(links, toAmdDevices(gpus, 'rocm-smi'))).toEqual([]);
  });

  test('a PCIe path between GPUs on different NUMA nodes is sys', () => {
    const { gpus } = parseRocmSmiJson(readFixture('amd/rocm-smi-json/mi100_rocm602.json'));
    const devices = toAmdDevices(gpus, 'rocm-smi');
    devices[3]!.numaNode = 0;
    expect(toAmdLinks([{ a: 3, b: 0, type: 'PCIE' }, { a: 1, b: 2, type: 'XGMI' }], devices)).toEqual([
      { a: 0, b: 3, kind: 'sys', width: 0 },
      { a: 1, b: 2, kind: 'xgmi', width: 1 },
    ]);
  });
});

describe('4x MI300X: rocm-smi -a, the concise table and rocminfo', () => {
  const allText = readFixture('amd/mi300x/MI300X_x4_smi_-a.txt');

  test('rocm-smi -a: four GPUs with unique ids, serials and bus ids, but no VRAM total', () => {
    const gpus = parseRocmSmiText(allText);
    expect(gpus.map((g) => g.index)).toEqual([0, 1, 2, 3]);
    expect(gpus.map((g) => g.uniqueId)).toEqual(allMatches(allText, /Unique ID: 0x([0-9a-f]+)/));
    expect(gpus.map((g) => g.serial)).toEqual(['692347006052', '692347005894', '692347006047', '692347005902']);
    expect(gpus.map((g) => g.pciBusId)).toEqual(['26', '46', '65', '85'].map((b) => `0000:${b}:00.0`));
    expect(gpus.every((g) => g.model === 'AMD Instinct MI300X OAM' && g.deviceId === '0x74a1' && g.utilizationPct === 0)).toBe(true);
    expect(gpus.every((g) => g.memoryMiB === undefined)).toBe(true);
  });

  test('concise rocm-smi tables (4 GPUs and 1 GPU): name on the second line, VRAM% and GPU% last', () => {
    expect(parseRocmSmiConcise(readFixture('amd/mi300x/MI300X_x4_smi.txt'))).toEqual([0, 1, 2, 3].map((index) => ({ index, model: 'AMD Instinct MI300X', vramPct: 0, gpuPct: 0 })));
    expect(parseRocmSmiConcise(readFixture('amd/mi300x/MI300X_smi.txt'))).toEqual([{ index: 0, model: 'AMD Instinct MI300X', vramPct: 0, gpuPct: 0 }]);
  });

  test('rocminfo: four gfx942 agents with 192 GiB VRAM (201310208 KB) and 304 CUs; CPU agents skipped', () => {
    const agents = parseRocminfo(readFixture('amd/mi300x/MI300X_x4_rocminfo.txt'));
    expect(agents).toEqual([
      { gfxTarget: 'gfx942', uniqueId: '8d1457e2c20f59d2', marketingName: 'AMD Instinct MI300X', pciBus: 0x26, memoryMiB: 196592, computeUnits: 304 },
      { gfxTarget: 'gfx942', uniqueId: 'b4fa34630e85d42a', marketingName: 'AMD Instinct MI300X', pciBus: 0x46, memoryMiB: 196592, computeUnits: 304 },
      { gfxTarget: 'gfx942', uniqueId: 'e8986800e182538a', marketingName: 'AMD Instinct MI300X', pciBus: 0x65, memoryMiB: 196592, computeUnits: 304 },
      { gfxTarget: 'gfx942', uniqueId: 'eff71edc82169115', marketingName: 'AMD Instinct MI300X', pciBus: 0x85, memoryMiB: 196592, computeUnits: 304 },
    ]);
  });

  test('merged: devices with VRAM, gfx target and memory in use', () => {
    const gpus = parseRocmSmiText(allText);
    mergeRocminfo(gpus, parseRocminfo(readFixture('amd/mi300x/MI300X_x4_rocminfo.txt')));
    mergeRocmConcise(gpus, parseRocmSmiConcise(readFixture('amd/mi300x/MI300X_x4_smi.txt')));
    const devices = toAmdDevices(gpus, 'rocm-smi');
    expect(devices.map((d) => d.uuid)).toEqual(['GPU-8d1457e2c20f59d2', 'GPU-b4fa34630e85d42a', 'GPU-e8986800e182538a', 'GPU-eff71edc82169115']);
    for (const d of devices) expect(d).toMatchObject({ vendor: 'amd', model: 'AMD Instinct MI300X OAM', memoryMiB: 196592, computeCapability: 'gfx942', memoryUsedMiB: 0 });
  });

  test('rocminfo agents match by PCI bus when the unique id is masked', () => {
    const gpus = parseRocmSmiText(allText).map(({ uniqueId: _masked, ...rest }) => rest);
    mergeRocminfo(gpus, parseRocminfo(readFixture('amd/mi300x/MI300X_x4_rocminfo.txt')));
    expect(gpus.map((g) => g.memoryMiB)).toEqual([196592, 196592, 196592, 196592]);
  });
});

describe('rocm-smi --showtopotype', () => {
  test('8-GPU XGMI matrix: 28 pairs, all XGMI', () => {
    const records = parseRocmTopoType(readFixture('amd/litgpt_rocm_smi_xgmi_output_multi_gpu.txt'));
    expect(records).toHaveLength(28);
    expect(records.every((r) => r.type === 'XGMI' && r.a < r.b)).toBe(true);
  });

  test('as links between 4 known GPUs: the 6 pairs among them', () => {
    const gpus = parseRocmSmiText(readFixture('amd/mi300x/MI300X_x4_smi_-a.txt'));
    const links = toAmdLinks(parseRocmTopoType(readFixture('amd/litgpt_rocm_smi_xgmi_output_multi_gpu.txt')), toAmdDevices(gpus, 'rocm-smi'));
    expect(links.map((l) => `${l.a}-${l.b}:${l.kind}:${l.width}`)).toEqual(['0-1', '0-2', '0-3', '1-2', '1-3', '2-3'].map((p) => `${p}:xgmi:1`));
  });
});

describe('AMD ids', () => {
  test.each([
    ['0x8d1457e2c20f59d2', '8d1457e2c20f59d2'],
    ['0x4edfb117a17a07d', '04edfb117a17a07d'],
    ['GPU-04edfb117a17a07d', '04edfb117a17a07d'],
    ['N/A', undefined],
    ['GPU-XX', undefined],
    ['0x0', undefined],
  ])('%s → %s', (input, expected) => {
    expect(normalizeAmdUniqueId(input)).toBe(expected);
  });
});

describe('AMD parsers on bad output', () => {
  test.each([
    ['JSON: empty', () => parseRocmSmiJson(''), /rocm-smi --json: not JSON/],
    ['JSON: truncated', () => parseRocmSmiJson(readFixture('amd/rocm-smi-json/mi100_rocm602.json').slice(0, 500)), /rocm-smi --json: not JSON/],
    ['JSON: no cards', () => parseRocmSmiJson('{"system": {"Driver version": "6.3.6"}}'), /rocm-smi --json: no "card<N>" entries/],
    ['JSON: an array', () => parseRocmSmiJson('[1,2]'), /rocm-smi --json: output is not a JSON object/],
    ['text: an error', () => parseRocmSmiText('ERROR:root:Driver not initialized (amdgpu not found in modules)'), /rocm-smi -a: no "GPU\[N\] : \.\.\." lines/],
    ['concise: no table', () => parseRocmSmiConcise('WARNING: No AMD GPUs specified'), /rocm-smi: no concise table header/],
    ['rocminfo: CPU agents only', () => parseRocminfo(readFixture('amd/mi300x/MI300X_x4_rocminfo.txt').split('Agent 3')[0]!), /rocminfo: no GPU agents/],
    ['topotype: no matrix', () => parseRocmTopoType('====== Link Type between two GPUs ======\n'), /rocm-smi --showtopotype: no link type matrix/],
    ['topotype: cut short', () => parseRocmTopoType(readFixture('amd/litgpt_rocm_smi_xgmi_output_multi_gpu.txt').split('GPU3   XGMI')[0]!), /matrix truncated: 8 columns, 3 rows/],
    ['device: no identity at all', () => toAmdDevices([{ index: 0, memoryMiB: 1 }], 'rocm-smi'), /rocm-smi: GPU\[0\] has no unique id, serial number or PCI bus id/],
  ])('%s → DISCOVERY_FAILED naming the tool', (_name, fn, message) => {
    expectDiscoveryError(fn, message);
  });
});
