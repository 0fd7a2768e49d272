/**
 * Linearizable reads by read index (Raft thesis §6.4, etcd's ReadOnlySafe): the leader notes
 * its commit index when a read arrives, confirms it is still the leader by a heartbeat round
 * that carries the read's context, and once a quorum has answered, the read may be served as
 * soon as the state machine has applied that index. No clock is involved, so clock drift
 * cannot break it.
 */
import type { Message, NodeId } from './types.ts';
import { bytesKey } from './util.ts';

export interface PendingRead {
  /** The leader's commit index when the read arrived. */
  index: number;
  /** The read-index request (local, or forwarded by a follower). */
  request: Message;
  acks: Set<NodeId>;
}

export class ReadOnly {
  #pending = new Map<string, PendingRead>();
  /** Contexts in arrival order: a quorum for one confirms every read queued before it. */
  #queue: string[] = [];

  /** Queues a read; a second read with the same context joins the first. */
  add(index: number, request: Message): void {
    const key = bytesKey(request.context);
    if (this.#pending.has(key)) return;
    this.#pending.set(key, { index, request, acks: new Set() });
    this.#queue.push(key);
  }

  /** Records that `from` answered the heartbeat for `context`; the acks so far, if it is pending. */
  recvAck(from: NodeId, context: Uint8Array | undefined): Set<NodeId> | undefined {
    const read = this.#pending.get(bytesKey(context));
    if (read === undefined) return undefined;
    read.acks.add(from);
    return read.acks;
  }

  /** Removes and returns the reads up to and including the one with `context`, oldest first. */
  advance(context: Uint8Array | undefined): PendingRead[] {
    const key = bytesKey(context);
    const at = this.#queue.indexOf(key);
    if (at < 0) return [];
    const done = this.#queue.splice(0, at + 1);
    const reads: PendingRead[] = [];
    for (const k of done) {
      const read = this.#pending.get(k);
      this.#pending.delete(k);
      if (read !== undefined) reads.push(read);
    }
    return reads;
  }

  /** The context of the newest pending read: heartbeats carry it so that answers confirm it. */
  lastPendingContext(): Uint8Array | undefined {
    const key = this.#queue[this.#queue.length - 1];
    return key === undefined ? undefined : this.#pending.get(key)?.request.context;
  }

  get size(): number {
    return this.#queue.length;
  }
}
