/** What travels on the simulated network: Raft messages between nodes, and client RPCs. */
import type { Message } from '../../src/consensus/types.ts';
import type { KvOp } from './kv.ts';

export type ClientOp = KvOp | { kind: 'get'; key: string };

export interface ClientRequest {
  client: string;
  /** The request number, the idempotency id: the same on every retry. */
  seq: number;
  /** Which try this is; a redirect answers one try only. */
  attempt: number;
  op: ClientOp;
}

export type ClientAnswer =
  | { kind: 'write'; ok: boolean }
  | { kind: 'read'; value: string | null }
  /** Not served here (no leader, proposal refused): try `leader`, or another node. */
  | { kind: 'redirect'; leader: string | null };

export interface ClientResponse {
  client: string;
  seq: number;
  attempt: number;
  answer: ClientAnswer;
}

export type Wire =
  | { kind: 'raft'; message: Message }
  | { kind: 'request'; request: ClientRequest }
  | { kind: 'response'; response: ClientResponse };

/** A deep copy, as if serialized: entries and snapshots are not shared between nodes. */
export function copyWire(w: Wire): Wire {
  return structuredClone(w);
}
