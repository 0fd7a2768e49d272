/**
 * NodeState: what one daemon tells the fabric about itself. Versioned by (incarnation, seq):
 * incarnation grows on every daemon start (persisted), seq on every change within one run.
 * A receiver keeps the highest version it has seen for each peer.
 */
import { z } from 'zod';
import { InventorySchema } from '../devices/model.ts';

const LabelKey = z.string().min(1).max(63).regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*$/, 'label keys are letters, digits, . _ / -');
const LabelValue = z.string().max(255);

export const LabelsSchema = z.record(LabelKey, LabelValue).refine((l) => Object.keys(l).length <= 64, 'at most 64 labels');

export const NodeLabelsSchema = z.object({
  zone: z.string().max(63).optional(),
  region: z.string().max(63).optional(),
  cloud: z.string().max(63).optional(),
  pricePerGpuHour: z.number().min(0).max(1_000_000).optional(),
  spot: z.boolean(),
  /** Free-form `--label k=v` pairs. */
  extra: LabelsSchema,
});
export type NodeLabels = z.infer<typeof NodeLabelsSchema>;

export const LoadSchema = z.object({
  /** Device UUIDs (or MIG UUIDs) that allocations on this peer hold. */
  allocatedDevices: z.array(z.string().max(128)).max(512),
  /** Host CPU load average over one minute divided by cores, in percent. */
  cpuPct: z.number().min(0).max(100_000).optional(),
});
export type Load = z.infer<typeof LoadSchema>;

/**
 * What a Raft member (voter or learner) knows of the consensus group; plain members leave it
 * out. Peers that are not members find the leader through it: the highest term's leader wins.
 */
export const RaftHintSchema = z.object({
  role: z.enum(['leader', 'follower', 'candidate', 'pre-candidate']),
  voter: z.boolean(),
  term: z.number().int().min(0),
  leader: z.string().min(1).max(128).nullable(),
});
export type RaftHint = z.infer<typeof RaftHintSchema>;

export const NodeStateSchema = z.object({
  /** Format version of this record, so a newer daemon can still read an older one. */
  v: z.literal(1),
  peerId: z.string().min(1).max(128),
  fabricId: z.string().min(1).max(64),
  incarnation: z.number().int().min(0),
  seq: z.number().int().min(0),
  /** Multiaddrs the peer listens on (with /p2p/ suffix). */
  addrs: z.array(z.string().max(512)).max(32),
  apiVersion: z.string().max(32),
  labels: NodeLabelsSchema,
  inventory: InventorySchema,
  load: LoadSchema,
  raft: RaftHintSchema.optional(),
  /** The sender's wall clock when it made this version (ms since epoch), for display only. */
  updatedAtMs: z.number().int().min(0),
});
export type NodeState = z.infer<typeof NodeStateSchema>;

export type StateVersion = { incarnation: number; seq: number };

/** Orders versions: negative when a is older than b, 0 when equal, positive when newer. */
export function compareVersion(a: StateVersion, b: StateVersion): number {
  return a.incarnation !== b.incarnation ? a.incarnation - b.incarnation : a.seq - b.seq;
}
