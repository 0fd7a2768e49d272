import { describe, expect, test } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { findCaptureSection, splitCaptureSections, stripLeadingPrompt } from '../../src/devices/fake/captures.ts';
import { answerToolCall, projectQueryGpuCsv, rewriteIdentifiers } from '../../src/devices/fake/fake-tool.ts';
import { FAKE_SMI_COMPILE_CACHE, FAKE_SMI_SCRIPT, PROFILES, SIMULATED_PROFILES, simulatedTools } from '../../src/devices/fake/profiles.ts';
import { NVIDIA_ARGS, ROCM_ARGS } from '../../src/devices/probe/discover.ts';
import { readFixture } from './fixtures.ts';

const H100_MIG_CAPTURE = 'nvidia/captures/nvidia_gpu_exporter/linux-x86_64__nvidia-h100-mig__590.48.01.txt';
const UUID = /\b(?:GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/g;

describe('multi-command captures', () => {
  test('an exporter capture splits into its commands; the preamble is not a section', () => {
    const sections = splitCaptureSections(readFixture(H100_MIG_CAPTURE));
    const commands = sections.map((s) => s.command);
    expect(commands.slice(0, 3)).toEqual(['nvidia-smi --version', 'nvidia-smi -h', 'nvidia-smi --help-query-gpu']);
    expect(commands.filter((c) => c === 'nvidia-smi -q')).toHaveLength(2);
    expect(commands).toContain('nvidia-smi -L');
    expect(commands).toContain('nvidia-smi topo -m');
    expect(sections.every((s) => s.label !== '' && !s.output.includes('################'))).toBe(true);
  });

  test('a section holds exactly its command output, ending in one newline', () => {
    const list = findCaptureSection(readFixture(H100_MIG_CAPTURE), { command: 'nvidia-smi -L' });
    expect(list).toEqual({
      label: 'capabilities :: list (-L)',
      command: 'nvidia-smi -L',
      exitCode: 0,
      output: [
        'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)',
        '  MIG 3g.40gb     Device  0: (UUID: MIG-00000000-0000-0000-0000-000000000000)',
        '  MIG 2g.20gb     Device  1: (UUID: MIG-00000001-0000-0000-0000-000000000001)',
        '  MIG 1g.10gb     Device  2: (UUID: MIG-00000002-0000-0000-0000-000000000002)',
        '  MIG 1g.10gb     Device  3: (UUID: MIG-00000003-0000-0000-0000-000000000003)',
        '',
      ].join('\n'),
    });
  });

  test('the first of two sections with the same command is the idle one', () => {
    expect(findCaptureSection(readFixture(H100_MIG_CAPTURE), { command: 'nvidia-smi -q' })!.label).toBe('idle :: query (-q)');
  });

  test('a recorded failure keeps its message and exit code', () => {
    const topo = findCaptureSection(readFixture('nvidia/captures/nvidia_gpu_exporter/windows-x86_64__nvidia-geforce-rtx-2080-super__591.86.txt'), { command: 'nvidia-smi topo -m' });
    expect(topo).toMatchObject({ exitCode: 255, output: "ERROR: Option -m is missing its value. Please run 'nvidia-smi -h' for help.\n" });
  });

  test('a long command matches by its start', () => {
    const csv = findCaptureSection(readFixture(H100_MIG_CAPTURE), { commandPrefix: 'nvidia-smi --query-gpu=' });
    expect(csv!.label).toBe('idle :: query-gpu (csv, what the exporter parses)');
    expect(csv!.output.split('\n')[0]).toMatch(/^timestamp, driver_version, /);
  });

  test('shell prompt lines pasted before the output are dropped', () => {
    expect(stripLeadingPrompt('$nvidia-smi -a \n\n==NVSMI LOG==\n')).toBe('\n==NVSMI LOG==\n');
    expect(stripLeadingPrompt('yxc@host:~$ nvidia-smi topo -m\n  GPU0\n')).toBe('  GPU0\n');
    expect(stripLeadingPrompt('\tGPU0\tGPU1\n')).toBe('\tGPU0\tGPU1\n');
  });
});

describe('identifier rewriting', () => {
  const list = findCaptureSection(readFixture(H100_MIG_CAPTURE), { command: 'nvidia-smi -L' })!.output;

  test('GPU and MIG UUIDs keep their shape, differ per seed and repeat per seed', () => {
    const a = rewriteIdentifiers(list, 'seed-a', 'h100-mig');
    const b = rewriteIdentifiers(list, 'seed-b', 'h100-mig');
    expect(rewriteIdentifiers(list, 'seed-a', 'h100-mig')).toBe(a);
    const idsA = a.match(UUID)!;
    const idsB = b.match(UUID)!;
    expect(idsA).toHaveLength(5);
    expect(new Set([...idsA, ...idsB]).size).toBe(10);
    expect(idsA.map((id) => id.slice(0, 4))).toEqual(['GPU-', 'MIG-', 'MIG-', 'MIG-', 'MIG-']);
    // Nothing but the ids changes.
    expect(a.replace(UUID, 'ID')).toBe(list.replace(UUID, 'ID'));
  });

  test('an AMD unique id stays the same number in rocm-smi and rocminfo', () => {
    const smi = rewriteIdentifiers('GPU[1]\t\t: Unique ID: 0x4edfb117a17a07d\n', 's', 'p');
    const info = rewriteIdentifiers('  Uuid:                    GPU-04edfb117a17a07d\n', 's', 'p');
    const smiId = BigInt(`0x${/0x([0-9a-f]+)/.exec(smi)![1]}`);
    const infoId = BigInt(`0x${/GPU-([0-9a-f]{16})/.exec(info)![1]}`);
    expect(smiId).toBe(infoId);
    expect(smiId).not.toBe(0x4edfb117a17a07dn);
  });

  test('AMD serial numbers keep their length; N/A and 0 stay', () => {
    const out = rewriteIdentifiers('"Serial Number": "692024000810",\n"Serial Number": "N/A",\nGPU[0] : Serial Number: 0\n', 's', 'p');
    expect(out).toMatch(/^"Serial Number": "\d{12}",\n"Serial Number": "N\/A",\nGPU\[0\] : Serial Number: 0\n$/);
    expect(out).not.toContain('692024000810');
  });
});

describe('the fake tool answers', () => {
  test('every command a profile declares is served from a real capture', () => {
    const nvidiaArgs = { xml: NVIDIA_ARGS.xml, query: NVIDIA_ARGS.query, list: NVIDIA_ARGS.list, migGpuInstances: NVIDIA_ARGS.migGpuInstances, queryGpuCsv: NVIDIA_ARGS.computeCap, topo: NVIDIA_ARGS.topo };
    const rocmArgs = { json: ROCM_ARGS.json, all: ROCM_ARGS.all, concise: ROCM_ARGS.concise, topoType: ROCM_ARGS.topoType };
    let served = 0;
    for (const profile of PROFILES) {
      for (const key of Object.keys(profile.nvidiaSmi ?? {}) as (keyof typeof nvidiaArgs)[]) {
        const answer = answerToolCall(profile.name, 's', 'nvidia-smi', [...nvidiaArgs[key]]);
        expect(answer.exitCode, `${profile.name} ${key}: ${answer.stderr}`).toBe(0);
        expect(answer.stdout.length).toBeGreaterThan(10);
        served++;
      }
      for (const key of Object.keys(profile.rocmSmi ?? {}) as (keyof typeof rocmArgs)[]) {
        const answer = answerToolCall(profile.name, 's', 'rocm-smi', [...rocmArgs[key]]);
        expect(answer.exitCode, `${profile.name} ${key}: ${answer.stderr}`).toBe(0);
        served++;
      }
      if (profile.rocminfo) expect(answerToolCall(profile.name, 's', 'rocminfo', []).exitCode).toBe(0);
    }
    expect(served).toBeGreaterThanOrEqual(20);
  });

  test('a multi-command capture serves only the section asked for', () => {
    const answer = answerToolCall('h100-mig', 's', 'nvidia-smi', ['-q']);
    expect(answer.stdout).toContain('==============NVSMI LOG==============');
    expect(answer.stdout).not.toContain('################');
    expect(answer.stdout).not.toContain('MIG 3g.40gb'); // that is the -L section
  });

  test('a pasted prompt line is not printed', () => {
    expect(answerToolCall('a100-sxm-8', 's', 'nvidia-smi', ['-a']).stdout.startsWith('$')).toBe(false);
    expect(answerToolCall('a100-sxm-8', 's', 'nvidia-smi', ['topo', '-m']).stdout.trimStart().startsWith('GPU0')).toBe(true);
  });

  test('a command the profile has no capture for fails like a tool would', () => {
    expect(answerToolCall('h100-sxm-8', 's', 'nvidia-smi', ['-q', '-x'])).toEqual({ stdout: '', stderr: 'simulated profile h100-sxm-8 has no capture of `nvidia-smi -q -x`\n', exitCode: 1 });
  });

  test('arguments nvidia-smi does not take are rejected', () => {
    expect(answerToolCall('h100-sxm-8', 's', 'nvidia-smi', ['--bogus'])).toMatchObject({ exitCode: 2, stderr: expect.stringMatching(/Invalid combination of input arguments/) });
  });

  test('tools a profile lacks are not installed (exit 127)', () => {
    expect(answerToolCall('cpu-only', 's', 'nvidia-smi', ['-q', '-x'])).toEqual({ stdout: '', stderr: 'bash: nvidia-smi: command not found\n', exitCode: 127 });
    expect(answerToolCall('h100-sxm-8', 's', 'rocm-smi', ['-a']).exitCode).toBe(127);
    expect(answerToolCall('mi100-4', 's', 'rocminfo', []).exitCode).toBe(127);
  });

  test('rocminfo of the MI300X profile carries the same rewritten ids as its rocm-smi -a', () => {
    const smiIds = [...answerToolCall('mi300x-4', 'x', 'rocm-smi', ['-a']).stdout.matchAll(/Unique ID: 0x([0-9a-f]+)/g)].map((m) => BigInt(`0x${m[1]}`));
    const infoIds = [...answerToolCall('mi300x-4', 'x', 'rocminfo', []).stdout.matchAll(/Uuid:\s+GPU-([0-9a-f]{16})/g)].map((m) => BigInt(`0x${m[1]}`));
    expect(smiIds).toHaveLength(4);
    expect(infoIds).toEqual(smiIds);
  });

  test('--query-gpu projects the recorded CSV onto the requested fields', () => {
    const recorded = 'index, uuid, memory.total [MiB], compute_cap\n0, GPU-a, 81559 MiB, 9.0\n';
    expect(projectQueryGpuCsv(recorded, ['--query-gpu=compute_cap,index', '--format=csv'])).toEqual({ stdout: 'compute_cap, index\n9.0, 0\n', stderr: '', exitCode: 0 });
    expect(projectQueryGpuCsv(recorded, ['--query-gpu=memory.total', '--format=csv,noheader,nounits']).stdout).toBe('81559\n');
    expect(projectQueryGpuCsv(recorded, ['--query-gpu=memory.total', '--format=csv,noheader']).stdout).toBe('81559 MiB\n');
    expect(projectQueryGpuCsv(recorded, ['--query-gpu=bogus', '--format=csv'])).toEqual({ stdout: '', stderr: 'Field "bogus" is not a valid field to query.\n', exitCode: 2 });
  });
});

describe('profiles', () => {
  test('the advertised profiles', () => {
    expect(SIMULATED_PROFILES.map((p) => p.name)).toEqual(['h100-sxm-8', 'a100-sxm-8', 'h100-mig', 'h200-mig', 'a100-mig', 'l40s-1', 'mi300x-4', 'mi100-4', 'cpu-only']);
    expect(SIMULATED_PROFILES.every((p) => p.description.length > 10)).toBe(true);
  });

  test('simulatedTools runs the fake script with this Node for every tool', () => {
    const tools = simulatedTools('h100-sxm-8', 'abc');
    expect(tools.nvidiaSmi).toEqual({
      file: process.execPath,
      prefixArgs: [FAKE_SMI_SCRIPT, '--profile', 'h100-sxm-8', '--seed', 'abc', '--tool', 'nvidia-smi'],
      env: { NODE_COMPILE_CACHE: FAKE_SMI_COMPILE_CACHE },
    });
    expect(tools.rocmSmi.prefixArgs.at(-1)).toBe('rocm-smi');
    expect(tools.rocminfo.prefixArgs.at(-1)).toBe('rocminfo');
  });

  test('an unknown profile is BAD_INPUT listing the known ones', () => {
    let caught: unknown;
    try {
      simulatedTools('tpu-v5', 'abc');
    } catch (err) {
      caught = err;
    }
    expect(isFabricError(caught, 'BAD_INPUT')).toBe(true);
    expect((caught as Error).message).toMatch(/unknown simulated GPU profile "tpu-v5"; known: h100-sxm-8, /);
  });
});

describe('fake-smi.ts as an executable', () => {
  test('prints the capture and exits with its code; bad usage exits 2 with a usage line', async () => {
    const { runTool } = await import('../../src/node/run-tool.ts');
    const fake = { file: process.execPath, prefixArgs: [FAKE_SMI_SCRIPT] };
    const list = await runTool(fake, ['--profile', 'h100-mig', '--seed', 's', '--tool', 'nvidia-smi', '-L']);
    expect(list).toMatchObject({ code: 0, stderr: '', notFound: false });
    expect(list.stdout).toBe(answerToolCall('h100-mig', 's', 'nvidia-smi', ['-L']).stdout);
    const missing = await runTool(fake, ['--profile', 'cpu-only', '--seed', 's', '--tool', 'rocm-smi', '--json']);
    expect(missing).toMatchObject({ code: 127, stdout: '', stderr: 'bash: rocm-smi: command not found\n' });
    const usage = await runTool(fake, ['--profile', 'h100-mig', '--tool', 'nvidia-smi', '-L']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^usage: fake-smi\.ts --profile NAME --seed SEED --tool/);
  });
});
