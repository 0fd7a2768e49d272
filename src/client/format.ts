/** Human output for the CLI: tables, GPU summaries, ages. */
import type { Device, Link } from '../devices/model.ts';
import type { NodeView } from '../api/schemas.ts';

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function shortPeerId(id: string): string {
  return id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id;
}

export function formatAge(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m`;
  return `${Math.floor(ms / 3_600_000)}h`;
}

function shortModel(d: Device): string {
  const name = d.model.replace(/^(NVIDIA|AMD)\s+/i, '').trim() || d.model;
  return /\d+\s*GB/i.test(name) ? name : `${name} ${Math.round(d.memoryMiB / 1024)}GB`;
}

/** The fastest interconnect most pairs share, e.g. `NV18`, `XGMI`, `PIX`. */
export function linkSummary(links: Link[]): string {
  if (links.length === 0) return '';
  const nv = links.filter((l) => l.kind === 'nvlink');
  if (nv.length > 0) {
    const widths = new Map<number, number>();
    for (const l of nv) widths.set(l.width, (widths.get(l.width) ?? 0) + 1);
    const [width] = [...widths.entries()].sort((a, b) => b[1] - a[1] || b[0] - a[0])[0]!;
    return nv.length === links.length ? `NV${width}` : `NV${width} partial`;
  }
  if (links.some((l) => l.kind === 'xgmi')) return 'XGMI';
  const order = ['pix', 'pxb', 'phb', 'node', 'sys'];
  const best = order.find((k) => links.some((l) => l.kind === k));
  return best ? `PCIe ${best.toUpperCase()}` : '';
}

/** `8×H100 80GB HBM3 NV18`, `1×H100 80GB HBM3 MIG:4`, `-` for a CPU-only host. */
export function gpuSummary(devices: Device[], links: Link[]): string {
  if (devices.length === 0) return '-';
  const groups = new Map<string, number>();
  for (const d of devices) groups.set(shortModel(d), (groups.get(shortModel(d)) ?? 0) + 1);
  const parts = [...groups.entries()].map(([m, n]) => `${n}×${m}`);
  const mig = devices.reduce((sum, d) => sum + d.migInstances.length, 0);
  if (mig > 0) parts.push(`MIG:${mig}`);
  const link = linkSummary(links);
  if (link) parts.push(link);
  return parts.join(' ');
}

export function freeTotal(n: NodeView): string {
  if (n.devices.length === 0) return '-';
  const allocated = new Set(n.allocatedDevices);
  const free = n.devices.filter((d) => !allocated.has(d.uuid) && !d.migInstances.some((m) => allocated.has(m.uuid))).length;
  return `${free}/${n.devices.length}`;
}

export function nodesTable(nodes: NodeView[]): string {
  const sorted = [...nodes].sort((a, b) => Number(b.self) - Number(a.self) || a.peerId.localeCompare(b.peerId));
  return table(
    ['PEER', 'STATE', 'ZONE', 'GPUS', 'FREE/TOTAL', 'UPDATED'],
    sorted.map((n) => [
      shortPeerId(n.peerId) + (n.self ? ' *' : ''),
      n.state,
      n.zone ?? '-',
      gpuSummary(n.devices, n.links),
      freeTotal(n),
      n.self ? 'self' : `${formatAge(n.lastHeardAgoMs)} ago`,
    ]),
  );
}
