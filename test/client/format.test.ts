import { describe, expect, test } from 'vitest';
import { formatAge, gpuSummary, linkSummary, table } from '../../src/client/format.ts';
import type { Device, Link } from '../../src/devices/model.ts';

const gpu = (i: number, model = 'NVIDIA H100 80GB HBM3', mig = 0): Device => ({
  index: i, uuid: `GPU-${i}`, vendor: 'nvidia', model, memoryMiB: 81559, migEnabled: mig > 0,
  migInstances: Array.from({ length: mig }, (_, k) => ({ uuid: `MIG-${k}`, profile: '1g.10gb', gpuInstanceId: k, memoryMiB: 9856 })),
});
const allPairs = (n: number, kind: Link['kind'], width: number): Link[] =>
  Array.from({ length: n }, (_, a) => Array.from({ length: n - a - 1 }, (_, k) => ({ a, b: a + k + 1, kind, width }))).flat();

describe('CLI formatting', () => {
  test('GPU summary names count, model and the interconnect', () => {
    expect(gpuSummary(Array.from({ length: 8 }, (_, i) => gpu(i)), allPairs(8, 'nvlink', 18))).toBe('8×H100 80GB HBM3 NV18');
    expect(gpuSummary([gpu(0, 'NVIDIA H100 80GB HBM3', 4)], [])).toBe('1×H100 80GB HBM3 MIG:4');
    expect(gpuSummary([gpu(0, 'AMD Instinct MI300X'), gpu(1, 'AMD Instinct MI300X')], allPairs(2, 'xgmi', 1))).toBe('2×Instinct MI300X 80GB XGMI');
    expect(gpuSummary([], [])).toBe('-');
  });

  test('link summary prefers NVLink, says when it is partial, else the best PCIe path', () => {
    expect(linkSummary([{ a: 0, b: 1, kind: 'nvlink', width: 12 }, { a: 0, b: 2, kind: 'sys', width: 0 }])).toBe('NV12 partial');
    expect(linkSummary([{ a: 0, b: 1, kind: 'sys', width: 0 }, { a: 0, b: 2, kind: 'phb', width: 0 }])).toBe('PCIe PHB');
    expect(linkSummary([])).toBe('');
  });

  test('ages and tables', () => {
    expect(formatAge(250)).toBe('250ms');
    expect(formatAge(2500)).toBe('2.5s');
    expect(formatAge(180_000)).toBe('3m');
    expect(table(['A', 'BB'], [['xxx', 'y']])).toBe('A    BB\nxxx  y');
  });
});
