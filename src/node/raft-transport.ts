/**
 * Raft messages between peers over libp2p (`/fabric/raft/1`).
 *
 * Outbound: one long-lived stream per peer, opened on first use and re-opened after a failure
 * (with a short back-off). Every `send()` call (one per Ready) queues that Ready's messages per
 * peer; a per-peer writer turns whatever is queued into one length-prefixed msgpack frame
 * `{msgs}` and writes it without waiting for any reply: answers come back on the peer's own
 * outbound stream to us, so appends are pipelined. The writer waits for the stream's 'drain'
 * event when libp2p says its buffer is full (lpStream's write does that, see STACK.md), and the
 * queue is capped: on overflow the oldest replaceable message (append, heartbeat, their
 * answers) is dropped, because Raft retransmits those anyway; votes and snapshots go last.
 * A failed dial or write drops what was queued and tells the core (`onUnreachable`) so the
 * leader goes back to probing that follower instead of streaming into a void.
 *
 * Inbound: each peer's stream is read frame by frame. A frame that is too large, is not
 * msgpack, fails the schema, speaks for another peer or addresses another node, carries a
 * local-only `transfer-leader`, or comes from a peer the driver does not accept (not a member)
 * is dropped with a rate-limited warning and its stream is aborted; nothing is thrown, so a
 * hostile or confused peer can never take the daemon down. Valid batches go to `deliver`.
 */
import type { Libp2p, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import { FabricError, errorMessage, isFabricError, type Logger } from '../core/index.ts';
import type { Message, MessageType, NodeId } from '../consensus/types.ts';
import { MAX_RAFT_FRAME_BYTES, RAFT_PROTOCOL, RaftFrameSchema, acceptableBatch } from './raft-wire.ts';
import { decodeFrame, encodeFrame } from './wire.ts';

export interface RaftTransportOptions {
  host: Libp2p;
  /** This node's id: the host's peer id string. */
  self: NodeId;
  log: Logger;
  /** A validated batch from `from`, every message addressed to this node. */
  deliver(from: NodeId, msgs: Message[]): void;
  /** Whether `peer` may talk raft to this node now (checked for every inbound frame). */
  acceptFrom(peer: NodeId): boolean;
  /** Sending to `peer` failed (or was dropped on overflow): messages to it were lost. */
  onUnreachable(peer: NodeId): void;
  /** A `snap` message to `peer` was written to its stream (ok) or lost (failed). */
  onSnapshotSent(peer: NodeId, ok: boolean): void;
  /** Messages queued per peer before the oldest replaceable one is dropped. */
  maxQueuedMessages?: number;
  dialTimeoutMs?: number;
  /** A write that cannot finish this long (the peer stopped reading) breaks the stream. */
  writeTimeoutMs?: number;
}

export interface PeerLinkStats {
  peer: NodeId;
  connected: boolean;
  queued: number;
  framesSent: number;
  dropped: number;
}

/** Raft retransmits these (next heartbeat, next probe), so they are the first to go on overflow. */
const REPLACEABLE: ReadonlySet<MessageType> = new Set(['app', 'app-resp', 'heartbeat', 'heartbeat-resp', 'read-index', 'read-index-resp']);
/** A frame grows up to this many bytes of payload (a larger single message goes alone). */
const FRAME_BUDGET_BYTES = 4 * 1024 * 1024;
/** The frame schema's limit. */
const MAX_MSGS_PER_FRAME = 10_000;
const BACKOFF_MIN_MS = 25;
const BACKOFF_MAX_MS = 1_000;
const WARN_EVERY_MS = 10_000;

interface PeerLink {
  readonly peer: NodeId;
  queue: Message[];
  stream: Stream | undefined;
  lp: LengthPrefixedStream<Stream> | undefined;
  writing: boolean;
  /** No dial before this time (ms, performance.now) after a failure. */
  retryAt: number;
  backoffMs: number;
  framesSent: number;
  dropped: number;
}

export class RaftTransport {
  readonly #opts: RaftTransportOptions;
  readonly #log: Logger;
  readonly #links = new Map<NodeId, PeerLink>();
  readonly #inbound = new Set<Stream>();
  readonly #warnings: RateLimitedWarnings;
  readonly #maxQueued: number;
  readonly #dialTimeoutMs: number;
  readonly #writeTimeoutMs: number;
  readonly #stopping = new AbortController();
  #started = false;

  constructor(opts: RaftTransportOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#warnings = new RateLimitedWarnings(opts.log, WARN_EVERY_MS);
    this.#maxQueued = opts.maxQueuedMessages ?? 4_096;
    this.#dialTimeoutMs = opts.dialTimeoutMs ?? 2_000;
    this.#writeTimeoutMs = opts.writeTimeoutMs ?? 5_000;
  }

  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    await this.#opts.host.handle(
      RAFT_PROTOCOL,
      (stream, connection) => this.#serve(stream, connection.remotePeer.toString()),
      // A peer needs one stream; a few more cover re-opens racing the old stream's close.
      { maxInboundStreams: 8, runOnLimitedConnection: false },
    );
  }

  /** Queues messages (one Ready's worth) for their peers; never blocks, never throws. */
  send(msgs: readonly Message[]): void {
    if (this.#stopping.signal.aborted) return;
    const byPeer = new Map<NodeId, Message[]>();
    for (const m of msgs) {
      // etcd keeps transfer-leader local: its `from` is the transferee, not the sender.
      if (m.type === 'transfer-leader' || m.to === this.#opts.self) continue;
      let list = byPeer.get(m.to);
      if (list === undefined) byPeer.set(m.to, (list = []));
      list.push(m);
    }
    for (const [peer, list] of byPeer) {
      const link = this.#link(peer);
      for (const m of list) link.queue.push(m);
      this.#trim(link);
      void this.#pump(link);
    }
  }

  stats(): PeerLinkStats[] {
    return [...this.#links.values()].map((l) => ({
      peer: l.peer,
      connected: l.stream !== undefined,
      queued: l.queue.length,
      framesSent: l.framesSent,
      dropped: l.dropped,
    }));
  }

  /** Stops serving and sending; open streams are aborted. The host itself is left running. */
  async stop(): Promise<void> {
    if (this.#stopping.signal.aborted) return;
    this.#stopping.abort();
    if (this.#started) {
      try {
        await this.#opts.host.unhandle(RAFT_PROTOCOL);
      } catch (err) {
        this.#log.debug({ err: errorMessage(err) }, 'unhandle raft protocol failed');
      }
    }
    for (const link of this.#links.values()) {
      link.queue = [];
      this.#closeLink(link, 'transport stopped');
    }
    for (const stream of this.#inbound) stream.abort(new Error('transport stopped'));
    this.#inbound.clear();
  }

  // ---- outbound ----------------------------------------------------------------------------

  #link(peer: NodeId): PeerLink {
    let link = this.#links.get(peer);
    if (link === undefined) {
      link = { peer, queue: [], stream: undefined, lp: undefined, writing: false, retryAt: 0, backoffMs: BACKOFF_MIN_MS, framesSent: 0, dropped: 0 };
      this.#links.set(peer, link);
    }
    return link;
  }

  /** Caps the queue: drops the oldest replaceable messages first, then the oldest of any kind. */
  #trim(link: PeerLink): void {
    const excess = link.queue.length - this.#maxQueued;
    if (excess <= 0) return;
    const dropped: Message[] = [];
    const kept: Message[] = [];
    for (const m of link.queue) {
      if (dropped.length < excess && REPLACEABLE.has(m.type)) dropped.push(m);
      else kept.push(m);
    }
    while (dropped.length < excess) dropped.push(kept.shift()!);
    link.queue = kept;
    this.#lost(link, dropped, 'send queue full');
  }

  async #pump(link: PeerLink): Promise<void> {
    if (link.writing) return;
    link.writing = true;
    try {
      while (link.queue.length > 0 && !this.#stopping.signal.aborted) {
        if (link.lp === undefined && !(await this.#connect(link))) continue;
        const batch = takeFrame(link);
        const lp = link.lp!;
        let frame: Uint8Array;
        try {
          frame = encodeFrame({ msgs: batch });
        } catch (err) {
          this.#lost(link, batch, `cannot encode: ${errorMessage(err)}`);
          continue;
        }
        if (frame.byteLength > MAX_RAFT_FRAME_BYTES) {
          this.#warnings.warn(`oversized:${link.peer}`, { peer: link.peer, bytes: frame.byteLength }, 'raft frame over the size limit not sent');
          this.#lost(link, batch, 'frame too large');
          continue;
        }
        try {
          // Waits for 'drain' when the stream's buffer is full: the backpressure point.
          await lp.write(frame, { signal: AbortSignal.any([this.#stopping.signal, AbortSignal.timeout(this.#writeTimeoutMs)]) });
          link.framesSent++;
          link.backoffMs = BACKOFF_MIN_MS;
          for (const m of batch) if (m.type === 'snap') this.#opts.onSnapshotSent(link.peer, true);
        } catch (err) {
          this.#log.debug({ peer: link.peer, err: errorMessage(err) }, 'raft stream write failed');
          this.#closeLink(link, 'write failed');
          this.#fail(link, batch);
        }
      }
    } finally {
      link.writing = false;
    }
  }

  /** Opens the peer's stream, after the back-off; false (queue dropped) when that fails. */
  async #connect(link: PeerLink): Promise<boolean> {
    const wait = link.retryAt - performance.now();
    if (wait > 0) await sleep(wait, this.#stopping.signal);
    if (this.#stopping.signal.aborted) return false;
    try {
      const signal = AbortSignal.any([this.#stopping.signal, AbortSignal.timeout(this.#dialTimeoutMs)]);
      const stream = await this.#opts.host.dialProtocol(peerIdFromString(link.peer), RAFT_PROTOCOL, { signal });
      link.stream = stream;
      link.lp = lpStream(stream, { maxDataLength: MAX_RAFT_FRAME_BYTES });
      // We never read this stream; its close (peer gone, or it refused us) means: re-open.
      stream.addEventListener('close', () => {
        if (link.stream === stream) {
          link.stream = undefined;
          link.lp = undefined;
        }
      });
      return true;
    } catch (err) {
      this.#log.debug({ peer: link.peer, err: errorMessage(err) }, 'raft dial failed');
      const batch = link.queue;
      link.queue = [];
      this.#fail(link, batch);
      return false;
    }
  }

  #fail(link: PeerLink, lost: Message[]): void {
    link.retryAt = performance.now() + link.backoffMs;
    link.backoffMs = Math.min(link.backoffMs * 2, BACKOFF_MAX_MS);
    this.#lost(link, lost, 'peer unreachable');
  }

  #lost(link: PeerLink, lost: readonly Message[], why: string): void {
    if (lost.length === 0) return;
    link.dropped += lost.length;
    this.#log.debug({ peer: link.peer, count: lost.length, why }, 'raft messages dropped');
    for (const m of lost) if (m.type === 'snap') this.#opts.onSnapshotSent(link.peer, false);
    this.#opts.onUnreachable(link.peer);
  }

  #closeLink(link: PeerLink, reason: string): void {
    const stream = link.stream;
    link.stream = undefined;
    link.lp = undefined;
    if (stream !== undefined) stream.abort(new Error(reason));
  }

  // ---- inbound -----------------------------------------------------------------------------

  async #serve(stream: Stream, peer: NodeId): Promise<void> {
    const { self, deliver, acceptFrom } = this.#opts;
    this.#inbound.add(stream);
    // The read buffer must hold a whole frame (the default is 4 MiB; snapshots can be larger).
    const lp = lpStream(stream, { maxDataLength: MAX_RAFT_FRAME_BYTES, maxBufferSize: MAX_RAFT_FRAME_BYTES + 16 });
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await lp.read({ signal: this.#stopping.signal });
        } catch (err) {
          if (stream.remoteWriteStatus !== 'writable' && !isOversize(err)) return; // the peer closed or went away
          throw new FabricError('BAD_FRAME', `raft frame: ${errorMessage(err)}`);
        }
        const frame = decodeFrame(chunk.subarray(), RaftFrameSchema, 'raft frame');
        const msgs = frame.msgs as Message[];
        const verdict = acceptableBatch(msgs, peer, self);
        if (!verdict.ok) throw new FabricError('BAD_FRAME', verdict.reason);
        if (msgs.some((m) => m.type === 'transfer-leader')) throw new FabricError('BAD_FRAME', 'transfer-leader is local-only, never sent between peers');
        if (!acceptFrom(peer)) throw new FabricError('UNAUTHORIZED', 'not a member of this raft group');
        deliver(peer, msgs);
      }
    } catch (err) {
      if (this.#stopping.signal.aborted) return;
      const code = isFabricError(err) ? err.code : 'STREAM';
      if (code === 'BAD_FRAME' || code === 'UNAUTHORIZED') {
        this.#warnings.warn(`${code}:${peer}`, { peer, code, err: errorMessage(err) }, 'raft frame dropped, stream closed');
      } else {
        this.#log.debug({ peer, err: errorMessage(err) }, 'raft stream ended with an error');
      }
      stream.abort(new Error(errorMessage(err)));
    } finally {
      this.#inbound.delete(stream);
      if (stream.status === 'open') {
        try {
          await stream.close();
        } catch {
          // close() with unsent data can reject with a non-Error event object (STACK.md)
          stream.abort(new Error('close failed'));
        }
      }
    }
  }
}

/** Takes a frame's worth off the front of the queue: at least one message. */
function takeFrame(link: PeerLink): Message[] {
  let bytes = 0;
  let n = 0;
  while (n < link.queue.length && n < MAX_MSGS_PER_FRAME) {
    const size = messageBytes(link.queue[n]!);
    if (n > 0 && bytes + size > FRAME_BUDGET_BYTES) break;
    bytes += size;
    n++;
  }
  return link.queue.splice(0, n);
}

function messageBytes(m: Message): number {
  let bytes = 96;
  for (const e of m.entries) bytes += e.data.byteLength + 24;
  if (m.snapshot !== undefined) bytes += m.snapshot.data.byteLength;
  if (m.context !== undefined) bytes += m.context.byteLength;
  return bytes;
}

function isOversize(err: unknown): boolean {
  const name = err instanceof Error ? err.name : '';
  return name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError' || name === 'StreamBufferError';
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * At most one warning per key (peer and reason) per window, with the count of those held back:
 * a peer that floods bad frames cannot flood the log as well.
 */
export class RateLimitedWarnings {
  readonly #log: Logger;
  readonly #windowMs: number;
  readonly #last = new Map<string, { at: number; suppressed: number }>();

  constructor(log: Logger, windowMs: number) {
    this.#log = log;
    this.#windowMs = windowMs;
  }

  warn(key: string, fields: Record<string, unknown>, msg: string): void {
    const now = performance.now();
    const last = this.#last.get(key);
    if (last !== undefined && now - last.at < this.#windowMs) {
      last.suppressed++;
      return;
    }
    const suppressed = last?.suppressed ?? 0;
    this.#last.set(key, { at: now, suppressed: 0 });
    if (this.#last.size > 1_024) this.#last.clear(); // keys are per peer; bound them anyway
    this.#log.warn(suppressed > 0 ? { ...fields, suppressed } : fields, msg);
  }
}
