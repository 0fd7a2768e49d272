/** The HTTP API's contract: response and request shapes shared by the daemon, the client and (later) the UI. */
import { z } from 'zod';
import { DeviceSchema, HostSchema, LinkSchema } from '../devices/model.ts';
import { LabelsSchema } from '../gossip/state.ts';

export const PeerStatusSchema = z.enum(['alive', 'suspect', 'dead']);
export type PeerStatus = z.infer<typeof PeerStatusSchema>;

export const NodeViewSchema = z.object({
  peerId: z.string(),
  self: z.boolean(),
  state: PeerStatusSchema,
  zone: z.string().nullable(),
  region: z.string().nullable(),
  cloud: z.string().nullable(),
  spot: z.boolean(),
  pricePerGpuHour: z.number().nullable(),
  /** Every label as key → value, the well-known ones (zone, region, cloud, spot) included. */
  labels: z.record(z.string(), z.string()),
  addrs: z.array(z.string()),
  host: HostSchema.nullable(),
  devices: z.array(DeviceSchema),
  links: z.array(LinkSchema),
  warnings: z.array(z.string()),
  allocatedDevices: z.array(z.string()),
  incarnation: z.number(),
  seq: z.number(),
  /** How long ago this daemon last heard from the peer (ms); 0 for itself. */
  lastHeardAgoMs: z.number(),
  /** The peer's own wall-clock time of its latest state version; null until its state arrived. */
  updatedAtMs: z.number().nullable(),
});
export type NodeView = z.infer<typeof NodeViewSchema>;

export const NodesResponseSchema = z.object({ nodes: z.array(NodeViewSchema) });

export const StatusResponseSchema = z.object({
  peerId: z.string(),
  fabricId: z.string(),
  dataDir: z.string(),
  addrs: z.array(z.string()),
  apiUrl: z.string(),
  version: z.string(),
  incarnation: z.number(),
  uptimeMs: z.number(),
  peers: z.object({ alive: z.number(), suspect: z.number(), dead: z.number(), connected: z.number() }),
  devices: z.number(),
  warnings: z.array(z.string()),
  gossip: z.object({ droppedFrames: z.number(), suspicions: z.number(), falseSuspicions: z.number() }),
});
export type StatusResponse = z.infer<typeof StatusResponseSchema>;

export const TokenResponseSchema = z.object({ token: z.string() });
export type TokenResponse = z.infer<typeof TokenResponseSchema>;

export const ErrorResponseSchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) });
export type ErrorResponse = z.infer<typeof ErrorResponseSchema>;

export const LabelsChangeSchema = z.object({
  set: LabelsSchema.default({}),
  remove: z.array(z.string().max(63)).max(64).default([]),
});
export type LabelsChange = z.infer<typeof LabelsChangeSchema>;

export const NodeResponseSchema = z.object({ node: NodeViewSchema });
