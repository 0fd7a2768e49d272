import { describe, expect, test } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { parseNvidiaSmiXml } from '../../src/devices/probe/nvidia-xml.ts';
import { allMatches, listFixtures, readFixture } from './fixtures.ts';

/** What each real `nvidia-smi -q -x` sample holds (one GPU each; the A100 one was trimmed to one GPU by telegraf). */
const XML_SAMPLES: Record<string, { model: string; memoryMiB: number; pciBusId: string; architecture?: string; memoryUsedMiB: number; utilizationPct?: number }> = {
  'a100-sxm4-v12.xml': { model: 'NVIDIA A100-SXM4-80GB', memoryMiB: 81920, pciBusId: '0000:01:00.0', architecture: 'Ampere', memoryUsedMiB: 50 },
  'a10g.xml': { model: 'NVIDIA A10G', memoryMiB: 23028, pciBusId: '0000:00:1e.0', architecture: 'Ampere', memoryUsedMiB: 22, utilizationPct: 0 },
  'gtx-1070-ti.xml': { model: 'GeForce GTX 1070 Ti', memoryMiB: 4096, pciBusId: '0000:01:00.0', memoryUsedMiB: 42, utilizationPct: 0 },
  'gtx-1660-ti.xml': { model: 'Graphics Device', memoryMiB: 5912, pciBusId: '0000:43:00.0', memoryUsedMiB: 0, utilizationPct: 0 },
  'quadro-p2000-v12.xml': { model: 'Quadro P2000', memoryMiB: 5120, pciBusId: '0000:17:00.0', architecture: 'Pascal', memoryUsedMiB: 1, utilizationPct: 0 },
  'quadro-p400.xml': { model: 'Quadro P400', memoryMiB: 1998, pciBusId: '0000:43:00.0', memoryUsedMiB: 0, utilizationPct: 0 },
  'rtx-3060-v12.xml': { model: 'NVIDIA GeForce RTX 3060', memoryMiB: 12288, pciBusId: '0000:2d:00.0', architecture: 'Ampere', memoryUsedMiB: 116, utilizationPct: 0 },
  'rtx-3080-v12.xml': { model: 'NVIDIA GeForce RTX 3080', memoryMiB: 10240, pciBusId: '0000:04:00.0', architecture: 'Ampere', memoryUsedMiB: 1128, utilizationPct: 0 },
  'rtx-3080-v13.xml': { model: 'NVIDIA GeForce RTX 3080', memoryMiB: 10240, pciBusId: '0000:0c:00.0', architecture: 'Ampere', memoryUsedMiB: 9184, utilizationPct: 65 },
  'rtx-3090-v12.xml': { model: 'NVIDIA GeForce RTX 3090', memoryMiB: 24576, pciBusId: '0000:00:10.0', architecture: 'Ampere', memoryUsedMiB: 1, utilizationPct: 0 },
  'rtx-4000-sff-ada-v13.xml': { model: 'NVIDIA RTX 4000 SFF Ada Generation', memoryMiB: 20475, pciBusId: '0000:06:00.0', architecture: 'Ada Lovelace', memoryUsedMiB: 3534, utilizationPct: 0 },
  'tesla-t4.xml': { model: 'Tesla T4', memoryMiB: 15360, pciBusId: '0000:00:1e.0', architecture: 'Turing', memoryUsedMiB: 1032, utilizationPct: 0 },
};

describe('parseNvidiaSmiXml on every real sample', () => {
  test('the table covers every XML fixture', () => {
    expect(Object.keys(XML_SAMPLES).sort()).toEqual(listFixtures('nvidia/xml', '.xml'));
  });

  test.each(Object.entries(XML_SAMPLES))('%s', (file, expected) => {
    const xml = readFixture(`nvidia/xml/${file}`);
    const [gpu, ...rest] = parseNvidiaSmiXml(xml);
    expect(rest).toHaveLength(0);
    expect(gpu).toMatchObject({ index: 0, vendor: 'nvidia', ...expected });
    expect(gpu!.architecture).toBe(expected.architecture);
    expect(gpu!.utilizationPct).toBe(expected.utilizationPct);
    // The UUID is the one the file prints, checked by a plain regex rather than the XML parser.
    expect(gpu!.uuid).toBe(allMatches(xml, /<uuid>(GPU-[0-9a-f-]+)<\/uuid>/)[0]);
  });

  test('non-MIG samples have MIG off and no instances', () => {
    for (const file of Object.keys(XML_SAMPLES).filter((f) => !f.startsWith('a100'))) {
      const [gpu] = parseNvidiaSmiXml(readFixture(`nvidia/xml/${file}`));
      expect(gpu!.migEnabled, file).toBe(false);
      expect(gpu!.migInstances, file).toEqual([]);
    }
  });

  test('A100-SXM4-80GB in MIG mode: four 1g.20gb instances (14 SMs, 19968 MiB each), no MIG UUIDs in the XML', () => {
    const [gpu] = parseNvidiaSmiXml(readFixture('nvidia/xml/a100-sxm4-v12.xml'));
    expect(gpu!.migEnabled).toBe(true);
    expect(gpu!.migInstances).toEqual(
      [3, 4, 5, 6].map((gpuInstanceId) => ({ uuid: '', profile: '1g.20gb', gpuInstanceId, computeInstanceId: 0, memoryMiB: 19968, computeSlices: 1 })),
    );
  });
});

describe('parseNvidiaSmiXml on bad output', () => {
  const cases: [string, string, RegExp][] = [
    ['empty output', '', /nvidia-smi -q -x: no <nvidia_smi_log> document/],
    ['text instead of XML', 'NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver.', /nvidia-smi -q -x: no <nvidia_smi_log>/],
    ['a log without GPUs that claims some', '<?xml version="1.0" ?><nvidia_smi_log><attached_gpus>2</attached_gpus></nvidia_smi_log>', /nvidia-smi -q -x: no <gpu> elements in output/],
    ['a document cut off half way', readFixture('nvidia/xml/a10g.xml').slice(0, 2000), /nvidia-smi -q -x: malformed XML/],
    ['a GPU without UUID', '<nvidia_smi_log><gpu id="00000000:01:00.0"><product_name>X</product_name><fb_memory_usage><total>1 MiB</total></fb_memory_usage></gpu></nvidia_smi_log>', /nvidia-smi -q -x: GPU 0 \(0000:01:00.0\) has no UUID/],
    ['a GPU without memory', '<nvidia_smi_log><gpu id="00000000:01:00.0"><uuid>GPU-1</uuid></gpu></nvidia_smi_log>', /has no framebuffer memory total/],
  ];
  test.each(cases)('%s → DISCOVERY_FAILED naming the tool', (_name, input, message) => {
    let caught: unknown;
    try {
      parseNvidiaSmiXml(input);
    } catch (err) {
      caught = err;
    }
    expect(isFabricError(caught, 'DISCOVERY_FAILED')).toBe(true);
    expect((caught as Error).message).toMatch(message);
  });

  test('a driver that reports zero attached GPUs is a host without GPUs, not an error', () => {
    expect(parseNvidiaSmiXml('<?xml version="1.0" ?><nvidia_smi_log><attached_gpus>0</attached_gpus></nvidia_smi_log>')).toEqual([]);
  });
});
