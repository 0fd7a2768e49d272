/**
 * From an allocation's device grants to what a job process sees: the visible-device variables of
 * each vendor's runtime, naming the granted GPUs and MIG slices by UUID wherever the runtime
 * takes UUIDs.
 *
 * NVIDIA: CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES (the container toolkit's) take GPU and
 * MIG UUIDs, so both list the grants' UUIDs.
 * AMD: ROCR_VISIBLE_DEVICES takes UUIDs (`GPU-<unique id>`) and filters at the lowest runtime
 * level; HIP_VISIBLE_DEVICES (and CUDA_VISIBLE_DEVICES, which HIP honours as an alias) take only
 * indexes, counted within what ROCR exposes, so they are `0..n-1`. A GPU whose UUID ROCR cannot
 * take (older ROCm without a unique id: `AMD-SN-…`, `AMD-PCI-…`) is named by its host index.
 *
 * Every visible-device variable is always set, to the allocation's devices or to "none", so
 * nothing the daemon inherited leaks into a job: a CPU-only job sees no GPU at all.
 */
import { FabricError } from '../core/index.ts';
import type { Device, Vendor } from '../devices/model.ts';

/**
 * One device grant of an allocation, as the replicated state records it (the shape of the
 * placement FSM's DeviceGrant, restated here because the runner may not import placement).
 */
export interface GrantLike {
  /** GPU UUID, or MIG UUID for a slice. */
  uuid: string;
  /** Thousandths of the device held (1000: all of it). */
  milli: number;
  /** For a MIG slice, its parent GPU's UUID. */
  parentUuid: string | null;
}

/** A granted device resolved against this host's inventory. */
export interface AssignedDevice {
  /** The UUID the job's runtime is given: a GPU UUID, or a MIG UUID for a slice. */
  uuid: string;
  vendor: Vendor;
  /** The host index of the GPU (of the parent GPU for a MIG slice). */
  index: number;
  /** Thousandths of the device held (1000: all of it). */
  milli: number;
  /** Set for a MIG slice. */
  mig: { parentUuid: string; profile: string; gpuInstanceId: number } | null;
}

/** Value that hides every device from a runtime. CUDA and HIP read an empty list as "no device". */
const NONE = '';
/** The NVIDIA container toolkit's word for "no GPU" (an empty value would mean "unset" there). */
const NVIDIA_CONTAINER_NONE = 'void';

/** The variables this module owns: always set by `visibleDeviceEnv`, never taken from the user. */
export const VISIBLE_DEVICE_VARS = [
  'CUDA_VISIBLE_DEVICES',
  'NVIDIA_VISIBLE_DEVICES',
  'HIP_VISIBLE_DEVICES',
  'ROCR_VISIBLE_DEVICES',
  'GPU_DEVICE_ORDINAL',
  'CUDA_MPS_ACTIVE_THREAD_PERCENTAGE',
] as const;

/**
 * Resolves grants against this host's devices, in grant order (which is the order the job sees
 * them in). A grant naming a device this host does not have is a placement bug or a stale
 * allocation: refused, never run on the wrong GPU.
 */
export function assignDevices(grants: readonly GrantLike[], inventory: readonly Device[]): AssignedDevice[] {
  const seen = new Set<string>();
  return grants.map((grant) => {
    if (seen.has(grant.uuid)) throw new FabricError('BAD_INPUT', `device ${grant.uuid} is granted twice in one allocation`);
    seen.add(grant.uuid);
    if (!Number.isInteger(grant.milli) || grant.milli < 1 || grant.milli > 1000) {
      throw new FabricError('BAD_INPUT', `device ${grant.uuid}: share ${grant.milli} is not 1..1000 thousandths`);
    }
    const gpu = inventory.find((d) => d.uuid === grant.uuid);
    if (gpu) {
      if (grant.parentUuid !== null) throw new FabricError('BAD_INPUT', `device ${grant.uuid} is a whole GPU but its grant names parent ${grant.parentUuid}`);
      return { uuid: gpu.uuid, vendor: gpu.vendor, index: gpu.index, milli: grant.milli, mig: null };
    }
    for (const parent of inventory) {
      const slice = parent.migInstances.find((m) => m.uuid !== '' && m.uuid === grant.uuid);
      if (!slice) continue;
      if (grant.parentUuid !== null && grant.parentUuid !== parent.uuid) {
        throw new FabricError('BAD_INPUT', `MIG slice ${grant.uuid} belongs to ${parent.uuid}, not to ${grant.parentUuid}`);
      }
      return {
        uuid: slice.uuid,
        vendor: parent.vendor,
        index: parent.index,
        milli: grant.milli,
        mig: { parentUuid: parent.uuid, profile: slice.profile, gpuInstanceId: slice.gpuInstanceId },
      };
    }
    throw new FabricError('BAD_INPUT', `device ${grant.uuid} is not on this host`, { details: { uuid: grant.uuid } });
  });
}

/** ROCR_VISIBLE_DEVICES takes `GPU-<hex>` UUIDs; other names fall back to the host index. */
function rocrName(d: AssignedDevice): string {
  return /^GPU-[0-9A-Za-z-]+$/.test(d.uuid) ? d.uuid : String(d.index);
}

/**
 * The visible-device variables for a set of assigned devices, plus fabric's own description of
 * them (FABRIC_GPU_UUIDS and FABRIC_GPU_MILLI, in the order the runtime numbers them).
 * A fractional share of an NVIDIA GPU also sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, which caps the
 * job's SMs where an MPS server runs and is ignored elsewhere.
 */
export function visibleDeviceEnv(devices: readonly AssignedDevice[]): Record<string, string> {
  const vendors = new Set(devices.map((d) => d.vendor));
  if (vendors.size > 1) {
    throw new FabricError('BAD_INPUT', 'an allocation cannot mix NVIDIA and AMD devices: no single CUDA_VISIBLE_DEVICES names both');
  }
  const env: Record<string, string> = {
    CUDA_VISIBLE_DEVICES: NONE,
    NVIDIA_VISIBLE_DEVICES: NVIDIA_CONTAINER_NONE,
    HIP_VISIBLE_DEVICES: NONE,
    ROCR_VISIBLE_DEVICES: NONE,
    GPU_DEVICE_ORDINAL: NONE,
    FABRIC_GPU_UUIDS: devices.map((d) => d.uuid).join(','),
    FABRIC_GPU_MILLI: devices.map((d) => String(d.milli)).join(','),
  };
  if (devices.length === 0) return env;
  if (vendors.has('nvidia')) {
    const uuids = devices.map((d) => d.uuid).join(',');
    env.CUDA_VISIBLE_DEVICES = uuids;
    env.NVIDIA_VISIBLE_DEVICES = uuids;
    const minMilli = Math.min(...devices.map((d) => d.milli));
    if (minMilli < 1000) env.CUDA_MPS_ACTIVE_THREAD_PERCENTAGE = String(Math.max(1, Math.ceil(minMilli / 10)));
  } else {
    const ordinals = devices.map((_, i) => String(i)).join(',');
    env.ROCR_VISIBLE_DEVICES = devices.map(rocrName).join(',');
    env.HIP_VISIBLE_DEVICES = ordinals;
    env.CUDA_VISIBLE_DEVICES = ordinals;
    env.GPU_DEVICE_ORDINAL = ordinals;
  }
  return env;
}
