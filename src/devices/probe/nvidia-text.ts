/**
 * `nvidia-smi -q` / `nvidia-smi -a` (the same report as text) and `nvidia-smi -L`.
 *
 * The text report is an indented tree of `Key : value` lines, with one top-level
 * `GPU 00000000:18:00.0` section per GPU. It is read as a tree so that nested keys with the same
 * name (`Total` under FB Memory Usage and under BAR1 Memory Usage) cannot be confused.
 */
import type { Device } from '../model.ts';
import { migProfileSlices, toNvidiaDevices, type RawMigDevice, type RawNvidiaGpu } from './nvidia-common.ts';
import { isMissing, normalizePciBusId, parseMiB, parseNonNegativeInt, parsePercent, splitLines, unreadable } from './parse-util.ts';

const QUERY_TOOL = 'nvidia-smi -q';
const LIST_TOOL = 'nvidia-smi -L';

export interface TextNode {
  key: string;
  value: string | undefined;
  children: TextNode[];
}

/** `    Product Name     : NVIDIA H100` → key/value; `    FB Memory Usage` → a section header. */
const KEY_VALUE = /^(.*?)\s+:\s?(.*)$/;

/** Reads an indented `Key : value` report into a tree (children by deeper indentation). */
export function parseIndentedTree(text: string): TextNode[] {
  const root: TextNode = { key: '', value: undefined, children: [] };
  const stack: { indent: number; node: TextNode }[] = [{ indent: -1, node: root }];
  for (const rawLine of splitLines(text)) {
    const line = rawLine.replace(/\t/g, '    ');
    if (line.trim() === '') continue;
    const indent = line.length - line.trimStart().length;
    const body = line.trim();
    const kv = KEY_VALUE.exec(body);
    const node: TextNode = kv ? { key: kv[1]!.trim(), value: kv[2]!.trim(), children: [] } : { key: body, value: undefined, children: [] };
    while (stack.length > 1 && stack[stack.length - 1]!.indent >= indent) stack.pop();
    stack[stack.length - 1]!.node.children.push(node);
    stack.push({ indent, node });
  }
  return root.children;
}

function find(node: TextNode | undefined, ...path: string[]): TextNode | undefined {
  let cur = node;
  for (const key of path) {
    const lower = key.toLowerCase();
    cur = cur?.children.find((c) => c.key.toLowerCase() === lower);
  }
  return cur;
}

function value(node: TextNode | undefined, ...path: string[]): string | undefined {
  return find(node, ...path)?.value;
}

const GPU_SECTION = /^GPU\s+([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])$/;

function readMigDevice(node: TextNode, position: number): RawMigDevice | undefined {
  const gpuInstanceId = parseNonNegativeInt(value(node, 'GPU Instance ID'));
  // Drivers from 525 on say "Shared FB Memory Usage"; older ones "FB Memory Usage".
  const memoryMiB = parseMiB(value(node, 'Shared FB Memory Usage', 'Total') ?? value(node, 'FB Memory Usage', 'Total'));
  if (gpuInstanceId === undefined || memoryMiB === undefined) return undefined;
  const device: RawMigDevice = { index: parseNonNegativeInt(value(node, 'Index')) ?? position, gpuInstanceId, memoryMiB };
  const ci = parseNonNegativeInt(value(node, 'Compute Instance ID'));
  if (ci !== undefined) device.computeInstanceId = ci;
  const sm = parseNonNegativeInt(value(node, 'Device Attributes', 'Shared', 'Multiprocessor count'));
  if (sm !== undefined) device.multiprocessorCount = sm;
  const uuid = value(node, 'MIG UUID') ?? value(node, 'UUID');
  if (!isMissing(uuid)) device.uuid = uuid;
  return device;
}

function readGpu(section: TextNode, busFromHeader: string): RawNvidiaGpu {
  const gpu: RawNvidiaGpu = { migDevices: [] };
  const uuid = value(section, 'GPU UUID');
  if (!isMissing(uuid)) gpu.uuid = uuid;
  const name = value(section, 'Product Name');
  if (!isMissing(name)) gpu.productName = name;
  const arch = value(section, 'Product Architecture');
  if (!isMissing(arch)) gpu.architecture = arch;
  const bus = normalizePciBusId(value(section, 'PCI', 'Bus Id') ?? busFromHeader);
  if (bus) gpu.pciBusId = bus;
  const total = parseMiB(value(section, 'FB Memory Usage', 'Total'));
  if (total !== undefined) gpu.memoryTotalMiB = total;
  const used = parseMiB(value(section, 'FB Memory Usage', 'Used'));
  if (used !== undefined) gpu.memoryUsedMiB = used;
  const util = parsePercent(value(section, 'Utilization', 'Gpu'));
  if (util !== undefined) gpu.utilizationPct = util;
  const mig = value(section, 'MIG Mode', 'Current');
  if (!isMissing(mig)) gpu.migMode = mig;
  // MIG devices sit directly in the GPU section (or under a `MIG Devices` header in older drivers).
  const migNodes = [...section.children, ...(find(section, 'MIG Devices')?.children ?? [])].filter((c) => c.key === 'MIG Device');
  gpu.migDevices = migNodes.map((m, i) => readMigDevice(m, i)).filter((m): m is RawMigDevice => m !== undefined);
  return gpu;
}

/** Parses `nvidia-smi -q` (= `-a`) text. Throws FabricError DISCOVERY_FAILED for anything else. */
export function parseNvidiaSmiText(text: string): Device[] {
  const tree = parseIndentedTree(text);
  const sections = tree.flatMap((node) => {
    const m = GPU_SECTION.exec(node.key);
    return m && node.value === undefined ? [{ node, bus: m[1]! }] : [];
  });
  if (sections.length === 0) {
    const attached = parseNonNegativeInt(tree.find((n) => n.key === 'Attached GPUs')?.value);
    if (attached === 0) return [];
    throw unreadable(QUERY_TOOL, 'no "GPU <bus id>" sections in output');
  }
  return toNvidiaDevices(
    sections.map((s) => readGpu(s.node, s.bus)),
    QUERY_TOOL,
  );
}

/** One line group of `nvidia-smi -L`. */
export interface NvidiaListedGpu {
  index: number;
  name: string;
  uuid: string;
  mig: { deviceIndex: number; profile: string; uuid: string }[];
}

const LIST_GPU = /^GPU\s+(\d+):\s+(.*?)\s+\(UUID:\s*(GPU-[^)\s]+)\)\s*$/;
// `  MIG 3g.40gb     Device  0: (UUID: MIG-…)`; drivers before R470 printed `MIG-GPU-<uuid>/gi/ci`.
const LIST_MIG = /^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s+\(UUID:\s*(MIG-[^)\s]+)\)\s*$/;

/** Parses `nvidia-smi -L`: GPUs with their UUIDs and, indented under each, its MIG devices. */
export function parseNvidiaSmiList(text: string): NvidiaListedGpu[] {
  const gpus: NvidiaListedGpu[] = [];
  for (const line of splitLines(text)) {
    if (line.trim() === '') continue;
    const g = LIST_GPU.exec(line);
    if (g) {
      gpus.push({ index: Number(g[1]), name: g[2]!, uuid: g[3]!, mig: [] });
      continue;
    }
    const m = LIST_MIG.exec(line);
    if (m && gpus.length > 0) {
      gpus[gpus.length - 1]!.mig.push({ profile: m[1]!, deviceIndex: Number(m[2]), uuid: m[3]! });
      continue;
    }
    throw unreadable(LIST_TOOL, `unexpected line ${JSON.stringify(line.slice(0, 80))}`);
  }
  if (gpus.length === 0) throw unreadable(LIST_TOOL, 'no "GPU <n>: <name> (UUID: ...)" lines in output');
  return gpus;
}

/**
 * Folds `nvidia-smi -L` into devices from `-q`: MIG UUIDs (which `-q` text does not print) and
 * the exact profile names (which `-q` does not print either, so they were inferred). A listed
 * MIG `Device N` is the MIG device with index N, the N-th instance in index order.
 * Returns how many listed MIG devices found no instance to land on.
 */
export function mergeNvidiaList(devices: Device[], listed: readonly NvidiaListedGpu[]): { unmatched: number } {
  let unmatched = 0;
  for (const gpu of listed) {
    const device = devices.find((d) => d.vendor === 'nvidia' && d.uuid === gpu.uuid) ?? devices.find((d) => d.vendor === 'nvidia' && d.index === gpu.index);
    if (!device) {
      unmatched += gpu.mig.length;
      continue;
    }
    for (const mig of gpu.mig) {
      const instance = device.migInstances[mig.deviceIndex];
      if (!instance) {
        unmatched++;
        continue;
      }
      instance.uuid = mig.uuid;
      instance.profile = mig.profile;
      const slices = migProfileSlices(mig.profile);
      if (slices !== undefined) instance.computeSlices = slices;
    }
  }
  return { unmatched };
}

/** One row of `nvidia-smi mig -lgi`. */
export interface NvidiaGpuInstanceRow {
  gpu: number;
  /** `1g.10gb`, as printed after `MIG`. */
  profile: string;
  profileId: number;
  gpuInstanceId: number;
  placementStart: number;
  placementSize: number;
}

const LGI_ROW = /^\|\s*(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|$/;

/** Parses the `GPU instances:` table of `nvidia-smi mig -lgi`. */
export function parseNvidiaMigGpuInstances(text: string): NvidiaGpuInstanceRow[] {
  const tool = 'nvidia-smi mig -lgi';
  if (!/GPU instances:/.test(text)) throw unreadable(tool, 'no "GPU instances:" table in output');
  const rows: NvidiaGpuInstanceRow[] = [];
  for (const line of splitLines(text)) {
    const m = LGI_ROW.exec(line.trim());
    if (!m) continue;
    rows.push({
      gpu: Number(m[1]),
      profile: m[2]!,
      profileId: Number(m[3]),
      gpuInstanceId: Number(m[4]),
      placementStart: Number(m[5]),
      placementSize: Number(m[6]),
    });
  }
  if (rows.length === 0) throw unreadable(tool, 'GPU instances table has no rows');
  return rows;
}

/**
 * Sets GPU-instance profile names from `nvidia-smi mig -lgi` (used when `-L` gave none). A
 * compute instance smaller than its GPU instance keeps the inferred `Nc.` prefix.
 */
export function mergeNvidiaMigGpuInstances(devices: Device[], rows: readonly NvidiaGpuInstanceRow[]): void {
  for (const row of rows) {
    const device = devices.find((d) => d.vendor === 'nvidia' && d.index === row.gpu);
    for (const instance of device?.migInstances ?? []) {
      if (instance.gpuInstanceId !== row.gpuInstanceId) continue;
      const ciPrefix = /^(\d+c\.)/.exec(instance.profile)?.[1] ?? '';
      instance.profile = `${ciPrefix}${row.profile}`;
      const slices = migProfileSlices(row.profile);
      if (slices !== undefined) instance.computeSlices = slices;
    }
  }
}
