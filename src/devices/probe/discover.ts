/**
 * Discovery: runs the vendor tools through a RunTool port (so `node` owns child processes and
 * tests can hand in a fake) and folds their outputs into one Inventory.
 *
 * Bad tool output never throws: what cannot be read becomes a warning naming the command, and
 * the host joins with what was found (CPU-only at worst). A tool that is not installed means no
 * devices of that vendor and no warning.
 */
import { FabricError, errorMessage, isFabricError, silentLogger, type Logger } from '../../core/index.ts';
import type { Device, Host, Inventory, Link } from '../model.ts';
import { COMPUTE_CAP_FIELDS, mergeComputeCapability, parseNvidiaQueryGpuCsv } from './nvidia-csv.ts';
import { mergeNvidiaList, mergeNvidiaMigGpuInstances, parseNvidiaMigGpuInstances, parseNvidiaSmiList, parseNvidiaSmiText } from './nvidia-text.ts';
import { parseNvidiaTopo } from './nvidia-topo.ts';
import { parseNvidiaSmiXml } from './nvidia-xml.ts';
import { firstLine } from './parse-util.ts';
import {
  mergeRocmConcise,
  mergeRocminfo,
  parseRocmSmiConcise,
  parseRocmSmiJson,
  parseRocmSmiText,
  parseRocminfo,
  parseRocmTopoType,
  toAmdDevices,
  toAmdLinks,
  type AmdGpuRecord,
  type RocmLinkRecord,
} from './rocm.ts';

/** How to start a tool: the executable and arguments that go before the tool's own. */
export interface ToolCommand {
  file: string;
  prefixArgs: string[];
  /** Extra environment variables for the tool (on top of the daemon's own). */
  env?: Readonly<Record<string, string>>;
}

export interface ToolResult {
  /** Exit code; null when the process was killed (timeout, signal) or never started. */
  code: number | null;
  stdout: string;
  stderr: string;
  /** The executable does not exist (ENOENT). */
  notFound: boolean;
}

/** Runs `cmd.file` with `cmd.prefixArgs` followed by `args`; resolves for any exit, even a failed start. */
export type RunTool = (cmd: ToolCommand, args: string[], signal?: AbortSignal) => Promise<ToolResult>;

export interface DiscoverOptions {
  run: RunTool;
  nvidiaSmi?: ToolCommand;
  rocmSmi?: ToolCommand;
  /** Used for AMD VRAM size and gfx target where rocm-smi does not print them. */
  rocminfo?: ToolCommand;
  host: Host;
  log?: Logger;
  signal?: AbortSignal;
}

export const DEFAULT_NVIDIA_SMI: ToolCommand = { file: 'nvidia-smi', prefixArgs: [] };
export const DEFAULT_ROCM_SMI: ToolCommand = { file: 'rocm-smi', prefixArgs: [] };
export const DEFAULT_ROCMINFO: ToolCommand = { file: 'rocminfo', prefixArgs: [] };

/** The commands discovery runs, by role (the fake tool answers exactly these). */
export const NVIDIA_ARGS = {
  xml: ['-q', '-x'],
  query: ['-q'],
  list: ['-L'],
  migGpuInstances: ['mig', '-lgi'],
  computeCap: [`--query-gpu=${COMPUTE_CAP_FIELDS.join(',')}`, '--format=csv,noheader'],
  topo: ['topo', '-m'],
} as const;

/** What rocm-smi's JSON must contain: names, ids, bus, VRAM, use, NUMA node and link types. */
export const ROCM_ARGS = {
  json: ['--showid', '--showproductname', '--showuniqueid', '--showserial', '--showbus', '--showmeminfo', 'vram', '--showuse', '--showtoponuma', '--showtopotype', '--json'],
  all: ['-a'],
  concise: [],
  topoType: ['--showtopotype'],
} as const;

const MAX_WARNINGS = 16;
const MAX_WARNING_LENGTH = 512;
/** The shell's exit code for a command it cannot find. */
const EXIT_COMMAND_NOT_FOUND = 127;
/** nvidia-smi's exit code for "No devices were found": a driver without GPUs, not an error. */
const NVIDIA_EXIT_NO_DEVICES = 6;

type CallOutcome = { ok: true; stdout: string } | { ok: false; notInstalled: boolean; code: number | null; reason: string };

/** Shared state of one discovery run: the port, the warnings, the log. */
class Probe {
  readonly warnings: string[] = [];
  readonly #opts: DiscoverOptions;
  readonly log: Logger;

  constructor(opts: DiscoverOptions) {
    this.#opts = opts;
    this.log = opts.log ?? silentLogger;
  }

  warn(message: string): void {
    this.log.warn({ warning: message }, 'device discovery');
    if (this.warnings.length < MAX_WARNINGS) this.warnings.push(message.length > MAX_WARNING_LENGTH ? `${message.slice(0, MAX_WARNING_LENGTH - 1)}…` : message);
  }

  /** Runs one tool command; never throws except when discovery itself is aborted. */
  async call(label: string, cmd: ToolCommand, args: readonly string[]): Promise<CallOutcome> {
    const signal = this.#opts.signal;
    if (signal?.aborted) throw new FabricError('ABORTED', 'device discovery aborted');
    let result: ToolResult;
    try {
      result = await this.#opts.run(cmd, [...args], signal);
    } catch (err) {
      if (signal?.aborted || isFabricError(err, 'ABORTED')) throw new FabricError('ABORTED', 'device discovery aborted', { cause: err });
      return { ok: false, notInstalled: false, code: null, reason: `could not run: ${errorMessage(err)}` };
    }
    this.log.debug({ tool: label, code: result.code, notFound: result.notFound, stdoutBytes: result.stdout.length }, 'tool ran');
    if (result.notFound || result.code === EXIT_COMMAND_NOT_FOUND) return { ok: false, notInstalled: true, code: result.code, reason: 'not installed' };
    if (result.code !== 0) {
      const detail = firstLine(result.stderr) || firstLine(result.stdout);
      const how = result.code === null ? 'did not finish' : `exited ${result.code}`;
      return { ok: false, notInstalled: false, code: result.code, reason: detail ? `${how}: ${detail}` : how };
    }
    return { ok: true, stdout: result.stdout };
  }
}

/** Runs a parser; its FabricError message (which names the command) becomes the failure reason. */
function attempt<T>(label: string, parse: () => T): { value: T } | { error: string } {
  try {
    return { value: parse() };
  } catch (err) {
    return { error: isFabricError(err) ? err.message : `${label}: ${errorMessage(err)}` };
  }
}

interface VendorResult {
  devices: Device[];
  links: Link[];
}

const NONE: VendorResult = { devices: [], links: [] };

async function probeNvidia(probe: Probe, cmd: ToolCommand): Promise<VendorResult> {
  const failures: string[] = [];
  let devices: Device[] | undefined;

  const xml = await probe.call('nvidia-smi -q -x', cmd, NVIDIA_ARGS.xml);
  if (!xml.ok && xml.notInstalled) return NONE;
  if (!xml.ok && xml.code === NVIDIA_EXIT_NO_DEVICES) return NONE;
  if (xml.ok) {
    const parsed = attempt('nvidia-smi -q -x', () => parseNvidiaSmiXml(xml.stdout));
    if ('value' in parsed) devices = parsed.value;
    else failures.push(parsed.error);
  } else {
    failures.push(`nvidia-smi -q -x: ${xml.reason}`);
  }
  if (!devices) {
    // Some drivers and containers refuse the XML form; the text report has the same fields.
    const text = await probe.call('nvidia-smi -q', cmd, NVIDIA_ARGS.query);
    if (text.ok) {
      const parsed = attempt('nvidia-smi -q', () => parseNvidiaSmiText(text.stdout));
      if ('value' in parsed) devices = parsed.value;
      else failures.push(parsed.error);
    } else {
      failures.push(`nvidia-smi -q: ${text.reason}`);
    }
    if (!devices) {
      for (const f of failures) probe.warn(f);
      return NONE;
    }
    probe.log.debug({ reason: failures[0] }, 'nvidia-smi XML unusable, read the text report');
  }
  if (devices.length === 0) return NONE;

  await addMigNames(probe, cmd, devices);
  await addComputeCapability(probe, cmd, devices);
  const links = await readNvidiaTopology(probe, cmd, devices);
  return { devices, links };
}

/** MIG UUIDs and exact profile names: `-L`, else the GPU-instance table for the names at least. */
async function addMigNames(probe: Probe, cmd: ToolCommand, devices: Device[]): Promise<void> {
  if (!devices.some((d) => d.migInstances.length > 0)) return;
  const list = await probe.call('nvidia-smi -L', cmd, NVIDIA_ARGS.list);
  let listError: string;
  if (list.ok) {
    const parsed = attempt('nvidia-smi -L', () => parseNvidiaSmiList(list.stdout));
    if ('value' in parsed) {
      const { unmatched } = mergeNvidiaList(devices, parsed.value);
      if (unmatched > 0) probe.warn(`nvidia-smi -L: ${unmatched} MIG device(s) not found in nvidia-smi -q output`);
      return;
    }
    listError = parsed.error;
  } else {
    listError = `nvidia-smi -L: ${list.reason}`;
  }
  const lgi = await probe.call('nvidia-smi mig -lgi', cmd, NVIDIA_ARGS.migGpuInstances);
  if (lgi.ok) {
    const parsed = attempt('nvidia-smi mig -lgi', () => parseNvidiaMigGpuInstances(lgi.stdout));
    if ('value' in parsed) mergeNvidiaMigGpuInstances(devices, parsed.value);
    else probe.log.debug({ reason: parsed.error }, 'MIG profile names stay inferred');
  }
  probe.warn(`${listError}; MIG device UUIDs unknown`);
}

/** Compute capability is optional: drivers before 510 do not know the field. */
async function addComputeCapability(probe: Probe, cmd: ToolCommand, devices: Device[]): Promise<void> {
  const csv = await probe.call('nvidia-smi --query-gpu', cmd, NVIDIA_ARGS.computeCap);
  if (!csv.ok) {
    probe.log.debug({ reason: csv.reason }, 'no compute capability from nvidia-smi');
    return;
  }
  const parsed = attempt('nvidia-smi --query-gpu', () => parseNvidiaQueryGpuCsv(csv.stdout, COMPUTE_CAP_FIELDS));
  if ('value' in parsed) mergeComputeCapability(devices, parsed.value);
  else probe.log.debug({ reason: parsed.error }, 'no compute capability from nvidia-smi');
}

async function readNvidiaTopology(probe: Probe, cmd: ToolCommand, devices: Device[]): Promise<Link[]> {
  const topo = await probe.call('nvidia-smi topo -m', cmd, NVIDIA_ARGS.topo);
  if (!topo.ok) {
    probe.warn(`nvidia-smi topo -m: ${topo.reason}`);
    return [];
  }
  const parsed = attempt('nvidia-smi topo -m', () => parseNvidiaTopo(topo.stdout));
  if ('error' in parsed) {
    probe.warn(parsed.error);
    return [];
  }
  const { links, numaByGpu, gpuCount } = parsed.value;
  if (gpuCount !== devices.length) probe.warn(`nvidia-smi topo -m: matrix has ${gpuCount} GPUs, nvidia-smi -q listed ${devices.length}`);
  for (const d of devices) {
    const numa = numaByGpu.get(d.index);
    if (d.numaNode === undefined && numa !== undefined) d.numaNode = numa;
  }
  return links.filter((l) => l.b < devices.length);
}

async function probeAmd(probe: Probe, cmd: ToolCommand, rocminfoCmd: ToolCommand): Promise<VendorResult> {
  const failures: string[] = [];
  let gpus: AmdGpuRecord[] | undefined;
  let linkRecords: RocmLinkRecord[] = [];

  const json = await probe.call('rocm-smi --json', cmd, ROCM_ARGS.json);
  if (!json.ok && json.notInstalled) return NONE;
  if (json.ok) {
    const parsed = attempt('rocm-smi --json', () => parseRocmSmiJson(json.stdout));
    if ('value' in parsed) ({ gpus, links: linkRecords } = parsed.value);
    else failures.push(parsed.error);
  } else {
    failures.push(`rocm-smi --json: ${json.reason}`);
  }
  if (!gpus) {
    const text = await probe.call('rocm-smi -a', cmd, ROCM_ARGS.all);
    if (text.ok) {
      const parsed = attempt('rocm-smi -a', () => parseRocmSmiText(text.stdout));
      if ('value' in parsed) gpus = parsed.value;
      else failures.push(parsed.error);
    } else {
      failures.push(`rocm-smi -a: ${text.reason}`);
    }
    if (!gpus) {
      for (const f of failures) probe.warn(f);
      return NONE;
    }
    probe.log.debug({ reason: failures[0] }, 'rocm-smi JSON unusable, read the text report');
  }

  let rocminfoProblem = '';
  if (gpus.some((g) => g.memoryMiB === undefined || g.gfxTarget === undefined)) {
    const info = await probe.call('rocminfo', rocminfoCmd, []);
    if (info.ok) {
      const parsed = attempt('rocminfo', () => parseRocminfo(info.stdout));
      if ('value' in parsed) mergeRocminfo(gpus, parsed.value);
      else rocminfoProblem = parsed.error;
    } else {
      rocminfoProblem = `rocminfo: ${info.reason}`;
    }
  }
  if (gpus.some((g) => g.memoryUsedMiB === undefined || g.model === undefined)) {
    const concise = await probe.call('rocm-smi', cmd, ROCM_ARGS.concise);
    const parsed = concise.ok ? attempt('rocm-smi', () => parseRocmSmiConcise(concise.stdout)) : { error: concise.reason };
    if ('value' in parsed) mergeRocmConcise(gpus, parsed.value);
    else probe.log.debug({ reason: parsed.error }, 'no VRAM use from the rocm-smi table');
  }
  const noMemory = gpus.filter((g) => g.memoryMiB === undefined);
  if (noMemory.length > 0) {
    probe.warn(`rocm-smi: VRAM size unknown for ${noMemory.map((g) => `GPU[${g.index}]`).join(', ')}${rocminfoProblem ? ` (${rocminfoProblem})` : ''}`);
  }

  const converted = attempt('rocm-smi', () => toAmdDevices(gpus, 'rocm-smi'));
  if ('error' in converted) {
    probe.warn(converted.error);
    return NONE;
  }
  const devices = converted.value;
  if (linkRecords.length === 0 && devices.length > 1) {
    const topo = await probe.call('rocm-smi --showtopotype', cmd, ROCM_ARGS.topoType);
    if (topo.ok) {
      const parsed = attempt('rocm-smi --showtopotype', () => parseRocmTopoType(topo.stdout));
      if ('value' in parsed) linkRecords = parsed.value;
      else probe.warn(parsed.error);
    } else {
      probe.warn(`rocm-smi --showtopotype: ${topo.reason}`);
    }
  }
  return { devices, links: toAmdLinks(linkRecords, devices) };
}

/**
 * Finds the host's accelerators. NVIDIA: `-q -x` (else `-q`), `-L` for MIG names, the
 * compute capability CSV, and `topo -m` for links and NUMA nodes. AMD: rocm-smi JSON (else
 * `-a` text), rocminfo where VRAM size or gfx target is missing, and the link type matrix.
 * Device indexes are unique in the inventory: AMD GPUs on a host that also has NVIDIA GPUs are
 * numbered after them.
 */
export async function discoverInventory(opts: DiscoverOptions): Promise<Inventory> {
  const probe = new Probe(opts);
  const nvidia = await probeNvidia(probe, opts.nvidiaSmi ?? DEFAULT_NVIDIA_SMI);
  const amd = await probeAmd(probe, opts.rocmSmi ?? DEFAULT_ROCM_SMI, opts.rocminfo ?? DEFAULT_ROCMINFO);
  const offset = nvidia.devices.length === 0 ? 0 : Math.max(...nvidia.devices.map((d) => d.index)) + 1;
  const amdDevices = amd.devices.map((d) => ({ ...d, index: d.index + offset }));
  const amdLinks = amd.links.map((l) => ({ ...l, a: l.a + offset, b: l.b + offset }));
  const inventory: Inventory = {
    host: opts.host,
    devices: [...nvidia.devices, ...amdDevices],
    links: [...nvidia.links, ...amdLinks],
    warnings: probe.warnings,
  };
  probe.log.info({ devices: inventory.devices.length, links: inventory.links.length, warnings: inventory.warnings.length }, 'device discovery done');
  return inventory;
}
