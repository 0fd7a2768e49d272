/**
 * AMD: `rocm-smi ... --json`, `rocm-smi -a` text, the concise `rocm-smi` table, `rocminfo`,
 * and `rocm-smi --showtopotype` (the link type matrix).
 *
 * rocm-smi names the same field differently across ROCm versions (`GPU ID` then `Device ID`,
 * `Card series` then `Card Series`, a `Device Name` from 6.1), and `rocm-smi -a` on MI300X
 * prints no VRAM total at all, so records from several commands are merged before becoming
 * Devices. Device identity is the GPU's unique id, the same number rocminfo prints as the agent
 * UUID `GPU-<hex>`, which is what ROCR_VISIBLE_DEVICES accepts.
 */
import { DeviceSchema, type Device, type Link, type LinkKind } from '../model.ts';
import { isMissing, normalizePciBusId, parseNonNegativeInt, parsePercent, splitLines, unreadable } from './parse-util.ts';

/** What one or more rocm-smi/rocminfo outputs say about one GPU, by rocm-smi index. */
export interface AmdGpuRecord {
  index: number;
  /** Unique id as 16 lower-case hex digits. */
  uniqueId?: string;
  serial?: string;
  model?: string;
  /** PCI device id such as `0x74a1`. */
  deviceId?: string;
  pciBusId?: string;
  memoryMiB?: number;
  memoryUsedMiB?: number;
  utilizationPct?: number;
  numaNode?: number;
  /** gfx target such as `gfx942`. */
  gfxTarget?: string;
}

/** One pair of the link-type matrix, by rocm-smi index. */
export interface RocmLinkRecord {
  a: number;
  b: number;
  /** `XGMI` or `PCIE` as rocm-smi prints it. */
  type: string;
}

const MIB = 1024 * 1024;

/** `0x8d1457e2c20f59d2` / `GPU-8d1457e2c20f59d2` → `8d1457e2c20f59d2`; N/A and masked ids → undefined. */
export function normalizeAmdUniqueId(value: string | undefined): string | undefined {
  if (isMissing(value)) return undefined;
  const m = /^(?:0x|GPU-)?([0-9a-fA-F]{1,16})$/.exec(value.trim());
  if (!m) return undefined;
  const n = BigInt(`0x${m[1]}`);
  return n === 0n ? undefined : n.toString(16).padStart(16, '0');
}

function bytesToMiB(value: string | undefined): number | undefined {
  const n = parseNonNegativeInt(value);
  return n === undefined ? undefined : Math.floor(n / MIB);
}

/** rocm-smi prints -1 or 4294967295 where a GPU has no NUMA affinity. */
function parseNumaNode(value: string | undefined): number | undefined {
  const n = parseNonNegativeInt(value);
  return n !== undefined && n < 0xffff ? n : undefined;
}

function isHexOnly(value: string): boolean {
  return /^0x[0-9a-f]+$/i.test(value.trim());
}

/** One card's `key: value` fields (same keys in the JSON and the text forms) → a record. */
function recordFromFields(index: number, fields: ReadonlyMap<string, string>): AmdGpuRecord {
  const get = (...keys: string[]): string | undefined => {
    for (const k of keys) {
      const v = fields.get(k.toLowerCase());
      if (!isMissing(v)) return v.trim();
    }
    return undefined;
  };
  const record: AmdGpuRecord = { index };
  const uniqueId = normalizeAmdUniqueId(get('Unique ID'));
  if (uniqueId) record.uniqueId = uniqueId;
  const serial = get('Serial Number');
  if (serial && !/^0+$/.test(serial)) record.serial = serial;
  // Old ROCm prints the PCI vendor id (0x1002) as the card series; a name is never a bare hex number.
  const model = [get('Device Name'), get('Card Series', 'Card series'), get('Card Model', 'Card model')].find((v) => v !== undefined && !isHexOnly(v));
  if (model) record.model = model;
  const deviceId = get('Device ID', 'GPU ID');
  if (deviceId) record.deviceId = deviceId.toLowerCase();
  const bus = normalizePciBusId(get('PCI Bus'));
  if (bus) record.pciBusId = bus;
  const total = bytesToMiB(get('VRAM Total Memory (B)'));
  if (total !== undefined) record.memoryMiB = total;
  const used = bytesToMiB(get('VRAM Total Used Memory (B)'));
  if (used !== undefined) record.memoryUsedMiB = used;
  const util = parsePercent(get('GPU use (%)'));
  if (util !== undefined) record.utilizationPct = util;
  const numa = parseNumaNode(get('(Topology) Numa Node'));
  if (numa !== undefined) record.numaNode = numa;
  const gfx = get('GFX Version');
  if (gfx && /^gfx[0-9a-f]+$/i.test(gfx)) record.gfxTarget = gfx.toLowerCase();
  return record;
}

const TOPO_LINK_TYPE = /^\(Topology\) Link type between DRM devices (\d+) and (\d+)$/i;

/** Parses `rocm-smi ... --json`: `card<N>` objects plus a `system` object (driver, topology pairs). */
export function parseRocmSmiJson(text: string): { gpus: AmdGpuRecord[]; links: RocmLinkRecord[] } {
  const tool = 'rocm-smi --json';
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw unreadable(tool, `not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw unreadable(tool, 'output is not a JSON object');
  const gpus: AmdGpuRecord[] = [];
  const links: RocmLinkRecord[] = [];
  for (const [key, entry] of Object.entries(doc as Record<string, unknown>)) {
    if (entry === null || typeof entry !== 'object') continue;
    const fields = new Map<string, string>();
    for (const [k, v] of Object.entries(entry as Record<string, unknown>)) if (typeof v === 'string' || typeof v === 'number') fields.set(k.toLowerCase(), String(v));
    const card = /^card(\d+)$/.exec(key);
    if (card) {
      gpus.push(recordFromFields(Number(card[1]), fields));
    } else if (key === 'system') {
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        const m = TOPO_LINK_TYPE.exec(k);
        if (m && typeof v === 'string') links.push({ a: Number(m[1]), b: Number(m[2]), type: v.trim().toUpperCase() });
      }
    }
  }
  if (gpus.length === 0) throw unreadable(tool, 'no "card<N>" entries in output');
  gpus.sort((x, y) => x.index - y.index);
  return { gpus, links };
}

const TEXT_FIELD = /^GPU\[(\d+)\]\s*:\s*(.*)$/;

/** Parses `rocm-smi -a` (or any rocm-smi text made of `GPU[N] : key: value` lines). */
export function parseRocmSmiText(text: string): AmdGpuRecord[] {
  const fieldsByGpu = new Map<number, Map<string, string>>();
  for (const line of splitLines(text)) {
    const m = TEXT_FIELD.exec(line.trim());
    if (!m) continue;
    const index = Number(m[1]);
    let fields = fieldsByGpu.get(index);
    if (!fields) fieldsByGpu.set(index, (fields = new Map()));
    const kv = /^(.*?):\s*(.*)$/.exec(m[2]!);
    if (!kv) continue;
    const key = kv[1]!.trim().toLowerCase();
    // The first value wins: later sections repeat some keys with other meanings.
    if (!fields.has(key)) fields.set(key, kv[2]!.trim());
  }
  if (fieldsByGpu.size === 0) throw unreadable('rocm-smi -a', 'no "GPU[N] : ..." lines in output');
  return [...fieldsByGpu.entries()].sort(([a], [b]) => a - b).map(([index, fields]) => recordFromFields(index, fields));
}

export interface RocmConciseRow {
  index: number;
  model?: string;
  vramPct?: number;
  gpuPct?: number;
}

/**
 * Parses the concise table that plain `rocm-smi` prints. ROCm 6 puts the device name on a second
 * line under each row; the last two columns are VRAM% and GPU% in every version.
 */
export function parseRocmSmiConcise(text: string): RocmConciseRow[] {
  const lines = splitLines(text);
  const headerAt = lines.findIndex((l) => /\bVRAM%/.test(l) && /\bGPU%/.test(l));
  if (headerAt < 0) throw unreadable('rocm-smi', 'no concise table header with VRAM% and GPU% columns');
  const rows: RocmConciseRow[] = [];
  for (let i = headerAt + 1; i < lines.length; i++) {
    const line = lines[i]!;
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const tokens = m[2]!.trim().split(/\s+/);
    const row: RocmConciseRow = { index: Number(m[1]) };
    const vram = parsePercent(tokens[tokens.length - 2]);
    const gpu = parsePercent(tokens[tokens.length - 1]);
    if (vram !== undefined) row.vramPct = vram;
    if (gpu !== undefined) row.gpuPct = gpu;
    const next = lines[i + 1];
    if (next !== undefined && /^\s+\S/.test(next) && !/^\s*=/.test(next)) row.model = next.trim();
    rows.push(row);
  }
  if (rows.length === 0) throw unreadable('rocm-smi', 'concise table has no device rows');
  return rows;
}

/** One GPU agent of `rocminfo`. */
export interface RocmAgent {
  gfxTarget: string;
  uniqueId?: string;
  marketingName?: string;
  /** Bus number from BDFID (bus << 8 | device << 3 | function). */
  pciBus?: number;
  /** Size of the coarse-grained global pool: the GPU's VRAM. */
  memoryMiB?: number;
  computeUnits?: number;
}

/** Parses `rocminfo`: the GPU agents only (CPU agents are skipped). */
export function parseRocminfo(text: string): RocmAgent[] {
  const agents: RocmAgent[] = [];
  const blocks = text.split(/^\*{3,}\s*\n(?=Agent \d+)/m).slice(1);
  for (const block of blocks) {
    const top = new Map<string, string>();
    let memoryMiB: number | undefined;
    const lines = splitLines(block);
    lines.forEach((line, i) => {
      const kv = /^ {2}(\S[^:]*?):\s*(.*?)\s*$/.exec(line);
      if (kv && !top.has(kv[1]!)) top.set(kv[1]!, kv[2]!);
      if (memoryMiB === undefined && /Segment:\s+GLOBAL; FLAGS: COARSE GRAINED/.test(line)) {
        const size = /Size:\s+(\d+)\(0x[0-9a-f]+\)\s*KB/i.exec(lines[i + 1] ?? '');
        if (size) memoryMiB = Math.floor(Number(size[1]) / 1024);
      }
    });
    if (top.get('Device Type') !== 'GPU') continue;
    const name = top.get('Name');
    if (!name || !/^gfx[0-9a-f]+$/i.test(name)) continue;
    const agent: RocmAgent = { gfxTarget: name.toLowerCase() };
    const uniqueId = normalizeAmdUniqueId(top.get('Uuid'));
    if (uniqueId) agent.uniqueId = uniqueId;
    const marketing = top.get('Marketing Name');
    if (!isMissing(marketing)) agent.marketingName = marketing;
    const bdf = parseNonNegativeInt(top.get('BDFID'));
    if (bdf !== undefined) agent.pciBus = (bdf >> 8) & 0xff;
    if (memoryMiB !== undefined) agent.memoryMiB = memoryMiB;
    const cu = parseNonNegativeInt(top.get('Compute Unit'));
    if (cu !== undefined) agent.computeUnits = cu;
    agents.push(agent);
  }
  if (agents.length === 0) throw unreadable('rocminfo', 'no GPU agents in output');
  return agents;
}

/** Fills VRAM size, gfx target and name from rocminfo agents, matched by unique id, else PCI bus. */
export function mergeRocminfo(gpus: AmdGpuRecord[], agents: readonly RocmAgent[]): void {
  for (const gpu of gpus) {
    const agent =
      (gpu.uniqueId ? agents.find((a) => a.uniqueId === gpu.uniqueId) : undefined) ??
      (gpu.pciBusId ? agents.find((a) => a.pciBus !== undefined && a.pciBus === parseInt(gpu.pciBusId!.split(':')[1]!, 16)) : undefined);
    if (!agent) continue;
    if (gpu.memoryMiB === undefined && agent.memoryMiB !== undefined) gpu.memoryMiB = agent.memoryMiB;
    if (gpu.gfxTarget === undefined) gpu.gfxTarget = agent.gfxTarget;
    if (gpu.model === undefined && agent.marketingName) gpu.model = agent.marketingName;
  }
}

/** Fills name and memory in use from the concise table (VRAM% of the total). */
export function mergeRocmConcise(gpus: AmdGpuRecord[], rows: readonly RocmConciseRow[]): void {
  for (const gpu of gpus) {
    const row = rows.find((r) => r.index === gpu.index);
    if (!row) continue;
    if (gpu.model === undefined && row.model) gpu.model = row.model;
    if (gpu.memoryUsedMiB === undefined && gpu.memoryMiB !== undefined && row.vramPct !== undefined) gpu.memoryUsedMiB = Math.round((gpu.memoryMiB * row.vramPct) / 100);
    if (gpu.utilizationPct === undefined && row.gpuPct !== undefined) gpu.utilizationPct = row.gpuPct;
  }
}

/**
 * Parses the link type matrix of `rocm-smi --showtopotype` (also the `Link Type` table inside
 * `rocm-smi --showtopo`). The diagonal is `0`; other cells are XGMI or PCIE.
 */
export function parseRocmTopoType(text: string): RocmLinkRecord[] {
  const tool = 'rocm-smi --showtopotype';
  const lines = splitLines(text);
  const titleAt = lines.findIndex((l) => /link type/i.test(l) && /=/.test(l));
  const headerAt = lines.findIndex((l, i) => i > titleAt && /^\s+GPU0(\s|$)/.test(l));
  if (headerAt < 0) throw unreadable(tool, 'no link type matrix (header row with GPU0) in output');
  const columns = lines[headerAt]!.trim().split(/\s+/).map((t) => /^GPU(\d+)$/.exec(t)?.[1]);
  if (columns.some((c) => c === undefined)) throw unreadable(tool, 'matrix header has a column that is not GPU<n>');
  const gpuCount = columns.length;
  const rows = new Map<number, string[]>();
  for (const line of lines.slice(headerAt + 1)) {
    const tokens = line.trim().split(/\s+/);
    const m = /^GPU(\d+)$/.exec(tokens[0] ?? '');
    if (!m) {
      if (rows.size > 0) break; // the matrix ends at the first line that is not a GPU row
      continue;
    }
    if (tokens.length - 1 < gpuCount) throw unreadable(tool, `row GPU${m[1]} is cut short`);
    rows.set(Number(m[1]), tokens.slice(1));
  }
  if (rows.size < gpuCount) throw unreadable(tool, `matrix truncated: ${gpuCount} columns, ${rows.size} rows`);
  const links: RocmLinkRecord[] = [];
  for (let a = 0; a < gpuCount; a++) {
    for (let b = a + 1; b < gpuCount; b++) {
      const type = rows.get(a)![columns.indexOf(String(b))]!.toUpperCase();
      if (type !== 'XGMI' && type !== 'PCIE') throw unreadable(tool, `unknown link type ${JSON.stringify(type)} between GPU${a} and GPU${b}`);
      links.push({ a, b, type });
    }
  }
  return links;
}

/**
 * Link records → Links between the given devices (pairs naming a GPU that is not listed are
 * dropped: telegraf's samples keep the topology of GPUs trimmed from the card list).
 * XGMI width is 1: rocm-smi says a pair is XGMI-connected but not over how many links.
 * A PCIe path between GPUs on different NUMA nodes crosses the SMP interconnect (`sys`);
 * otherwise rocm-smi does not tell whether the GPUs share a host bridge, so it is `node`.
 */
export function toAmdLinks(records: readonly RocmLinkRecord[], devices: readonly Device[]): Link[] {
  const byIndex = new Map(devices.filter((d) => d.vendor === 'amd').map((d) => [d.index, d]));
  const links: Link[] = [];
  const seen = new Set<string>();
  for (const r of records) {
    const [a, b] = r.a < r.b ? [r.a, r.b] : [r.b, r.a];
    const da = byIndex.get(a);
    const db = byIndex.get(b);
    if (!da || !db || a === b || seen.has(`${a}-${b}`)) continue;
    seen.add(`${a}-${b}`);
    let kind: LinkKind;
    if (r.type === 'XGMI') kind = 'xgmi';
    else kind = da.numaNode !== undefined && db.numaNode !== undefined && da.numaNode !== db.numaNode ? 'sys' : 'node';
    links.push({ a, b, kind, width: kind === 'xgmi' ? 1 : 0 });
  }
  return links.sort((x, y) => x.a - y.a || x.b - y.b);
}

/**
 * Records → validated Devices. The UUID is `GPU-<unique id>`; a GPU that reports no unique id
 * (older ROCm) is named by serial number, else by PCI bus id, which identify it but which
 * ROCR_VISIBLE_DEVICES does not accept. A GPU with no VRAM figure gets memoryMiB 0: the caller
 * warns about it rather than drop the GPU.
 */
export function toAmdDevices(gpus: readonly AmdGpuRecord[], tool: string): Device[] {
  return gpus.map((gpu) => {
    let uuid: string;
    if (gpu.uniqueId) uuid = `GPU-${gpu.uniqueId}`;
    else if (gpu.serial) uuid = `AMD-SN-${gpu.serial}`;
    else if (gpu.pciBusId) uuid = `AMD-PCI-${gpu.pciBusId}`;
    else throw unreadable(tool, `GPU[${gpu.index}] has no unique id, serial number or PCI bus id`);
    const device: Device = {
      index: gpu.index,
      uuid,
      vendor: 'amd',
      model: gpu.model ?? (gpu.deviceId ? `AMD GPU ${gpu.deviceId}` : 'AMD GPU'),
      memoryMiB: gpu.memoryMiB ?? 0,
      migEnabled: false,
      migInstances: [],
    };
    if (gpu.pciBusId) device.pciBusId = gpu.pciBusId;
    if (gpu.numaNode !== undefined) device.numaNode = gpu.numaNode;
    if (gpu.gfxTarget) device.computeCapability = gpu.gfxTarget;
    if (gpu.memoryUsedMiB !== undefined) device.memoryUsedMiB = gpu.memoryUsedMiB;
    if (gpu.utilizationPct !== undefined) device.utilizationPct = gpu.utilizationPct;
    const checked = DeviceSchema.safeParse(device);
    if (!checked.success) throw unreadable(tool, `GPU[${gpu.index}]: ${checked.error.issues[0]?.message ?? 'invalid device'}`);
    return checked.data;
  });
}
