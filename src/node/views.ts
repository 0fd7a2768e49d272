/** Shapes membership entries into the API's NodeView. */
import type { NodeView } from '../api/schemas.ts';
import type { MembershipEntry } from '../gossip/membership.ts';

export function nodeView(e: MembershipEntry, selfId: string, now: number): NodeView {
  const s = e.state;
  const labels: Record<string, string> = { ...(s?.labels.extra ?? {}) };
  if (s?.labels.zone !== undefined) labels['zone'] = s.labels.zone;
  if (s?.labels.region !== undefined) labels['region'] = s.labels.region;
  if (s?.labels.cloud !== undefined) labels['cloud'] = s.labels.cloud;
  if (s !== undefined) labels['spot'] = String(s.labels.spot);
  return {
    peerId: e.peerId,
    self: e.peerId === selfId,
    state: e.status,
    zone: s?.labels.zone ?? null,
    region: s?.labels.region ?? null,
    cloud: s?.labels.cloud ?? null,
    spot: s?.labels.spot ?? false,
    pricePerGpuHour: s?.labels.pricePerGpuHour ?? null,
    labels,
    addrs: s?.addrs ?? [],
    host: s?.inventory.host ?? null,
    devices: s?.inventory.devices ?? [],
    links: s?.inventory.links ?? [],
    warnings: s?.inventory.warnings ?? [],
    allocatedDevices: s?.load.allocatedDevices ?? [],
    incarnation: s?.incarnation ?? 0,
    seq: s?.seq ?? 0,
    lastHeardAgoMs: e.peerId === selfId ? 0 : Math.max(0, Math.round(now - e.lastHeardMs)),
    updatedAtMs: s?.updatedAtMs ?? null,
  };
}
