/**
 * `nvidia-smi topo -m`: the connection matrix between GPUs (and NICs), plus each GPU's CPU and
 * NUMA affinity. Columns are separated by tabs on recent drivers and by runs of spaces in
 * copies pasted from a terminal; the header may be underlined with ANSI escapes; NIC rows, the
 * legend and anything after the GPU rows are ignored, so output cut short after the GPU rows
 * still reads.
 */
import type { Link, LinkKind } from '../model.ts';
import { splitLines, stripAnsi, unreadable } from './parse-util.ts';

const TOOL = 'nvidia-smi topo -m';

export interface NvidiaTopology {
  /** One link per unordered GPU pair (a < b), by nvidia-smi GPU index. */
  links: Link[];
  /** NUMA node per GPU index, where the matrix names one. */
  numaByGpu: Map<number, number>;
  gpuCount: number;
}

/** A matrix cell → link kind and width. `SOC` is what drivers before R384 printed for SYS. */
export function parseNvidiaLinkCell(cell: string): { kind: LinkKind; width: number } | undefined {
  const nv = /^NV(\d+)$/.exec(cell);
  if (nv) return { kind: 'nvlink', width: Number(nv[1]) };
  switch (cell) {
    case 'PIX':
      return { kind: 'pix', width: 0 };
    case 'PXB':
      return { kind: 'pxb', width: 0 };
    case 'PHB':
      return { kind: 'phb', width: 0 };
    case 'NODE':
      return { kind: 'node', width: 0 };
    case 'SYS':
    case 'SOC':
      return { kind: 'sys', width: 0 };
    default:
      return undefined;
  }
}

const GPU_NAME = /^GPU(\d+)$/;

/** Parses `nvidia-smi topo -m`. Throws FabricError DISCOVERY_FAILED when no GPU matrix is found. */
export function parseNvidiaTopo(text: string): NvidiaTopology {
  const lines = splitLines(stripAnsi(text));
  const headerAt = lines.findIndex((l) => l.split(/\s+/).includes('GPU0'));
  if (headerAt < 0) throw unreadable(TOOL, 'no matrix header with a GPU0 column');
  const headerTokens = lines[headerAt]!.trim().split(/\s+/);
  // Device columns (GPUs, NICs, mlx5_N) are single words; they end where `CPU Affinity` begins.
  const cpuAt = headerTokens.findIndex((t, i) => t === 'CPU' && headerTokens[i + 1] === 'Affinity');
  const deviceColumns = cpuAt >= 0 ? headerTokens.slice(0, cpuAt) : headerTokens;
  const hasAffinity = cpuAt >= 0;
  const hasNumaAffinity = headerTokens.some((t, i) => t === 'NUMA' && headerTokens[i + 1] === 'Affinity');
  const gpuColumn = new Map<number, number>(); // GPU index → position among device columns
  deviceColumns.forEach((name, col) => {
    const m = GPU_NAME.exec(name);
    if (m) gpuColumn.set(Number(m[1]), col);
  });
  const gpuCount = gpuColumn.size;
  for (let i = 0; i < gpuCount; i++) if (!gpuColumn.has(i)) throw unreadable(TOOL, `header has no GPU${i} column`);

  const cells = new Map<number, string[]>(); // GPU index → its row's device cells
  const numaByGpu = new Map<number, number>();
  for (const line of lines.slice(headerAt + 1)) {
    const tokens = line.trim().split(/\s+/);
    const m = GPU_NAME.exec(tokens[0] ?? '');
    if (!m) {
      if (/^Legend:/.test(line.trim())) break;
      continue;
    }
    const gpu = Number(m[1]);
    if (!gpuColumn.has(gpu)) throw unreadable(TOOL, `row GPU${gpu} has no column in the header`);
    const row = tokens.slice(1, 1 + deviceColumns.length);
    if (row.length < deviceColumns.length) throw unreadable(TOOL, `row GPU${gpu} is cut short (${row.length} of ${deviceColumns.length} cells)`);
    cells.set(gpu, row);
    // After the device cells: CPU Affinity, NUMA Affinity, GPU NUMA ID. An empty affinity leaves
    // no token behind, so only a plain integer in the NUMA position counts.
    if (hasAffinity && hasNumaAffinity) {
      const numa = tokens[1 + deviceColumns.length + 1];
      if (numa !== undefined && /^\d+$/.test(numa)) numaByGpu.set(gpu, Number(numa));
    }
  }
  if (cells.size < gpuCount) throw unreadable(TOOL, `matrix truncated: header lists ${gpuCount} GPUs, ${cells.size} GPU rows found`);

  const links: Link[] = [];
  for (let a = 0; a < gpuCount; a++) {
    const self = cells.get(a)![gpuColumn.get(a)!];
    if (self !== 'X') throw unreadable(TOOL, `GPU${a} diagonal cell is ${JSON.stringify(self)}, not X`);
    for (let b = a + 1; b < gpuCount; b++) {
      const cell = cells.get(a)![gpuColumn.get(b)!]!;
      const parsed = parseNvidiaLinkCell(cell);
      if (!parsed) throw unreadable(TOOL, `unknown connection ${JSON.stringify(cell)} between GPU${a} and GPU${b}`);
      links.push({ a, b, ...parsed });
    }
  }
  return { links, numaByGpu, gpuCount };
}
