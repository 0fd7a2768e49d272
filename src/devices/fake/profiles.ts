/**
 * Simulated GPU hosts for tests and `fabric demo`: each profile names the real captured outputs
 * (fixtures/devices, see fixtures/SOURCES.md) that the fake tool prints for each command.
 * Where a profile joins outputs from two machines (an `-a` report and a `topo -m` matrix of the
 * same GPU model and size), the description says so.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FabricError } from '../../core/index.ts';
import type { ToolCommand } from '../probe/discover.ts';

/** A fixture file (relative to fixtures/devices) or one command's section of a multi-command capture. */
export interface CaptureRef {
  file: string;
  /** The command as recorded in the capture, e.g. `nvidia-smi -q` (the first, idle, section is used). */
  command?: string;
  /** For the long `--query-gpu=...` command line: match it by its start. */
  commandPrefix?: string;
}

/** Commands the fake nvidia-smi answers (see NVIDIA_ARGS in discover.ts). */
export type NvidiaCapture = 'xml' | 'query' | 'list' | 'migGpuInstances' | 'queryGpuCsv' | 'topo';
/** Commands the fake rocm-smi answers (see ROCM_ARGS in discover.ts). */
export type RocmCapture = 'json' | 'all' | 'concise' | 'topoType';

export interface SimulatedProfile {
  name: string;
  description: string;
  /** Absent: nvidia-smi is "not installed" on this host. */
  nvidiaSmi?: Partial<Record<NvidiaCapture, CaptureRef>>;
  rocmSmi?: Partial<Record<RocmCapture, CaptureRef>>;
  rocminfo?: CaptureRef;
}

const EXPORTER = 'nvidia/captures/nvidia_gpu_exporter';

/** The sections of one nvidia_gpu_exporter capture that discovery asks for. */
function exporterCapture(file: string): Partial<Record<NvidiaCapture, CaptureRef>> {
  const path = `${EXPORTER}/${file}`;
  return {
    query: { file: path, command: 'nvidia-smi -q' },
    list: { file: path, command: 'nvidia-smi -L' },
    topo: { file: path, command: 'nvidia-smi topo -m' },
    queryGpuCsv: { file: path, commandPrefix: 'nvidia-smi --query-gpu=' },
  };
}

export const PROFILES: readonly SimulatedProfile[] = [
  {
    name: 'h100-sxm-8',
    description: '8x H100 80GB HBM3 SXM, all pairs NVLink NV18, 2 NUMA nodes (nvidia-smi -a of an 8-GPU host; topo -m of an HGX H100 from NVIDIA/nccl#1264)',
    nvidiaSmi: {
      query: { file: 'nvidia/captures/multi-gpu/H100SXMx8_smi_-a.txt' },
      topo: { file: 'nvidia/topo/nccl-issue1264_HGX-H100-SXM_NV18_TRUNCATED-after-NIC2.txt' },
    },
  },
  {
    name: 'a100-sxm-8',
    description: '8x A100-SXM4-40GB, all pairs NVLink NV12, one NUMA node, driver 535 (nvidia-smi -a and topo -m from the same blog post)',
    nvidiaSmi: {
      query: { file: 'nvidia/captures/multi-gpu/A100SXM40GBx8_smi_-a.txt' },
      topo: { file: 'nvidia/topo/xuesongtap_8xA100_NV12_17nic_topo.txt' },
    },
  },
  {
    name: 'h100-mig',
    description: '1x H100 80GB HBM3 in MIG mode: 3g.40gb + 2g.20gb + 2x 1g.10gb (driver 590)',
    nvidiaSmi: exporterCapture('linux-x86_64__nvidia-h100-mig__590.48.01.txt'),
  },
  {
    name: 'h200-mig',
    description: '1x H200 141GB in MIG mode: one 3g.71gb split 1c+2c, 2g.35gb, 2x 1g.18gb (driver 590)',
    nvidiaSmi: exporterCapture('linux-x86_64__nvidia-h200-mig__590.48.01.txt'),
  },
  {
    name: 'a100-mig',
    description: '1x A100-SXM4-80GB in MIG mode: 4x 1g.20gb, XML report only (no MIG UUIDs, no topology: discovery warns)',
    nvidiaSmi: { xml: { file: 'nvidia/xml/a100-sxm4-v12.xml' } },
  },
  {
    name: 'l40s-1',
    description: '1x L40S 48GB, driver 595',
    nvidiaSmi: exporterCapture('linux-x86_64__nvidia-l40s__595.80.txt'),
  },
  {
    name: 'mi300x-4',
    description: '4x AMD Instinct MI300X 192GB, rocm-smi text + rocminfo; XGMI link matrix from an 8-GPU host (first four GPUs used)',
    rocmSmi: {
      all: { file: 'amd/mi300x/MI300X_x4_smi_-a.txt' },
      concise: { file: 'amd/mi300x/MI300X_x4_smi.txt' },
      topoType: { file: 'amd/litgpt_rocm_smi_xgmi_output_multi_gpu.txt' },
    },
    rocminfo: { file: 'amd/mi300x/MI300X_x4_rocminfo.txt' },
  },
  {
    name: 'mi100-4',
    description: '4x AMD Instinct MI100 32GB over PCIe, NUMA node 1 (rocm-smi JSON, ROCm 6.0.2)',
    rocmSmi: { json: { file: 'amd/rocm-smi-json/mi100_rocm602.json' } },
  },
  {
    name: 'cpu-only',
    description: 'no accelerators: nvidia-smi and rocm-smi are not installed',
  },
];

export const SIMULATED_PROFILES: readonly { name: string; description: string }[] = PROFILES.map(({ name, description }) => ({ name, description }));

export function findProfile(name: string): SimulatedProfile | undefined {
  return PROFILES.find((p) => p.name === name);
}

/** Absolute path of a fixture under fixtures/devices (shipped with the project). */
export function fixturePath(relative: string): string {
  return fileURLToPath(new URL(`../../../fixtures/devices/${relative}`, import.meta.url));
}

/** The fake tool script, run with the current Node executable. */
export const FAKE_SMI_SCRIPT = fileURLToPath(new URL('./fake-smi.ts', import.meta.url));

/** Where Node caches the fake tool's compiled modules between runs. */
export const FAKE_SMI_COMPILE_CACHE = join(tmpdir(), 'fabric-fake-smi-compile-cache');

export type SimulatedToolName = 'nvidia-smi' | 'rocm-smi' | 'rocminfo';

/**
 * ToolCommands that run the fake tool for a profile. Every tool is pointed at the fake, also
 * those the profile lacks (they answer "command not found"), so a simulated host never falls
 * back to a real nvidia-smi on the machine running the simulation. The seed makes the UUIDs
 * of one simulated daemon differ from another's.
 */
export function simulatedTools(profile: string, seed: string): { nvidiaSmi: ToolCommand; rocmSmi: ToolCommand; rocminfo: ToolCommand } {
  if (!findProfile(profile)) {
    throw new FabricError('BAD_INPUT', `unknown simulated GPU profile ${JSON.stringify(profile)}; known: ${PROFILES.map((p) => p.name).join(', ')}`);
  }
  const tool = (name: SimulatedToolName): ToolCommand => ({
    file: process.execPath,
    prefixArgs: [FAKE_SMI_SCRIPT, '--profile', profile, '--seed', seed, '--tool', name],
    // Node's compile cache keeps the TypeScript it strips: the fake starts in about a third of the time.
    env: { NODE_COMPILE_CACHE: FAKE_SMI_COMPILE_CACHE },
  });
  return { nvidiaSmi: tool('nvidia-smi'), rocmSmi: tool('rocm-smi'), rocminfo: tool('rocminfo') };
}
