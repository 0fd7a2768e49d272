import { describe, expect, test } from 'vitest';
import { FabricError, isFabricError } from '../../src/core/index.ts';
import { parseMemoryMiB, parseParamCount } from '../../src/placement/quantity.ts';
import { compileSelector, compareVersions, modelMatches, selectorProblem, type DeviceAttributes } from '../../src/placement/selector.ts';
import { bytesPerGpu, estimateMemory, gpusToFit } from '../../src/placement/sizing.ts';
import { parseJobSpec, requestFromSpec } from '../../src/placement/spec.ts';

function badInput(input: unknown): FabricError {
  try {
    parseJobSpec(input);
  } catch (err) {
    expect(isFabricError(err, 'BAD_INPUT')).toBe(true);
    return err as FabricError;
  }
  throw new Error('spec was accepted');
}

describe('job spec', () => {
  test('names every bad field, by path', () => {
    const err = badInput({ gpus: -1, models: [], cpu: 'lots', affinity: { required: [{ key: 'zone', operator: 'In' }] }, bogus: 1 });
    const paths = (err.details!['issues'] as { path: string }[]).map((i) => i.path).sort();
    expect(paths).toEqual(['$', 'affinity.required.0.values', 'cpu', 'gpus', 'models']);
    expect(err.message).toMatch(/^invalid job spec: /);
    expect(err.message).toContain('gpus:');
    expect(err.message).toContain('bogus');
  });

  test('cross-field rules are reported on the field they concern', () => {
    const issues = (spec: unknown): string[] => (badInput(spec).details!['issues'] as { path: string; message: string }[]).map((i) => `${i.path}: ${i.message}`);
    expect(issues({ gpus: 0.3333 })).toEqual(['gpus: a fraction of a GPU is counted in thousandths (0.25, 0.125, 0.001)']);
    expect(issues({ gpus: 2.5 })).toEqual(['gpus: more than one GPU must be a whole number']);
    expect(issues({ gpus: 'auto' })).toEqual(['gpus: "auto" sizes the job from `model` hints: give them']);
    expect(issues({ gpus: 1, mig: '3g.40gb' })).toEqual(['mig: a MIG slice is one device: leave `gpus` out']);
    expect(issues({ gpus: 0.5, nodes: 2 })).toEqual(['gpus: a fraction of a GPU cannot be a gang']);
    expect(issues({ gpus: 8, nodes: 2, gpusPerNode: 2 })).toEqual(["gpus: is the gang's total: nodes × gpusPerNode = 4, not 8"]);
    expect(issues({ gpus: 3, nodes: 2 })).toEqual(['gpus: 3 GPUs do not split evenly over 2 nodes']);
    expect(issues({ gpusPerNode: 2 })).toEqual(['gpusPerNode: needs `nodes`']);
    expect(issues({ gpus: 0.5, interconnect: 'nvlink' })).toEqual(['interconnect: NVLink placement is for whole GPUs']);
    expect(issues({ selector: 'model ~= ' })[0]).toMatch(/^selector: expected a value/);
    expect(issues({ memory: '12 parsecs' })[0]).toMatch(/^memory: unknown unit "parsecs"/);
    expect(issues({ model: { params: '7B', kvHeads: 8 } })).toEqual(['model.kvHeads: needs `heads` too']);
  });

  test('resolves counts, fractions, MIG slices, gangs and host demand', () => {
    expect(requestFromSpec({ gpus: 0.25 }, 'j').member).toMatchObject({ gpus: 1, milli: 250, mig: null });
    expect(requestFromSpec({ mig: '3g.40gb' }, 'j').member).toMatchObject({ gpus: 1, milli: 1000, mig: '3g.40gb' });
    const gang = requestFromSpec({ nodes: 4, gpusPerNode: 8, cpu: 32, memory: '256GiB', gpuMemory: '80GB' }, 'j');
    expect(gang.nodes).toBe(4);
    expect(gang.member).toMatchObject({ gpus: 8, cpuMilli: 32_000, memoryMiB: 256 * 1024, minMemoryMiB: 76_294 });
    expect(requestFromSpec({ gpus: 16, nodes: 2 }, 'j').member.gpus).toBe(8);
    const cpuOnly = requestFromSpec({ cpu: 2 }, 'j');
    expect(cpuOnly.member.gpus).toBe(0);
    expect(cpuOnly.nodes).toBe(1);
    const auto = requestFromSpec({ model: { params: '7B' } }, 'j');
    expect(auto.nodes).toBeNull();
    expect(auto.sizing?.hints).toMatchObject({ params: 7e9, dtype: 'bf16', mode: 'inference' });
    const defaults = requestFromSpec({ gpus: 1 }, 'j');
    expect(defaults).toMatchObject({ tenant: 'default', priority: 0, preemptible: false, spreadOver: null, waitForCapacity: false });
    expect(defaults.peer).toMatchObject({ spotTolerant: false, maxPricePerGpuHour: null });
  });

  test('memory sizes and parameter counts', () => {
    expect(parseMemoryMiB('40GiB')).toBe(40 * 1024);
    expect(parseMemoryMiB('80GB')).toBe(Math.ceil(80e9 / 2 ** 20));
    expect(parseMemoryMiB('512 MiB')).toBe(512);
    expect(parseMemoryMiB(1536)).toBe(1536);
    expect(parseMemoryMiB('1.5Ti')).toBe(1.5 * 1024 * 1024);
    expect(parseMemoryMiB('forty')).toMatch(/not a size/);
    expect(parseParamCount('7B')).toBe(7e9);
    expect(parseParamCount('1.5t')).toBe(1.5e12);
    expect(parseParamCount('350M')).toBe(350e6);
    expect(parseParamCount('0')).toMatch(/positive/);
  });
});

describe('device selectors', () => {
  const h100: DeviceAttributes = {
    vendor: 'nvidia',
    model: 'NVIDIA H100 80GB HBM3',
    memoryMiB: 81_559,
    computeCapability: '9.0',
    architecture: 'Hopper',
    interconnect: 'nvlink',
    migCapable: true,
    migEnabled: false,
    numaNode: 1,
    zone: 'eu-1',
    region: 'eu',
    cloud: undefined,
    spot: false,
    labels: { team: 'ml', tier: 'gold' },
  };
  const mi300: DeviceAttributes = { ...h100, vendor: 'amd', model: 'AMD Instinct MI300X', memoryMiB: 196_592, computeCapability: 'gfx942', interconnect: 'xgmi', migCapable: false, labels: {} };
  const t4: DeviceAttributes = { ...h100, model: 'Tesla T4', memoryMiB: 15_360, computeCapability: '7.5', interconnect: 'pcie', migCapable: false, labels: { team: 'web' } };

  const matches = (source: string): string[] =>
    [
      ['h100', h100],
      ['mi300', mi300],
      ['t4', t4],
    ]
      .filter(([, d]) => compileSelector(source)(d as DeviceAttributes))
      .map(([name]) => name as string);

  test('attributes, operators and boolean structure', () => {
    expect(matches('model ~= "H100" && memory >= 80GB')).toEqual(['h100']);
    expect(matches('computeCapability >= "8.0"')).toEqual(['h100']);
    expect(matches('computeCapability < 8.0')).toEqual(['t4']);
    expect(matches('interconnect == "nvlink" || vendor == "amd"')).toEqual(['h100', 'mi300']);
    expect(matches('!migCapable')).toEqual(['mi300', 't4']);
    expect(matches('label.team in ["ml", "research"]')).toEqual(['h100']);
    expect(matches('label.team != "ml"')).toEqual(['t4']);
    expect(matches('(memory > 100GiB || model == "T4") && numaNode == 1')).toEqual(['mi300', 't4']);
    expect(matches("zone == 'EU-1' && !spot")).toEqual(['h100', 'mi300', 't4']);
  });

  test('a missing attribute makes a test false', () => {
    expect(matches('label.owner == "x"')).toEqual([]);
    expect(matches('cloud == "aws"')).toEqual([]);
  });

  test('errors name what and where', () => {
    expect(selectorProblem('memory >= lots')).toMatch(/expected a value .* \(at character 11\)/);
    expect(selectorProblem('speed > 3')).toMatch(/^unknown attribute "speed"/);
    expect(selectorProblem('model < "H100"')).toMatch(/cannot be ordered/);
    expect(selectorProblem('memory')).toMatch(/is not true\/false/);
    expect(selectorProblem('(vendor == "amd"')).toMatch(/expected "\)"/);
    expect(selectorProblem('vendor == "amd" vendor')).toMatch(/unexpected text/);
    expect(selectorProblem('"unterminated')).toMatch(/unterminated string/);
    expect(selectorProblem('!'.repeat(40) + 'spot')).toMatch(/nested deeper than 32/);
    expect(selectorProblem('spot || '.repeat(70) + 'spot')).toMatch(/more than 64 tests/);
    expect(selectorProblem('spot'.padEnd(2000, ' '))).toMatch(/longer than 1024/);
    expect(selectorProblem('vendor == "nvidia"')).toBeNull();
  });

  test('model names match by whole words', () => {
    expect(modelMatches('NVIDIA H100 80GB HBM3', 'H100')).toBe(true);
    expect(modelMatches('NVIDIA A100-SXM4-80GB', 'A100-SXM4-80GB')).toBe(true);
    expect(modelMatches('NVIDIA A100-SXM4-80GB', 'a100 sxm4')).toBe(true);
    expect(modelMatches('NVIDIA GeForce RTX 4090', 'T4')).toBe(false);
    expect(modelMatches('Tesla T4', 'T4')).toBe(true);
    expect(modelMatches('V100M16', 'V100M32')).toBe(false);
    expect(compareVersions('8.9', '10.0')).toBeLessThan(0);
    expect(compareVersions('9.0', '9')).toBe(0);
    expect(compareVersions('gfx942', '9.0')).toBeNull();
  });
});

describe('model sizing', () => {
  const GB = 1e9;
  const mib = (gb: number): number => Math.floor((gb * GB) / 2 ** 20);

  test('7B in bf16 serves from one 24 GB GPU', () => {
    const estimate = estimateMemory({ params: 7e9, dtype: 'bf16', mode: 'inference' });
    expect(estimate.weights).toBe(14e9);
    expect(gpusToFit(estimate, mib(24))).toBe(1);
    expect(gpusToFit(estimate, mib(16))).toBe(2);
  });

  test('70B in bf16 serves from two 80 GB GPUs, not one', () => {
    const estimate = estimateMemory({ params: 70e9, dtype: 'bf16', mode: 'inference' });
    expect(bytesPerGpu(estimate, 1)).toBeGreaterThan(80 * GB);
    expect(gpusToFit(estimate, mib(80))).toBe(2);
    expect(gpusToFit(estimate, 81_559)).toBe(2);
    expect(gpusToFit(estimate, mib(40))).toBe(4);
  });

  test('full fine-tuning with Adam in mixed precision holds 16 bytes per parameter before activations', () => {
    const estimate = estimateMemory({ params: 7e9, dtype: 'bf16', mode: 'full' });
    expect(estimate.weights + estimate.gradients + estimate.optimizer).toBe(16 * 7e9);
    expect(estimate.activations).toBeGreaterThan(0);
    expect(gpusToFit(estimate, mib(80))).toBe(2);
    // fp32 training keeps the same 16 bytes (4 + 4 + 8).
    const fp32 = estimateMemory({ params: 1e9, dtype: 'fp32', mode: 'full' });
    expect(fp32.weights + fp32.gradients + fp32.optimizer).toBe(16e9);
  });

  test('LoRA keeps the base weights frozen; int4 base weights (QLoRA) take a quarter', () => {
    const lora = estimateMemory({ params: 7e9, dtype: 'bf16', mode: 'lora' });
    expect(lora.weights).toBeGreaterThan(14e9);
    expect(lora.weights).toBeLessThan(14.2e9);
    expect(lora.optimizer).toBeLessThan(1e9);
    expect(gpusToFit(lora, mib(24))).toBe(1);
    const qlora = estimateMemory({ params: 70e9, dtype: 'int4', mode: 'lora' });
    expect(gpusToFit(qlora, mib(48))).toBe(1);
  });

  test('the KV cache grows with context and batch; grouped-query attention shrinks it', () => {
    const base = estimateMemory({ params: 8e9, dtype: 'bf16', mode: 'inference', contextLength: 8192 });
    const bigger = estimateMemory({ params: 8e9, dtype: 'bf16', mode: 'inference', contextLength: 8192, batch: 8 });
    expect(bigger.kvCache).toBe(8 * base.kvCache);
    const gqa = estimateMemory({ params: 8e9, dtype: 'bf16', mode: 'inference', contextLength: 8192, layers: 32, hiddenSize: 4096, heads: 32, kvHeads: 8 });
    // Llama-3-8B at 8k context: 2 · 32 layers · 1024 · 8192 tokens · 2 bytes = 1 GiB.
    expect(gqa.kvCache).toBe(2 * 32 * 1024 * 8192 * 2);
  });
});
