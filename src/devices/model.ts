/**
 * The accelerator model shared by discovery, gossip and placement. Plain data with zod schemas,
 * because an Inventory travels on the wire inside every NodeState and is checked on arrival.
 */
import { z } from 'zod';

export const VendorSchema = z.enum(['nvidia', 'amd']);
export type Vendor = z.infer<typeof VendorSchema>;

/** One MIG GPU instance (with its compute instance) carved out of an NVIDIA GPU. */
export const MigInstanceSchema = z.object({
  /** `MIG-...` UUID, what CUDA_VISIBLE_DEVICES takes for a slice; empty when the tool does not print it. */
  uuid: z.string().max(128),
  /** Profile name such as `3g.40gb`. */
  profile: z.string().max(64),
  /** GPU instance id on its parent GPU. */
  gpuInstanceId: z.number().int().min(0),
  computeInstanceId: z.number().int().min(0).optional(),
  memoryMiB: z.number().int().min(0),
  /** Streaming multiprocessor slices (the `Ng` of the profile). */
  computeSlices: z.number().int().min(0).optional(),
});
export type MigInstance = z.infer<typeof MigInstanceSchema>;

export const DeviceSchema = z.object({
  /** Position on its host (nvidia-smi minor number / rocm-smi card index). */
  index: z.number().int().min(0),
  uuid: z.string().min(1).max(128),
  vendor: VendorSchema,
  /** Product name as the vendor tool prints it, e.g. `NVIDIA H100 80GB HBM3`. */
  model: z.string().max(128),
  /** Total framebuffer memory. */
  memoryMiB: z.number().int().min(0),
  /** PCI bus id, normalized to `0000:18:00.0` (lower case, 4-digit domain) where known. */
  pciBusId: z.string().max(32).optional(),
  numaNode: z.number().int().min(0).optional(),
  /** NVIDIA compute capability like `9.0`, AMD gfx target like `gfx942`, where known. */
  computeCapability: z.string().max(32).optional(),
  architecture: z.string().max(64).optional(),
  migEnabled: z.boolean(),
  migInstances: z.array(MigInstanceSchema).max(64),
  /** Live figures, where the tool gives them. */
  memoryUsedMiB: z.number().int().min(0).optional(),
  utilizationPct: z.number().min(0).max(100).optional(),
});
export type Device = z.infer<typeof DeviceSchema>;

/**
 * How two devices of one host talk, from `nvidia-smi topo -m` (or rocm-smi's link matrix):
 * NV# = NVLink with # links; XGMI for AMD; PIX = one PCIe switch; PXB = several PCIe switches;
 * PHB = through a PCIe host bridge; NODE = across host bridges within one NUMA node;
 * SYS = across NUMA nodes (SMP interconnect).
 */
export const LinkKindSchema = z.enum(['nvlink', 'xgmi', 'pix', 'pxb', 'phb', 'node', 'sys']);
export type LinkKind = z.infer<typeof LinkKindSchema>;

export const LinkSchema = z.object({
  /** Device indexes (a < b). */
  a: z.number().int().min(0),
  b: z.number().int().min(0),
  kind: LinkKindSchema,
  /** Number of NVLink/XGMI links bonded between the pair (NV18 → 18); 0 for PCIe paths. */
  width: z.number().int().min(0).max(64),
});
export type Link = z.infer<typeof LinkSchema>;

export const HostSchema = z.object({
  cpuModel: z.string().max(256),
  cpuCores: z.number().int().min(0),
  memoryMiB: z.number().int().min(0),
  numaNodes: z.number().int().min(0).optional(),
});
export type Host = z.infer<typeof HostSchema>;

export const InventorySchema = z.object({
  host: HostSchema,
  devices: z.array(DeviceSchema).max(64),
  links: z.array(LinkSchema).max(64 * 64),
  /** Why a vendor tool could not be read (the host then runs CPU-only or with what it found). */
  warnings: z.array(z.string().max(512)).max(16),
});
export type Inventory = z.infer<typeof InventorySchema>;

/** Link kinds from fastest to slowest, for topology-aware placement and display. */
export const LINK_RANK: Readonly<Record<LinkKind, number>> = {
  nvlink: 0,
  xgmi: 0,
  pix: 1,
  pxb: 2,
  phb: 3,
  node: 4,
  sys: 5,
};
