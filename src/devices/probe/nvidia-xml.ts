/**
 * `nvidia-smi -q -x`: the full query as XML (DTD versions v10 to v13 seen in the wild).
 */
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import type { Device } from '../model.ts';
import { toNvidiaDevices, type RawMigDevice, type RawNvidiaGpu } from './nvidia-common.ts';
import { isMissing, normalizePciBusId, parseMiB, parseNonNegativeInt, parsePercent, unreadable } from './parse-util.ts';

const TOOL = 'nvidia-smi -q -x';

type XmlNode = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  // Keep every value a string: `<minor_number>0</minor_number>` and `00000000:01:00.0` alike.
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  // Always arrays, even when one GPU / one MIG device is listed.
  isArray: (name) => name === 'gpu' || name === 'mig_device',
});

function child(node: unknown, key: string): unknown {
  return node !== null && typeof node === 'object' ? (node as XmlNode)[key] : undefined;
}

/** The text of a leaf element along a path, or undefined. */
function text(node: unknown, ...path: string[]): string | undefined {
  let cur: unknown = node;
  for (const key of path) cur = child(cur, key);
  if (typeof cur === 'string') return cur;
  if (typeof cur === 'number') return String(cur);
  return undefined;
}

function list(node: unknown, ...path: string[]): unknown[] {
  let cur: unknown = node;
  for (const key of path) cur = child(cur, key);
  return Array.isArray(cur) ? cur : [];
}

function readMigDevice(node: unknown, position: number): RawMigDevice | undefined {
  const gpuInstanceId = parseNonNegativeInt(text(node, 'gpu_instance_id'));
  const memoryMiB = parseMiB(text(node, 'fb_memory_usage', 'total'));
  if (gpuInstanceId === undefined || memoryMiB === undefined) return undefined;
  const device: RawMigDevice = {
    index: parseNonNegativeInt(text(node, 'index')) ?? position,
    gpuInstanceId,
    memoryMiB,
  };
  const ci = parseNonNegativeInt(text(node, 'compute_instance_id'));
  if (ci !== undefined) device.computeInstanceId = ci;
  const sm = parseNonNegativeInt(text(node, 'device_attributes', 'shared', 'multiprocessor_count'));
  if (sm !== undefined) device.multiprocessorCount = sm;
  // Newer drivers print the MIG UUID in the XML; older ones only in `nvidia-smi -L`.
  const uuid = text(node, 'uuid') ?? text(node, 'mig_uuid');
  if (!isMissing(uuid)) device.uuid = uuid.trim();
  return device;
}

function readGpu(node: unknown): RawNvidiaGpu {
  const gpu: RawNvidiaGpu = { migDevices: [] };
  const uuid = text(node, 'uuid');
  if (!isMissing(uuid)) gpu.uuid = uuid.trim();
  const name = text(node, 'product_name');
  if (!isMissing(name)) gpu.productName = name.trim();
  const arch = text(node, 'product_architecture');
  if (!isMissing(arch)) gpu.architecture = arch.trim();
  const bus = normalizePciBusId(text(node, 'pci', 'pci_bus_id') ?? text(node, '@_id'));
  if (bus) gpu.pciBusId = bus;
  const total = parseMiB(text(node, 'fb_memory_usage', 'total'));
  if (total !== undefined) gpu.memoryTotalMiB = total;
  const used = parseMiB(text(node, 'fb_memory_usage', 'used'));
  if (used !== undefined) gpu.memoryUsedMiB = used;
  const util = parsePercent(text(node, 'utilization', 'gpu_util'));
  if (util !== undefined) gpu.utilizationPct = util;
  const mig = text(node, 'mig_mode', 'current_mig');
  if (!isMissing(mig)) gpu.migMode = mig.trim();
  gpu.migDevices = list(node, 'mig_devices', 'mig_device')
    .map((m, i) => readMigDevice(m, i))
    .filter((m): m is RawMigDevice => m !== undefined);
  return gpu;
}

/** Parses `nvidia-smi -q -x` output. Throws FabricError DISCOVERY_FAILED for anything else. */
export function parseNvidiaSmiXml(xml: string): Device[] {
  if (!xml.includes('<nvidia_smi_log')) throw unreadable(TOOL, 'no <nvidia_smi_log> document in output');
  const valid = XMLValidator.validate(xml);
  if (valid !== true) throw unreadable(TOOL, `malformed XML at line ${valid.err.line}: ${valid.err.msg}`);
  let doc: unknown;
  try {
    doc = parser.parse(xml);
  } catch (err) {
    throw unreadable(TOOL, `malformed XML: ${err instanceof Error ? err.message : String(err)}`);
  }
  const log = child(doc, 'nvidia_smi_log');
  const gpus = list(log, 'gpu');
  if (gpus.length === 0) {
    // A driver with no GPUs attached prints an empty log; that is a CPU-only host, not bad output.
    if (parseNonNegativeInt(text(log, 'attached_gpus')) === 0) return [];
    throw unreadable(TOOL, 'no <gpu> elements in output');
  }
  return toNvidiaDevices(gpus.map(readGpu), TOOL);
}
