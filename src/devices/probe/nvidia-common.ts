/**
 * What the XML and text forms of `nvidia-smi -q` have in common: one raw record per GPU, turned
 * into Devices here, including the MIG profile names that neither form prints.
 */
import { DeviceSchema, type Device, type MigInstance } from '../model.ts';
import { unreadable } from './parse-util.ts';

/** One MIG device (a compute instance inside a GPU instance) as `nvidia-smi -q` lists it. */
export interface RawMigDevice {
  /** MIG device index on its GPU: the `Device N` of `nvidia-smi -L`. */
  index: number;
  gpuInstanceId: number;
  computeInstanceId?: number;
  /** SMs of this compute instance. */
  multiprocessorCount?: number;
  /** Memory of its GPU instance (shared by all compute instances in it). */
  memoryMiB: number;
  uuid?: string;
}

export interface RawNvidiaGpu {
  uuid?: string;
  productName?: string;
  architecture?: string;
  pciBusId?: string;
  memoryTotalMiB?: number;
  memoryUsedMiB?: number;
  utilizationPct?: number;
  /** `Enabled`, `Disabled`, or undefined where the GPU has no MIG support. */
  migMode?: string;
  migDevices: RawMigDevice[];
}

/**
 * SM counts of the 1g, 2g, 3g and 4g GPU-instance profiles (anything larger is 7g), per
 * architecture. They are not multiples of one slice size: an H100 SXM 3g has 60 SMs, its 4g 64;
 * an H100 PCIe has 14/30/46/62 (`nvidia-smi mig -lgip`). The upper bound per step covers both.
 */
const MIG_SM_STEPS: Readonly<Record<string, readonly [number, number, number, number]>> = {
  Ampere: [14, 28, 42, 56],
  Hopper: [16, 32, 60, 64],
};
const MIG_SLICES_BY_STEP = [1, 2, 3, 4] as const;

/** Compute slices (the N of `Ng` / `Nc`) from an SM count. Unknown architectures use Hopper's steps. */
export function migSlicesFromSmCount(architecture: string | undefined, smCount: number): number {
  const steps = MIG_SM_STEPS[architecture ?? ''] ?? MIG_SM_STEPS.Hopper!;
  for (let i = 0; i < steps.length; i++) if (smCount <= steps[i]!) return MIG_SLICES_BY_STEP[i]!;
  return 7;
}

/**
 * The `Ngb` of a profile name. NVIDIA names slices by eighths of the board's marketed memory:
 * an H200 (143771 MiB, sold as 141 GB) has 1g.18gb, 2g.35gb and 3g.71gb; an H100 80GB has 10/20/40.
 */
export function migProfileGigabytes(instanceMiB: number, parentMiB: number): number {
  const marketedGb = Math.ceil(parentMiB / 1024);
  const eighths = Math.min(8, Math.max(1, Math.round((instanceMiB / parentMiB) * 8)));
  return Math.round((marketedGb * eighths) / 8);
}

/** Parses `3g.40gb`, `1c.3g.71gb`, `1g.10gb+me` → slices of the GPU instance (3, 3, 1). */
export function migProfileSlices(profile: string): number | undefined {
  const m = /^(?:\d+c\.)?(\d+)g\.\d+gb/.exec(profile);
  return m ? Number(m[1]) : undefined;
}

/**
 * Builds MigInstances and infers each profile name. A GPU instance split into several compute
 * instances shows one MIG device per compute instance; the GPU instance's size is then the sum of
 * their SMs, and each gets a `Nc.` prefix, as `nvidia-smi -L` prints it (`1c.3g.71gb`).
 */
export function inferMigInstances(raw: readonly RawMigDevice[], parentMiB: number, architecture: string | undefined): MigInstance[] {
  const smByGpuInstance = new Map<number, number | undefined>();
  for (const d of raw) {
    const sum = smByGpuInstance.has(d.gpuInstanceId) ? smByGpuInstance.get(d.gpuInstanceId) : 0;
    smByGpuInstance.set(d.gpuInstanceId, sum === undefined || d.multiprocessorCount === undefined ? undefined : sum + d.multiprocessorCount);
  }
  return [...raw]
    .sort((x, y) => x.index - y.index)
    .map((d) => {
      const gb = parentMiB > 0 ? migProfileGigabytes(d.memoryMiB, parentMiB) : Math.round(d.memoryMiB / 1024);
      const giSm = smByGpuInstance.get(d.gpuInstanceId);
      let profile = `${gb}gb`; // SM counts missing: only the memory part is known
      let computeSlices: number | undefined;
      if (giSm !== undefined && d.multiprocessorCount !== undefined) {
        computeSlices = migSlicesFromSmCount(architecture, giSm);
        const ciSlices = migSlicesFromSmCount(architecture, d.multiprocessorCount);
        profile = ciSlices < computeSlices ? `${ciSlices}c.${computeSlices}g.${gb}gb` : `${computeSlices}g.${gb}gb`;
      }
      const instance: MigInstance = {
        uuid: d.uuid ?? '',
        profile,
        gpuInstanceId: d.gpuInstanceId,
        memoryMiB: d.memoryMiB,
      };
      if (d.computeInstanceId !== undefined) instance.computeInstanceId = d.computeInstanceId;
      if (computeSlices !== undefined) instance.computeSlices = computeSlices;
      return instance;
    });
}

/** Raw GPU records (in nvidia-smi's order, which is its index order) → validated Devices. */
export function toNvidiaDevices(raw: readonly RawNvidiaGpu[], tool: string): Device[] {
  return raw.map((gpu, index) => {
    const where = `GPU ${index}${gpu.pciBusId ? ` (${gpu.pciBusId})` : ''}`;
    if (!gpu.uuid) throw unreadable(tool, `${where} has no UUID`);
    if (gpu.memoryTotalMiB === undefined) throw unreadable(tool, `${where} has no framebuffer memory total`);
    const migEnabled = /^enabled$/i.test(gpu.migMode?.trim() ?? '');
    const device: Device = {
      index,
      uuid: gpu.uuid,
      vendor: 'nvidia',
      model: gpu.productName ?? 'NVIDIA GPU',
      memoryMiB: gpu.memoryTotalMiB,
      migEnabled,
      migInstances: migEnabled ? inferMigInstances(gpu.migDevices, gpu.memoryTotalMiB, gpu.architecture) : [],
    };
    if (gpu.pciBusId) device.pciBusId = gpu.pciBusId;
    if (gpu.architecture) device.architecture = gpu.architecture;
    if (gpu.memoryUsedMiB !== undefined) device.memoryUsedMiB = gpu.memoryUsedMiB;
    if (gpu.utilizationPct !== undefined) device.utilizationPct = gpu.utilizationPct;
    const checked = DeviceSchema.safeParse(device);
    if (!checked.success) throw unreadable(tool, `${where}: ${checked.error.issues[0]?.message ?? 'invalid device'}`);
    return checked.data;
  });
}
