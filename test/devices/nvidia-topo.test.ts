import { describe, expect, test } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { splitCaptureSections } from '../../src/devices/fake/captures.ts';
import type { Link } from '../../src/devices/model.ts';
import { parseNvidiaLinkCell, parseNvidiaTopo } from '../../src/devices/probe/nvidia-topo.ts';
import { listFixtures, readFixture } from './fixtures.ts';

/** Every unordered pair of n GPUs with the same link. */
function allPairs(n: number, kind: Link['kind'], width: number): Link[] {
  const links: Link[] = [];
  for (let a = 0; a < n; a++) for (let b = a + 1; b < n; b++) links.push({ a, b, kind, width });
  return links;
}

/** What each real `nvidia-smi topo -m` matrix says: GPU pairs and NUMA node per GPU. */
const TOPO: Record<string, { gpus: number; links: Link[]; numa: [number, number][] }> = {
  'litgpt_nvidia_smi_nvlink_output_dual_gpu_no_numa.txt': { gpus: 2, links: [{ a: 0, b: 1, kind: 'nvlink', width: 1 }], numa: [[0, 0], [1, 0]] },
  'litgpt_nvlink_all_gpu_connected_but_other_connected_output.txt': { gpus: 8, links: allPairs(8, 'nvlink', 12), numa: [[0, 0], [1, 0], [2, 0], [3, 0], [4, 1], [5, 1], [6, 1], [7, 1]] },
  'litgpt_nvlink_not_connected_output.txt': { gpus: 4, links: allPairs(4, 'phb', 0), numa: [[0, 0], [1, 0], [2, 0], [3, 0]] },
  'lmdeploy-pr1944_2GPU_NV12_8mlx5.txt': { gpus: 2, links: [{ a: 0, b: 1, kind: 'nvlink', width: 12 }], numa: [[0, 1], [1, 1]] },
  'nccl-issue1264_HGX-H100-SXM_NV18_TRUNCATED-after-NIC2.txt': { gpus: 8, links: allPairs(8, 'nvlink', 18), numa: [[0, 0], [1, 0], [2, 0], [3, 0], [4, 1], [5, 1], [6, 1], [7, 1]] },
  // NUMA Affinity N/A: the host has one node or does not say.
  'xuesongtap_2x1080ti_pcie_PHB_topo.txt': { gpus: 2, links: [{ a: 0, b: 1, kind: 'phb', width: 0 }], numa: [] },
  'xuesongtap_4xA10_pcie_SYS_topo.txt': { gpus: 4, links: allPairs(4, 'sys', 0), numa: [[0, 0], [1, 0], [2, 0], [3, 0]] },
  'xuesongtap_8xA100_NV12_17nic_topo.txt': { gpus: 8, links: allPairs(8, 'nvlink', 12), numa: [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0], [7, 0]] },
};

describe('parseNvidiaTopo on every real matrix', () => {
  test('the table covers every topo fixture', () => {
    expect(Object.keys(TOPO).sort()).toEqual(listFixtures('nvidia/topo', '.txt'));
  });

  test.each(Object.entries(TOPO))('%s', (file, expected) => {
    const topo = parseNvidiaTopo(readFixture(`nvidia/topo/${file}`));
    expect(topo.gpuCount).toBe(expected.gpus);
    expect(topo.links).toEqual(expected.links);
    expect([...topo.numaByGpu.entries()]).toEqual(expected.numa);
  });

  test('HGX H100: 28 pairs, all NV18, though the output is cut off after the NIC2 row', () => {
    const text = readFixture('nvidia/topo/nccl-issue1264_HGX-H100-SXM_NV18_TRUNCATED-after-NIC2.txt');
    expect(text).not.toMatch(/Legend/);
    const topo = parseNvidiaTopo(text);
    expect(topo.links).toHaveLength(28);
    expect(topo.links.every((l) => l.kind === 'nvlink' && l.width === 18 && l.a < l.b)).toBe(true);
  });

  test.each(listFixtures('nvidia/captures/nvidia_gpu_exporter', '.txt'))('exporter capture %s: single GPU, no links', (file) => {
    const [section] = splitCaptureSections(readFixture(`nvidia/captures/nvidia_gpu_exporter/${file}`)).filter((s) => s.command === 'nvidia-smi topo -m');
    if (section!.exitCode !== 0) {
      // nvidia-smi 591 on Windows rejected `topo -m`: the capture keeps the error and exit code.
      expect(section!.exitCode).toBe(255);
      expect(() => parseNvidiaTopo(section!.output)).toThrow(/nvidia-smi topo -m: no matrix header/);
      return;
    }
    // The header is underlined with ANSI escapes when captured from a terminal.
    expect(section!.output).toContain('\x1b[4m');
    const topo = parseNvidiaTopo(section!.output);
    expect(topo.gpuCount).toBe(1);
    expect(topo.links).toEqual([]);
    // Windows prints no CPU or NUMA affinity.
    expect([...topo.numaByGpu.entries()]).toEqual(file.startsWith('windows') ? [] : [[0, 0]]);
  });
});

describe('link cells', () => {
  test.each([
    ['NV18', { kind: 'nvlink', width: 18 }],
    ['NV4', { kind: 'nvlink', width: 4 }],
    ['PIX', { kind: 'pix', width: 0 }],
    ['PXB', { kind: 'pxb', width: 0 }],
    ['PHB', { kind: 'phb', width: 0 }],
    ['NODE', { kind: 'node', width: 0 }],
    ['SYS', { kind: 'sys', width: 0 }],
    ['SOC', { kind: 'sys', width: 0 }],
  ])('%s', (cell, expected) => {
    expect(parseNvidiaLinkCell(cell)).toEqual(expected);
  });
});

describe('parseNvidiaTopo on bad output', () => {
  const full = readFixture('nvidia/topo/xuesongtap_8xA100_NV12_17nic_topo.txt');
  const cases: [string, string, RegExp][] = [
    ['empty', '', /nvidia-smi topo -m: no matrix header with a GPU0 column/],
    ['an error message', 'Failed to initialize NVML: Driver/library version mismatch', /no matrix header/],
    ['cut off inside the GPU rows', full.split('\n').slice(0, 6).join('\n'), /nvidia-smi topo -m: matrix truncated: header lists 8 GPUs, 4 GPU rows found/],
    ['cut off inside a GPU row', full.split('\n').slice(0, 3).join('\n') + '\nGPU1    NV12     X      NV12', /row GPU1 is cut short/],
    ['an unknown connection', '\tGPU0\tGPU1\nGPU0\t X \tXYZ\nGPU1\tXYZ\t X \n', /unknown connection "XYZ" between GPU0 and GPU1/],
    ['a diagonal that is not X', '\tGPU0\tGPU1\nGPU0\tNV1\tNV1\nGPU1\tNV1\t X \n', /GPU0 diagonal cell is "NV1"/],
  ];
  test.each(cases)('%s → DISCOVERY_FAILED', (_name, input, message) => {
    let caught: unknown;
    try {
      parseNvidiaTopo(input);
    } catch (err) {
      caught = err;
    }
    expect(isFabricError(caught, 'DISCOVERY_FAILED')).toBe(true);
    expect((caught as Error).message).toMatch(message);
  });
});
