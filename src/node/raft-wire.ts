/**
 * Raft messages on the wire (`/fabric/raft/1`): a batch of messages per frame, size-capped and
 * checked against a zod schema on arrival, so a malformed or oversized frame from a peer is
 * dropped with a logged reason before it can reach the consensus core.
 */
import { z } from 'zod';
import type { Message } from '../consensus/types.ts';

export const RAFT_PROTOCOL = '/fabric/raft/1';
/** Appends are batched by the core (maxSizePerMsg); snapshots are the large frames. */
export const MAX_RAFT_FRAME_BYTES = 64 * 1024 * 1024;
const MAX_ID = 128;

const Bytes = z.instanceof(Uint8Array);
const NodeIdSchema = z.string().min(1).max(MAX_ID);
const Index = z.number().int().min(0);

const EntrySchema = z.object({
  term: Index,
  index: Index,
  type: z.enum(['normal', 'conf-change']),
  data: Bytes,
});

const ConfStateSchema = z.object({
  voters: z.array(NodeIdSchema).max(64),
  learners: z.array(NodeIdSchema).max(256),
});

const SnapshotSchema = z.object({
  metadata: z.object({ index: Index, term: Index, confState: ConfStateSchema }),
  data: Bytes,
});

export const RaftMessageSchema = z.object({
  type: z.enum([
    'app', 'app-resp', 'vote', 'vote-resp', 'pre-vote', 'pre-vote-resp', 'heartbeat', 'heartbeat-resp',
    'snap', 'timeout-now', 'read-index', 'read-index-resp', 'transfer-leader', 'prop',
  ]),
  from: NodeIdSchema,
  to: NodeIdSchema,
  term: Index,
  logTerm: Index,
  index: Index,
  entries: z.array(EntrySchema).max(100_000),
  commit: Index,
  reject: z.boolean(),
  rejectHint: Index,
  snapshot: SnapshotSchema.optional(),
  context: Bytes.optional(),
});

export const RaftFrameSchema = z.object({ msgs: z.array(RaftMessageSchema).min(1).max(10_000) });

/**
 * Checks that a batch from `sender` only carries messages from that sender to this node:
 * a peer may not speak for another peer or address someone else.
 */
export function acceptableBatch(msgs: Message[], sender: string, self: string): { ok: true } | { ok: false; reason: string } {
  for (const m of msgs) {
    if (m.from !== sender) return { ok: false, reason: `message claims to be from ${m.from} but came from ${sender}` };
    if (m.to !== self) return { ok: false, reason: `message addressed to ${m.to}, not to this node` };
  }
  return { ok: true };
}
