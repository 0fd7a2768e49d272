/**
 * `/fabric/ckpt/1`: checkpoint chunks between peers.
 *
 * Every stream carries one request and its answer, as length-prefixed msgpack frames (the
 * format of wire.ts), each frame size-checked from its length prefix before it is buffered
 * whole and zod-checked when decoded. A bad frame, an unknown chunk, bytes that do not match
 * their id, a peer that sends past its window: the stream is aborted with a logged reason and
 * nothing is stored. Nothing a peer sends can throw out of a handler.
 *
 *   have      {t:'have', ids}                 → {t:'have', bits, freeBytes}     which chunks it holds
 *   offer     {t:'offer', manifest}           → {t:'need', bits} | refused      store the manifest, say which chunks are lacking
 *   push      {t:'push', manifestId} chunk* end → stored* done | refused        chunks of an offered manifest
 *   fetch     {t:'fetch', ids}                → (chunk | miss)* end              chunks, verified on read
 *   manifest  {t:'manifest', manifestId}      → manifest | miss
 *   check     {t:'check', manifestId}         → {t:'check', hasManifest, missing}
 *   bulk      {t:'bulk'}                      → {t:'bulk', port, ticket, secret} | refused
 *
 * A chunk travels as a frame {t:'chunk', id, size} followed by exactly `size` raw bytes (not
 * msgpack): the size is checked (against the manifest or the request) before the bytes are
 * read, the bytes are hashed and written as the pieces they arrived in, never copied into one
 * buffer or through msgpack. Memory is bounded per stream (its window) and for all inbound
 * streams together (`inboundBufferBytes`).
 *
 * Replication (`replicate`): offer the manifest to every target at once, then read each chunk
 * some target lacks once from the local store (verified) and hand it to every target that lacks
 * it; each target is fed over `streamsPerPeer` parallel push streams. A push stream keeps at most
 * `windowBytes` unacknowledged; the receiver verifies every chunk's hash on arrival and
 * acknowledges chunks only once they are durable (written, fsynced, renamed), so a holder that
 * acknowledged a checkpoint really has it. Chunks a target already holds are never sent.
 *
 * Pushes and fetch batches run over a bulk channel (bulk-channel.ts: a direct socket with its own
 * AES-GCM records, opened with a ticket asked for by 'bulk') when both peers have one on and the
 * socket connects, else over a libp2p stream: the same requests and frames either way.
 *
 * Fetching (`fetchChunks`): ask every holder which chunks it has, spread the chunks over the
 * holders (planFetch), fetch from all of them in parallel, verify every chunk, and send what
 * failed (missing, corrupt, bytes not matching, holder unreachable) to the next holder.
 */
import { createHash } from 'node:crypto';
import type { Libp2p } from '@libp2p/interface';
import type { Multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import { z } from 'zod';
import {
  ChunkIdSchema,
  MAX_CHUNK_BYTES,
  MAX_MANIFEST_BYTES,
  ManifestIdSchema,
  decodeManifest,
  manifestChunks,
  manifestIdOf,
  planFetch,
  sha256Hex,
  type ChunkId,
  type ChunkRef,
  type Manifest,
  type ManifestId,
} from '../checkpoint/index.ts';
import { FabricError, errorMessage, isFabricError, type Logger } from '../core/index.ts';
import { BulkListener, SECRET_BYTES, TICKET_BYTES, dialBulk, streamChannel, type ByteChannel } from './bulk-channel.ts';
import type { ChunkStore } from './chunk-store.ts';
import { decodeFrame, encodeFrame } from './wire.ts';

export const CKPT_PROTOCOL = '/fabric/ckpt/1';

/** Ids per have/fetch frame. */
const MAX_IDS_PER_FRAME = 100_000;
/** A request frame: an offer carries a whole manifest. */
const MAX_REQUEST_FRAME = MAX_MANIFEST_BYTES + 64 * 1024;
/** A frame carrying one chunk. */
const MAX_CHUNK_FRAME = MAX_CHUNK_BYTES + 4 * 1024;
/** A reply frame other than a chunk (have bitmaps, acks). */
const MAX_REPLY_FRAME = 8 * 1024 * 1024;
/** The most unacknowledged push bytes a stream may have; a receiver aborts a pusher beyond it. */
export const MAX_PUSH_WINDOW = 64 * 1024 * 1024;
/** How long a bulk socket may take to connect and answer. */
const BULK_CONNECT_TIMEOUT_MS = 3_000;
/** After a peer's bulk channel failed, how long to use libp2p streams with it before trying again. */
const BULK_RETRY_AFTER_MS = 60_000;
/** One fetch request asks for at most this many bytes. */
const FETCH_BATCH_BYTES = 32 * 1024 * 1024;
const FETCH_BATCH_IDS = 4096;

// ---- frames --------------------------------------------------------------------------------

const Bytes = z.instanceof(Uint8Array);

const RequestSchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('have'), ids: z.array(ChunkIdSchema).max(MAX_IDS_PER_FRAME) }),
  z.strictObject({ t: z.literal('offer'), manifest: Bytes }),
  z.strictObject({ t: z.literal('push'), manifestId: ManifestIdSchema }),
  z.strictObject({ t: z.literal('fetch'), ids: z.array(ChunkIdSchema).min(1).max(FETCH_BATCH_IDS) }),
  z.strictObject({ t: z.literal('manifest'), manifestId: ManifestIdSchema }),
  z.strictObject({ t: z.literal('check'), manifestId: ManifestIdSchema }),
  z.strictObject({ t: z.literal('bulk') }),
]);
type Request = z.infer<typeof RequestSchema>;

const HaveReply = z.strictObject({ t: z.literal('have'), bits: Bytes, freeBytes: z.number().int().min(0).nullable() });
const Refused = z.strictObject({ t: z.literal('refused'), reason: z.string().max(1024) });
const OfferReply = z.discriminatedUnion('t', [z.strictObject({ t: z.literal('need'), bits: Bytes }), Refused]);
const ChunkFrame = z.strictObject({ t: z.literal('chunk'), id: ChunkIdSchema, size: z.number().int().min(1).max(MAX_CHUNK_BYTES) });
const PushFrame = z.discriminatedUnion('t', [ChunkFrame, z.strictObject({ t: z.literal('end') })]);
const PushReply = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('stored'), ids: z.array(ChunkIdSchema).max(MAX_IDS_PER_FRAME) }),
  z.strictObject({ t: z.literal('done'), stored: z.number().int().min(0) }),
  Refused,
]);
const MissReason = z.enum(['missing', 'corrupt']);
const FetchReply = z.discriminatedUnion('t', [
  ChunkFrame,
  z.strictObject({ t: z.literal('miss'), id: ChunkIdSchema, reason: MissReason }),
  z.strictObject({ t: z.literal('end') }),
]);
const ManifestReply = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('manifest'), bytes: Bytes }),
  z.strictObject({ t: z.literal('miss'), reason: z.string().max(1024) }),
]);
const BulkReply = z.discriminatedUnion('t', [
  z.strictObject({
    t: z.literal('bulk'),
    port: z.number().int().min(1).max(65535),
    ticket: Bytes.refine((b) => b.length === TICKET_BYTES, 'ticket size'),
    secret: Bytes.refine((b) => b.length === SECRET_BYTES, 'secret size'),
  }),
  Refused,
]);
const CheckReply = z.strictObject({ t: z.literal('check'), hasManifest: z.boolean(), missing: z.number().int().min(0) });

/** The IP address of a multiaddr (/ip4 or /ip6), if it has one. */
function ipOf(addr: Multiaddr): string | undefined {
  return addr.getComponents().find((c) => c.name === 'ip4' || c.name === 'ip6')?.value;
}

function bitsOf(flags: readonly boolean[]): Uint8Array {
  const bits = new Uint8Array(Math.ceil(flags.length / 8));
  flags.forEach((f, i) => {
    if (f) bits[i >> 3]! |= 1 << (i & 7);
  });
  return bits;
}

function bitAt(bits: Uint8Array, i: number): boolean {
  return ((bits[i >> 3] ?? 0) & (1 << (i & 7))) !== 0;
}

// ---- framing with flow control -------------------------------------------------------------

/** Received bytes not yet taken as frames. */
class ByteQueue {
  #parts: Uint8Array[] = [];
  #head = 0;
  length = 0;

  append(b: Uint8Array): void {
    if (b.length === 0) return;
    this.#parts.push(b);
    this.length += b.length;
  }

  byteAt(i: number): number {
    let idx = i + this.#head;
    for (const p of this.#parts) {
      if (idx < p.length) return p[idx]!;
      idx -= p.length;
    }
    return -1;
  }

  /** Removes the next `n` bytes (n <= length) as the pieces they arrived in (views, no copy). */
  takeParts(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const p = this.#parts[0]!;
      const k = Math.min(p.length - this.#head, left);
      out.push(p.subarray(this.#head, this.#head + k));
      this.#head += k;
      left -= k;
      if (this.#head === p.length) {
        this.#parts.shift();
        this.#head = 0;
      }
    }
    this.length -= n;
    return out;
  }

  /** Removes and returns the next `n` bytes (n <= length), copying only when they span parts. */
  take(n: number): Uint8Array {
    const first = this.#parts[0]!;
    const avail = first.length - this.#head;
    let out: Uint8Array;
    if (n <= avail) {
      out = first.subarray(this.#head, this.#head + n);
      this.#head += n;
      if (this.#head === first.length) {
        this.#parts.shift();
        this.#head = 0;
      }
    } else {
      out = new Uint8Array(n);
      let off = 0;
      while (off < n) {
        const p = this.#parts[0]!;
        const k = Math.min(p.length - this.#head, n - off);
        out.set(p.subarray(this.#head, this.#head + k), off);
        off += k;
        this.#head += k;
        if (this.#head === p.length) {
          this.#parts.shift();
          this.#head = 0;
        }
      }
    }
    this.length -= n;
    return out;
  }
}

function varint(n: number): Uint8Array {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Uint8Array.from(out);
}

/**
 * Bytes held for inbound streams across the whole service (unparsed, and parsed but not yet
 * stored): one member opening many streams cannot make a holder buffer more than this.
 */
class BufferBudget {
  readonly max: number;
  used = 0;

  constructor(max: number) {
    this.max = max;
  }

  /** Accounts `n` more bytes; false when that goes over the budget (they are accounted anyway). */
  take(n: number): boolean {
    this.used += n;
    return this.used <= this.max;
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

/**
 * A byte channel (a libp2p stream or a bulk socket) as frames, with its own read buffer (no
 * 4 MiB cap of libp2p's byteStream, and the bound it does have is the protocol's window) and
 * writes that wait for 'drain'.
 */
class FrameConn {
  readonly remotePeer: string;
  readonly #channel: ByteChannel;
  readonly #buf = new ByteQueue();
  readonly #maxBuffered: number;
  readonly #timeoutMs: number;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #drainWake: (() => void) | undefined;
  readonly #budget: BufferBudget | undefined;

  constructor(channel: ByteChannel, remotePeer: string, maxBuffered: number, timeoutMs: number, budget?: BufferBudget) {
    this.#channel = channel;
    this.remotePeer = remotePeer;
    this.#maxBuffered = maxBuffered;
    this.#timeoutMs = timeoutMs;
    this.#budget = budget;
    channel.listen({
      data: (data) => {
        if (this.#error !== undefined) return;
        this.#buf.append(data);
        const withinBudget = this.#budget?.take(data.length) ?? true;
        if (this.#buf.length > this.#maxBuffered) {
          this.#fail(new FabricError('BAD_FRAME', `peer sent ${this.#buf.length} bytes ahead, over the ${this.#maxBuffered}-byte window`));
        } else if (!withinBudget) {
          this.#fail(new FabricError('BAD_FRAME', `inbound checkpoint buffers are full (${this.#budget!.max} bytes)`));
        }
        this.#notify();
      },
      end: () => {
        this.#ended = true;
        this.#notify();
      },
      close: (err) => {
        if (err !== undefined && this.#error === undefined) this.#error = err;
        this.#ended = true;
        this.#notify();
        this.#drainWake?.();
      },
      drain: () => this.#drainWake?.(),
    });
  }

  get kind(): ByteChannel['kind'] {
    return this.#channel.kind;
  }

  /** Ends the stream with `err`; what it had buffered is dropped (and given back to the budget). */
  #fail(err: Error): void {
    if (this.#error === undefined) this.#error = err;
    this.#budget?.give(this.#buf.length);
    if (this.#buf.length > 0) this.#buf.takeParts(this.#buf.length);
    this.#channel.abort(err);
  }

  /** Gives back to the budget whatever is still buffered: call when done with the stream. */
  release(): void {
    this.#budget?.give(this.#buf.length);
    if (this.#buf.length > 0) this.#buf.takeParts(this.#buf.length);
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  /** The next frame's bytes if a whole frame is buffered; undefined when more bytes are needed. */
  #nextFrame(maxFrameBytes: number, what: string): Uint8Array | undefined {
    let len = 0;
    let mul = 1;
    for (let i = 0; ; i++) {
      if (i >= 5) throw new FabricError('BAD_FRAME', `${what}: frame length prefix too long`);
      const b = this.#buf.byteAt(i);
      if (b < 0) return undefined;
      len += (b & 0x7f) * mul;
      mul *= 128;
      if ((b & 0x80) === 0) {
        if (len > maxFrameBytes) throw new FabricError('BAD_FRAME', `${what}: frame of ${len} bytes is over the ${maxFrameBytes}-byte limit`);
        if (this.#buf.length < i + 1 + len) return undefined;
        this.#buf.take(i + 1);
        this.#budget?.give(i + 1 + len);
        return this.#buf.take(len);
      }
    }
  }

  /** Whether a whole frame is already buffered (reading it would not wait). */
  hasFrame(): boolean {
    let len = 0;
    let mul = 1;
    for (let i = 0; i < 5; i++) {
      const b = this.#buf.byteAt(i);
      if (b < 0) return false;
      len += (b & 0x7f) * mul;
      mul *= 128;
      if ((b & 0x80) === 0) return this.#buf.length >= i + 1 + len;
    }
    return true;
  }

  /** The next frame, or undefined when the remote closed cleanly between frames. */
  async readOrEnd<T>(schema: z.ZodType<T>, what: string, maxFrameBytes: number, signal?: AbortSignal): Promise<T | undefined> {
    for (;;) {
      const bytes = this.#nextFrame(maxFrameBytes, what);
      if (bytes !== undefined) return decodeFrame(bytes, schema, what);
      if (this.#error !== undefined) throw this.#error;
      if (this.#ended) {
        if (this.#buf.length === 0) return undefined;
        throw new FabricError('BAD_FRAME', `${what}: stream ended inside a frame`);
      }
      await this.#waitFor(
        (wake) => {
          this.#wake = wake;
        },
        signal,
        `${what}: no frame for ${this.#timeoutMs} ms`,
      );
    }
  }

  async read<T>(schema: z.ZodType<T>, what: string, maxFrameBytes: number, signal?: AbortSignal): Promise<T> {
    const v = await this.readOrEnd(schema, what, maxFrameBytes, signal);
    if (v === undefined) throw new FabricError('BAD_FRAME', `${what}: stream ended`);
    return v;
  }

  /** The `size` raw bytes that follow a chunk header, as the pieces they arrived in. */
  async readBody(size: number, what: string, signal?: AbortSignal): Promise<Uint8Array[]> {
    for (;;) {
      if (this.#buf.length >= size) {
        // the body stays accounted until the caller stores it and gives it back
        return this.#buf.takeParts(size);
      }
      if (this.#error !== undefined) throw this.#error;
      if (this.#ended) throw new FabricError('BAD_FRAME', `${what}: stream ended inside a chunk`);
      await this.#waitFor(
        (wake) => {
          this.#wake = wake;
        },
        signal,
        `${what}: no bytes for ${this.#timeoutMs} ms`,
      );
    }
  }

  /** A chunk: its header frame, then its bytes as they are. */
  async writeChunk(id: ChunkId, data: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.write({ t: 'chunk', id, size: data.length }, signal, data);
  }

  async write(value: unknown, signal?: AbortSignal, body?: Uint8Array): Promise<void> {
    if (this.#error !== undefined) throw this.#error;
    const payload = encodeFrame(value);
    this.#channel.send(varint(payload.length));
    let more = this.#channel.send(payload);
    if (body !== undefined) more = this.#channel.send(body) && more;
    if (!more) {
      await this.#waitFor(
        (wake) => {
          this.#drainWake = wake;
        },
        signal,
        `write to ${this.remotePeer}: not drained for ${this.#timeoutMs} ms`,
      );
      this.#drainWake = undefined;
      if (this.#error !== undefined) throw this.#error;
    }
  }

  /** Waits for a wake-up, the signal, or the timeout (which aborts the stream). */
  #waitFor(arm: (wake: () => void) => void, signal: AbortSignal | undefined, timeoutWhat: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new FabricError('ABORTED', 'aborted'));
        return;
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        done();
        reject(new FabricError('ABORTED', 'aborted'));
      };
      arm(() => {
        done();
        resolve();
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => {
        done();
        const err = new FabricError('TIMEOUT', timeoutWhat);
        this.abort(err.message);
        reject(err);
      }, this.#timeoutMs);
    });
  }

  async close(): Promise<void> {
    await this.#channel.close();
  }

  abort(reason: string): void {
    if (this.#error === undefined) this.#error = new FabricError('ABORTED', reason);
    this.#channel.abort(new Error(reason));
    this.#notify();
    this.#drainWake?.();
  }

  get budget(): BufferBudget | undefined {
    return this.#budget;
  }
}

// ---- bounded hand-off queues ---------------------------------------------------------------

interface QueuedChunk {
  id: ChunkId;
  data: Uint8Array;
}

function hashParts(parts: readonly Uint8Array[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** A FIFO bounded in bytes; `push` waits for room, `shift` for an item; `close` ends both. */
class ChunkQueue {
  readonly #items: QueuedChunk[] = [];
  readonly #maxBytes: number;
  #bytes = 0;
  #closed = false;
  #waiters: (() => void)[] = [];

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  get closed(): boolean {
    return this.#closed;
  }

  #wakeAll(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  async push(item: QueuedChunk): Promise<void> {
    while (!this.#closed && this.#bytes > 0 && this.#bytes + item.data.length > this.#maxBytes) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    if (this.#closed) return;
    this.#items.push(item);
    this.#bytes += item.data.length;
    this.#wakeAll();
  }

  async shift(): Promise<QueuedChunk | undefined> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        this.#bytes -= item.data.length;
        this.#wakeAll();
        return item;
      }
      if (this.#closed) return undefined;
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  /** No more items; `drop` also discards what is queued (the consumer failed). */
  close(drop = false): void {
    this.#closed = true;
    if (drop) {
      this.#items.length = 0;
      this.#bytes = 0;
    }
    this.#wakeAll();
  }
}

// ---- the service ---------------------------------------------------------------------------

export interface CkptTransferOptions {
  host: Libp2p;
  store: ChunkStore;
  log: Logger;
  /**
   * Whether to take an offered checkpoint from `peer`: undefined accepts, a string refuses with
   * that reason (the daemon checks the epoch and the job here).
   */
  admitOffer?: (peer: string, manifest: Manifest, manifestId: ManifestId) => string | undefined | Promise<string | undefined>;
  /** Free disk an accepted offer must leave (default 256 MiB). */
  reserveBytes?: number;
  /** Parallel push streams per target peer (default 2). */
  streamsPerPeer?: number;
  /** Unacknowledged bytes per push stream (default 32 MiB). */
  windowBytes?: number;
  /** Chunks read ahead per target (default 64 MiB). */
  queueBytes?: number;
  /** Parallel fetch streams per holder (default 2). */
  fetchStreamsPerHolder?: number;
  /** Inbound streams per connection (default 64). */
  maxInboundStreams?: number;
  /** A stream that gets no frame (or cannot write) for this long is aborted (default 30 s). */
  idleTimeoutMs?: number;
  /** Bytes all inbound streams together may hold in memory (default 512 MiB; an offer's manifest must fit). */
  inboundBufferBytes?: number;
  /**
   * Move chunk data (pushes, fetches) over bulk channels (bulk-channel.ts), listening on this
   * address and port (0: any free port). Undefined: everything goes over libp2p streams. A peer
   * whose bulk port cannot be reached is served over libp2p instead.
   */
  bulk?: { host: string; port: number };
}

export interface PeerProgress {
  peerId: string;
  /** Bytes of chunks this peer lacked when replication started. */
  neededBytes: number;
  sentBytes: number;
  /** Bytes the peer acknowledged as durable. */
  storedBytes: number;
}

export interface ReplicateProgress {
  manifestId: ManifestId;
  peers: PeerProgress[];
  neededBytes: number;
  sentBytes: number;
  storedBytes: number;
}

export interface PeerReplication extends PeerProgress {
  ok: boolean;
  /** Bytes of the checkpoint's distinct chunks the peer already held. */
  heldBytes: number;
  sentChunks: number;
  error?: string;
}

export interface ReplicateResult {
  manifestId: ManifestId;
  /** Bytes of the checkpoint's distinct chunks. */
  checkpointBytes: number;
  peers: PeerReplication[];
  /** Peers that hold the whole checkpoint now. */
  holders: string[];
}

export interface ReplicateOptions {
  signal?: AbortSignal;
  onProgress?: (p: ReplicateProgress) => void;
  streamsPerPeer?: number;
}

export interface FetchResult {
  fetchedChunks: number;
  fetchedBytes: number;
  /** Bytes fetched per holder. */
  perHolder: Record<string, number>;
  /** Chunks no holder could deliver. */
  failed: ChunkId[];
  /** Attempts that failed (holder, chunk, why) before a fallback delivered or gave up. */
  failures: { peerId: string; chunkId: ChunkId; reason: string }[];
}

export interface FetchOptions {
  signal?: AbortSignal;
  onProgress?: (p: { fetchedBytes: number; totalBytes: number }) => void;
  /** Skip the have? round and assume every holder has every chunk (a recorded full replica). */
  assumeHolders?: boolean;
}

export interface HaveAnswer {
  has: boolean[];
  freeBytes: number | null;
}

interface ManifestEntry {
  manifest: Manifest;
  chunks: Map<ChunkId, number>;
}

export class CkptTransfer {
  readonly #host: Libp2p;
  readonly #store: ChunkStore;
  readonly #log: Logger;
  readonly #opts: CkptTransferOptions;
  readonly #streamsPerPeer: number;
  readonly #windowBytes: number;
  readonly #queueBytes: number;
  readonly #timeoutMs: number;
  readonly #manifestCache = new Map<ManifestId, ManifestEntry>();
  readonly #inbound = new Set<FrameConn>();
  readonly #budget: BufferBudget;
  readonly #stopping = new AbortController();
  #started = false;
  #bulk: BulkListener | undefined;
  /** Channels this side opened for chunk data (pushes, fetch batches), by kind. */
  readonly #dataChannels = { bulk: 0, libp2p: 0 };
  /** Peers whose bulk channel failed, and until when we use libp2p streams with them instead. */
  readonly #bulkUnavailable = new Map<string, number>();

  constructor(opts: CkptTransferOptions) {
    this.#opts = opts;
    this.#host = opts.host;
    this.#store = opts.store;
    this.#log = opts.log.child({ module: 'ckpt-transfer' });
    this.#streamsPerPeer = Math.max(1, opts.streamsPerPeer ?? 2);
    this.#windowBytes = Math.min(MAX_PUSH_WINDOW, Math.max(MAX_CHUNK_FRAME, opts.windowBytes ?? 32 * 1024 * 1024));
    this.#queueBytes = Math.max(MAX_CHUNK_FRAME, opts.queueBytes ?? 64 * 1024 * 1024);
    this.#timeoutMs = opts.idleTimeoutMs ?? 30_000;
    this.#budget = new BufferBudget(Math.max(MAX_REPLY_FRAME, opts.inboundBufferBytes ?? 512 * 1024 * 1024));
  }

  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    await this.#host.handle(CKPT_PROTOCOL, (stream, connection) => this.#serve(streamChannel(stream), connection.remotePeer.toString()), {
      maxInboundStreams: this.#opts.maxInboundStreams ?? 64,
      runOnLimitedConnection: false,
    });
    if (this.#opts.bulk !== undefined) {
      const bulk = new BulkListener({
        ...this.#opts.bulk,
        log: this.#log,
        onChannel: (channel, peer) => void this.#serve(channel, peer),
      });
      await bulk.start();
      this.#bulk = bulk;
    }
  }

  /** How many channels this side opened for chunk data, by kind (bulk or libp2p). */
  dataChannels(): Readonly<Record<ByteChannel['kind'], number>> {
    return { ...this.#dataChannels };
  }

  /** The bulk listener's port, when bulk channels are on. */
  get bulkPort(): number | undefined {
    return this.#bulk?.port;
  }

  async stop(): Promise<void> {
    if (this.#stopping.signal.aborted) return;
    this.#stopping.abort();
    if (this.#started) {
      try {
        await this.#host.unhandle(CKPT_PROTOCOL);
      } catch (err) {
        this.#log.debug({ err: errorMessage(err) }, 'unhandle ckpt protocol failed');
      }
    }
    for (const c of this.#inbound) c.abort('transfer service stopped');
    await this.#bulk?.stop();
  }

  // ---- server side -------------------------------------------------------------------------

  async #serve(channel: ByteChannel, peer: string): Promise<void> {
    // The buffer bound: one request, or a push window plus the frame in progress.
    const conn = new FrameConn(channel, peer, Math.max(MAX_REQUEST_FRAME, MAX_PUSH_WINDOW + MAX_CHUNK_FRAME) + 64 * 1024, this.#timeoutMs, this.#budget);
    this.#inbound.add(conn);
    let what = 'request';
    try {
      const req = await conn.read(RequestSchema, 'ckpt request', MAX_REQUEST_FRAME, this.#stopping.signal);
      what = req.t;
      await this.#handle(conn, req);
      await conn.close();
    } catch (err) {
      const level = isFabricError(err, 'BAD_FRAME') ? 'warn' : 'debug';
      this.#log[level]({ peer, request: what, err: errorMessage(err) }, 'ckpt stream ended with an error');
      conn.abort(errorMessage(err));
    } finally {
      conn.release();
      this.#inbound.delete(conn);
    }
  }

  async #handle(conn: FrameConn, req: Request): Promise<void> {
    const signal = this.#stopping.signal;
    switch (req.t) {
      case 'have': {
        const has = req.ids.map((id) => this.#store.has(id));
        await conn.write({ t: 'have', bits: bitsOf(has), freeBytes: await this.#freeBytes() }, signal);
        return;
      }
      case 'offer':
        await this.#serveOffer(conn, req.manifest, signal);
        return;
      case 'push':
        await this.#servePush(conn, req.manifestId, signal);
        return;
      case 'fetch':
        await this.#serveFetch(conn, req.ids, signal);
        return;
      case 'manifest': {
        try {
          const bytes = await this.#store.getManifestBytes(req.manifestId);
          await conn.write({ t: 'manifest', bytes }, signal);
        } catch (err) {
          await conn.write({ t: 'miss', reason: errorMessage(err) }, signal);
        }
        return;
      }
      case 'bulk': {
        const ticket = conn.kind === 'libp2p' ? this.#bulk?.issue(conn.remotePeer) : undefined;
        if (ticket === undefined) {
          const reason = this.#bulk === undefined ? 'bulk channels are off on this peer' : conn.kind === 'bulk' ? 'ask for a bulk channel over libp2p' : 'too many bulk tickets outstanding';
          await conn.write({ t: 'refused', reason }, signal);
        } else {
          await conn.write({ t: 'bulk', port: ticket.port, ticket: ticket.ticket, secret: ticket.secret }, signal);
        }
        return;
      }
      case 'check': {
        const entry = await this.#manifest(req.manifestId);
        const missing = entry === undefined ? 0 : this.#store.missing(entry.manifest).length;
        await conn.write({ t: 'check', hasManifest: entry !== undefined, missing }, signal);
        return;
      }
    }
  }

  async #freeBytes(): Promise<number | null> {
    try {
      return await this.#store.freeBytes();
    } catch {
      return null;
    }
  }

  async #manifest(id: ManifestId): Promise<ManifestEntry | undefined> {
    const cached = this.#manifestCache.get(id);
    if (cached !== undefined && this.#store.hasManifest(id)) return cached;
    if (!this.#store.hasManifest(id)) return undefined;
    try {
      const manifest = await this.#store.getManifest(id);
      return this.#remember(id, manifest);
    } catch (err) {
      this.#log.warn({ manifest: id, err: errorMessage(err) }, 'held manifest unreadable');
      return undefined;
    }
  }

  #remember(id: ManifestId, manifest: Manifest): ManifestEntry {
    const entry = { manifest, chunks: manifestChunks(manifest) };
    this.#manifestCache.delete(id);
    this.#manifestCache.set(id, entry);
    while (this.#manifestCache.size > 16) this.#manifestCache.delete(this.#manifestCache.keys().next().value!);
    return entry;
  }

  async #serveOffer(conn: FrameConn, bytes: Uint8Array, signal: AbortSignal): Promise<void> {
    let manifest: Manifest;
    try {
      manifest = decodeManifest(bytes);
    } catch (err) {
      throw new FabricError('BAD_FRAME', `offered manifest: ${errorMessage(err)}`);
    }
    const id = manifestIdOf(bytes);
    const refuse = async (reason: string): Promise<void> => {
      this.#log.info({ peer: conn.remotePeer, manifest: id, reason }, 'checkpoint offer refused');
      await conn.write({ t: 'refused', reason }, signal);
    };
    const verdict = await this.#opts.admitOffer?.(conn.remotePeer, manifest, id);
    if (verdict !== undefined) return refuse(verdict);
    const entry = this.#remember(id, manifest);
    const need = [...entry.chunks].map(([cid]) => !this.#store.has(cid));
    let needBytes = 0;
    for (const [cid, size] of entry.chunks) if (!this.#store.has(cid)) needBytes += size;
    const free = await this.#freeBytes();
    const reserve = this.#opts.reserveBytes ?? 256 * 1024 * 1024;
    if (free !== null && free - needBytes < reserve) return refuse(`not enough disk: needs ${needBytes} bytes, ${free} free, keeps ${reserve}`);
    await this.#store.putManifest(bytes, id);
    await conn.write({ t: 'need', bits: bitsOf(need) }, signal);
  }

  async #servePush(conn: FrameConn, manifestId: ManifestId, signal: AbortSignal): Promise<void> {
    const entry = await this.#manifest(manifestId);
    if (entry === undefined) {
      await conn.write({ t: 'refused', reason: `manifest ${manifestId} is not held here: offer it first` }, signal);
      return;
    }
    const release = this.#store.pin(entry.chunks.keys(), manifestId);
    const queue: { id: ChunkId; data: Uint8Array[]; size: number }[] = [];
    /** Received and not yet acknowledged: what the pusher's window bounds. */
    let unacked = 0;
    let writing: Promise<void> | undefined;
    let writeError: unknown;
    let stored = 0;
    // Writes what is queued (everything queued when it starts, then again), then acknowledges it.
    const drain = async (): Promise<void> => {
      try {
        while (queue.length > 0 && writeError === undefined) {
          const batch = queue.splice(0);
          try {
            await this.#store.putMany(batch, { verified: true });
          } finally {
            for (const c of batch) this.#budget.give(c.size);
          }
          stored += batch.length;
          for (const c of batch) unacked -= c.size;
          await conn.write({ t: 'stored', ids: batch.map((c) => c.id) }, signal);
        }
      } catch (err) {
        writeError = err;
        conn.abort(`storing chunks failed: ${errorMessage(err)}`);
      }
    };
    const pump = (): void => {
      if (writing !== undefined || queue.length === 0) return;
      // Cleared in a later microtask, never before it is assigned; what was queued after the
      // drain loop looked last is picked up by the next round.
      writing = drain().finally(() => {
        writing = undefined;
        if (writeError === undefined) pump();
      });
    };
    try {
      for (;;) {
        const frame = await conn.read(PushFrame, 'push frame', MAX_REPLY_FRAME, signal);
        if (frame.t === 'end') break;
        const size = entry.chunks.get(frame.id);
        if (size === undefined) throw new FabricError('BAD_FRAME', `push: chunk ${frame.id} is not in manifest ${manifestId}`);
        if (frame.size !== size) throw new FabricError('BAD_FRAME', `push: chunk ${frame.id} has ${frame.size} bytes, the manifest says ${size}`);
        unacked += size;
        if (unacked > MAX_PUSH_WINDOW + MAX_CHUNK_BYTES) throw new FabricError('BAD_FRAME', `push: ${unacked} bytes unacknowledged, over the window`);
        const parts = await conn.readBody(size, 'push chunk', signal);
        if (hashParts(parts) !== frame.id) {
          this.#budget.give(size);
          throw new FabricError('BAD_FRAME', `push: chunk bytes do not match id ${frame.id}`);
        }
        queue.push({ id: frame.id, data: parts, size });
        // Write when the sender paused (nothing more buffered) or a batch is worth an fsync round.
        if (!conn.hasFrame() || queue.length >= 16) pump();
        if (writeError !== undefined) throw writeError;
      }
      for (;;) {
        pump();
        if (writing === undefined) break;
        await writing;
      }
      if (writeError !== undefined) throw writeError;
      await conn.write({ t: 'done', stored }, signal);
    } finally {
      // bodies read but never handed to the writer go back to the budget
      for (const c of queue.splice(0)) this.#budget.give(c.size);
      release();
    }
  }

  async #serveFetch(conn: FrameConn, ids: readonly ChunkId[], signal: AbortSignal): Promise<void> {
    // Read ahead one chunk while the previous one is written.
    let next: Promise<Awaited<ReturnType<ChunkStore['read']>>> | undefined = ids.length > 0 ? this.#store.read(ids[0]!) : undefined;
    for (let i = 0; i < ids.length; i++) {
      const r = await next!;
      next = i + 1 < ids.length ? this.#store.read(ids[i + 1]!) : undefined;
      if (r.ok) await conn.writeChunk(ids[i]!, r.data, signal);
      else await conn.write({ t: 'miss', id: ids[i]!, reason: r.reason }, signal);
    }
    await conn.write({ t: 'end' }, signal);
  }

  // ---- client side -------------------------------------------------------------------------

  /**
   * Runs `fn` over a new channel to `peer`: a bulk channel when `bulk` is asked for and the peer
   * offers one, else a libp2p stream.
   */
  async #open<T>(peer: string, signal: AbortSignal | undefined, fn: (conn: FrameConn) => Promise<T>, bulk = false): Promise<T> {
    const s = signal === undefined ? this.#stopping.signal : AbortSignal.any([signal, this.#stopping.signal]);
    const channel = (bulk ? await this.#openBulk(peer, s) : undefined) ?? streamChannel(await this.#host.dialProtocol(peerIdFromString(peer), CKPT_PROTOCOL, { signal: s }));
    if (bulk) this.#dataChannels[channel.kind]++;
    const conn = new FrameConn(channel, peer, this.#windowBytes + MAX_CHUNK_FRAME + MAX_REPLY_FRAME + FETCH_BATCH_BYTES, this.#timeoutMs);
    const onAbort = (): void => conn.abort('aborted');
    s.addEventListener('abort', onAbort, { once: true });
    try {
      const result = await fn(conn);
      await conn.close();
      return result;
    } catch (err) {
      conn.abort(errorMessage(err));
      throw err;
    } finally {
      s.removeEventListener('abort', onAbort);
    }
  }

  /**
   * A bulk channel to `peer`: a ticket asked for over libp2p, then a socket to the peer's bulk
   * port at the address our libp2p connection reaches it on. Undefined (use libp2p) when bulk
   * channels are off here or there, or the socket fails; such a peer is not asked again for a while.
   */
  async #openBulk(peer: string, signal: AbortSignal): Promise<ByteChannel | undefined> {
    if (this.#opts.bulk === undefined) return undefined;
    const until = this.#bulkUnavailable.get(peer);
    if (until !== undefined && until > Date.now()) return undefined;
    try {
      const connection = await this.#host.dial(peerIdFromString(peer), { signal });
      const address = ipOf(connection.remoteAddr);
      if (address === undefined) throw new FabricError('UNAVAILABLE', `no IP address in ${connection.remoteAddr.toString()}`);
      const stream = await connection.newStream(CKPT_PROTOCOL, { signal });
      const ask = new FrameConn(streamChannel(stream), peer, MAX_REPLY_FRAME, this.#timeoutMs);
      let reply: z.infer<typeof BulkReply>;
      try {
        await ask.write({ t: 'bulk' }, signal);
        reply = await ask.read(BulkReply, 'bulk reply', MAX_REPLY_FRAME, signal);
        await ask.close();
      } catch (err) {
        ask.abort(errorMessage(err));
        throw err;
      }
      if (reply.t === 'refused') throw new FabricError('UNAVAILABLE', reply.reason);
      return await dialBulk(address, reply, BULK_CONNECT_TIMEOUT_MS, signal);
    } catch (err) {
      if (signal.aborted) throw err;
      this.#bulkUnavailable.set(peer, Date.now() + BULK_RETRY_AFTER_MS);
      this.#log.info({ peer, err: errorMessage(err) }, 'no bulk channel to peer: using libp2p streams for a while');
      return undefined;
    }
  }

  /** Which of `ids` `peer` holds, and its free disk. */
  async have(peer: string, ids: readonly ChunkId[], signal?: AbortSignal): Promise<HaveAnswer> {
    const has: boolean[] = [];
    let freeBytes: number | null = null;
    for (let off = 0; off === 0 || off < ids.length; off += MAX_IDS_PER_FRAME) {
      const part = ids.slice(off, off + MAX_IDS_PER_FRAME);
      const reply = await this.#open(peer, signal, async (conn) => {
        await conn.write({ t: 'have', ids: part }, signal);
        return conn.read(HaveReply, 'have reply', MAX_REPLY_FRAME, signal);
      });
      for (let i = 0; i < part.length; i++) has.push(bitAt(reply.bits, i));
      freeBytes = reply.freeBytes;
    }
    return { has, freeBytes };
  }

  /** Whether `peer` holds the manifest and how many of its chunks it lacks. */
  async check(peer: string, manifestId: ManifestId, signal?: AbortSignal): Promise<{ hasManifest: boolean; missing: number }> {
    return this.#open(peer, signal, async (conn) => {
      await conn.write({ t: 'check', manifestId }, signal);
      const r = await conn.read(CheckReply, 'check reply', MAX_REPLY_FRAME, signal);
      return { hasManifest: r.hasManifest, missing: r.missing };
    });
  }

  /** Per peer, how many bytes of `manifest` it already holds and its free disk (for chooseReplicas). */
  async survey(peers: readonly string[], manifest: Manifest, signal?: AbortSignal): Promise<{ peerId: string; heldBytes: number; freeBytes: number | null; error?: string }[]> {
    const chunks = [...manifestChunks(manifest)];
    const ids = chunks.map(([id]) => id);
    return Promise.all(
      peers.map(async (peerId) => {
        try {
          const a = await this.have(peerId, ids, signal);
          let heldBytes = 0;
          chunks.forEach(([, size], i) => {
            if (a.has[i]) heldBytes += size;
          });
          return { peerId, heldBytes, freeBytes: a.freeBytes };
        } catch (err) {
          return { peerId, heldBytes: 0, freeBytes: null, error: errorMessage(err) };
        }
      }),
    );
  }

  /** Fetches a manifest from the first holder that has it (verified against its id) and stores it. */
  async fetchManifest(manifestId: ManifestId, holders: readonly string[], signal?: AbortSignal): Promise<Manifest> {
    if (this.#store.hasManifest(manifestId)) {
      try {
        return await this.#store.getManifest(manifestId);
      } catch (err) {
        this.#log.warn({ manifest: manifestId, err: errorMessage(err) }, 'local manifest unreadable; fetching it');
      }
    }
    const reasons: string[] = [];
    for (const peer of holders) {
      try {
        const bytes = await this.#open(peer, signal, async (conn) => {
          await conn.write({ t: 'manifest', manifestId }, signal);
          const r = await conn.read(ManifestReply, 'manifest reply', MAX_REQUEST_FRAME, signal);
          if (r.t === 'miss') throw new FabricError('NOT_FOUND', r.reason);
          return r.bytes;
        });
        await this.#store.putManifest(bytes, manifestId);
        return decodeManifest(bytes, manifestId);
      } catch (err) {
        if (signal?.aborted) throw err;
        reasons.push(`${peer}: ${errorMessage(err)}`);
      }
    }
    throw new FabricError('NOT_FOUND', `no holder delivered manifest ${manifestId} (${reasons.join('; ') || 'no holders'})`, { details: { manifestId } });
  }

  /**
   * Sends the checkpoint `manifestId` (held locally, chunks and manifest) to every peer in
   * `peers` in parallel. Never throws for a peer's failure: each peer's outcome is in the result.
   */
  async replicate(manifestId: ManifestId, peers: readonly string[], opts: ReplicateOptions = {}): Promise<ReplicateResult> {
    const signal = opts.signal;
    const manifestBytes = await this.#store.getManifestBytes(manifestId);
    const manifest = decodeManifest(manifestBytes, manifestId);
    const chunks = [...manifestChunks(manifest)];
    let checkpointBytes = 0;
    for (const [, size] of chunks) checkpointBytes += size;
    const targets = [...new Set(peers)];
    const states = targets.map((peerId) => ({
      peerId,
      ok: false,
      heldBytes: 0,
      neededBytes: 0,
      sentBytes: 0,
      storedBytes: 0,
      sentChunks: 0,
      need: undefined as boolean[] | undefined,
      error: undefined as string | undefined,
      queue: new ChunkQueue(this.#queueBytes),
    }));
    const report = (): void => {
      if (opts.onProgress === undefined) return;
      const ps = states.map((s) => ({ peerId: s.peerId, neededBytes: s.neededBytes, sentBytes: s.sentBytes, storedBytes: s.storedBytes }));
      opts.onProgress({
        manifestId,
        peers: ps,
        neededBytes: ps.reduce((a, p) => a + p.neededBytes, 0),
        sentBytes: ps.reduce((a, p) => a + p.sentBytes, 0),
        storedBytes: ps.reduce((a, p) => a + p.storedBytes, 0),
      });
    };
    const fail = (s: (typeof states)[number], err: unknown): void => {
      if (s.error === undefined) s.error = errorMessage(err);
      s.queue.close(true);
    };

    // Pin what we send so a concurrent gc cannot take it from under us.
    const release = this.#store.pin(chunks.map(([id]) => id), manifestId);
    try {
      // 1. offer to all: each answers with what it lacks
      await Promise.all(
        states.map(async (s) => {
          try {
            const reply = await this.#open(s.peerId, signal, async (conn) => {
              await conn.write({ t: 'offer', manifest: manifestBytes }, signal);
              return conn.read(OfferReply, 'offer reply', MAX_REPLY_FRAME, signal);
            });
            if (reply.t === 'refused') throw new FabricError('BAD_INPUT', `refused: ${reply.reason}`);
            s.need = chunks.map((_, i) => bitAt(reply.bits, i));
            chunks.forEach(([, size], i) => {
              if (s.need![i]) s.neededBytes += size;
              else s.heldBytes += size;
            });
          } catch (err) {
            fail(s, err);
          }
        }),
      );
      report();
      this.#log.debug({ manifest: manifestId, peers: states.map((s) => ({ peer: s.peerId, need: s.neededBytes, error: s.error })) }, 'offers answered');

      // 2. per peer, parallel push streams fed from its queue
      const pushes = states.map(async (s) => {
        if (s.need === undefined || s.neededBytes === 0) {
          s.queue.close();
          return;
        }
        const streams = Math.max(1, opts.streamsPerPeer ?? this.#streamsPerPeer);
        const sizes = new Map(chunks);
        await Promise.all(
          Array.from({ length: streams }, () =>
            this.#pushStream(s.peerId, manifestId, s.queue, sizes, signal, {
              sent: (bytes) => {
                s.sentBytes += bytes;
                s.sentChunks++;
                report();
              },
              stored: (bytes) => {
                s.storedBytes += bytes;
                report();
              },
            }).catch((err: unknown) => fail(s, err)),
          ),
        );
      });

      // 3. read every chunk someone lacks once, hand it to each peer lacking it
      const producer = (async () => {
        const wanted = chunks.map((_, i) => i).filter((i) => states.some((s) => s.need?.[i] === true));
        let next = wanted.length > 0 ? this.#store.get(chunks[wanted[0]!]![0]) : undefined;
        for (let k = 0; k < wanted.length; k++) {
          const i = wanted[k]!;
          const data = await next!;
          next = k + 1 < wanted.length ? this.#store.get(chunks[wanted[k + 1]!]![0]) : undefined;
          // keep a read-ahead that fails later from being an unhandled rejection
          next?.catch(() => {});
          const id = chunks[i]![0];
          for (const s of states) if (s.need?.[i] === true && !s.queue.closed) await s.queue.push({ id, data });
          signal?.throwIfAborted();
        }
      })();
      try {
        await producer;
      } catch (err) {
        for (const s of states) fail(s, err);
      } finally {
        for (const s of states) s.queue.close();
      }
      await Promise.all(pushes);
      this.#log.debug({ manifest: manifestId }, 'pushes done');

      // 4. ask each peer whether it now holds everything
      await Promise.all(
        states.map(async (s) => {
          if (s.error !== undefined) return;
          try {
            const c = await this.check(s.peerId, manifestId, signal);
            if (!c.hasManifest || c.missing > 0) throw new FabricError('INTERNAL', `after the push it lacks ${c.missing} chunk(s)${c.hasManifest ? '' : ' and the manifest'}`);
            s.ok = true;
          } catch (err) {
            fail(s, err);
          }
        }),
      );
    } finally {
      release();
    }
    for (const s of states) if (s.error !== undefined) this.#log.warn({ peer: s.peerId, manifest: manifestId, err: s.error }, 'replication to peer failed');
    return {
      manifestId,
      checkpointBytes,
      peers: states.map((s) => ({
        peerId: s.peerId,
        ok: s.ok,
        heldBytes: s.heldBytes,
        neededBytes: s.neededBytes,
        sentBytes: s.sentBytes,
        storedBytes: s.storedBytes,
        sentChunks: s.sentChunks,
        ...(s.error !== undefined ? { error: s.error } : {}),
      })),
      holders: states.filter((s) => s.ok).map((s) => s.peerId),
    };
  }

  async #pushStream(
    peer: string,
    manifestId: ManifestId,
    queue: ChunkQueue,
    sizes: ReadonlyMap<ChunkId, number>,
    signal: AbortSignal | undefined,
    on: { sent(bytes: number): void; stored(bytes: number): void },
  ): Promise<void> {
    // Open lazily: a stream that would get no chunk (queue already drained) is not opened.
    const first = await queue.shift();
    if (first === undefined) return;
    await this.#open(peer, signal, async (conn) => {
      await conn.write({ t: 'push', manifestId }, signal);
      let unacked = 0;
      let wake: (() => void) | undefined;
      let ackError: unknown;
      const acks = (async () => {
        try {
          for (;;) {
            const r = await conn.read(PushReply, 'push reply', MAX_REPLY_FRAME, signal);
            if (r.t === 'refused') throw new FabricError('BAD_INPUT', `push refused: ${r.reason}`);
            if (r.t === 'done') return;
            for (const id of r.ids) {
              const size = sizes.get(id) ?? 0;
              unacked -= size;
              on.stored(size);
            }
            const w = wake;
            wake = undefined;
            w?.();
          }
        } catch (err) {
          ackError = err;
          const w = wake;
          wake = undefined;
          w?.();
          throw err;
        }
      })();
      acks.catch(() => {});
      let item: QueuedChunk | undefined = first;
      while (item !== undefined) {
        while (unacked > 0 && unacked + item.data.length > this.#windowBytes && ackError === undefined) {
          await new Promise<void>((r) => {
            wake = r;
          });
        }
        if (ackError !== undefined) throw ackError;
        await conn.writeChunk(item.id, item.data, signal);
        unacked += item.data.length;
        on.sent(item.data.length);
        item = await queue.shift();
      }
      await conn.write({ t: 'end' }, signal);
      await acks;
    }, true);
  }

  /**
   * Fetches `needed` from `holders` in parallel into the local store, every chunk verified,
   * falling back to another holder for chunks that fail. Chunks already held are skipped.
   */
  async fetchChunks(needed: readonly ChunkRef[], holders: readonly string[], opts: FetchOptions = {}): Promise<FetchResult> {
    const signal = opts.signal;
    const want = needed.filter(([id]) => !this.#store.has(id));
    const result: FetchResult = { fetchedChunks: 0, fetchedBytes: 0, perHolder: {}, failed: [], failures: [] };
    if (want.length === 0) return result;
    let totalBytes = 0;
    for (const [, size] of want) totalBytes += size;
    const release = this.#store.pin(want.map(([id]) => id));
    try {
      // Who has what: a have? round, unless the holders are known full replicas.
      const views = await Promise.all(
        [...new Set(holders)].map(async (peerId) => {
          if (opts.assumeHolders === true) return { peerId, has: () => true };
          try {
            const a = await this.have(peerId, want.map(([id]) => id), signal);
            const set = new Set(want.filter((_, i) => a.has[i]).map(([id]) => id));
            return { peerId, has: (id: ChunkId) => set.has(id) };
          } catch (err) {
            if (signal?.aborted) throw err;
            this.#log.debug({ peer: peerId, err: errorMessage(err) }, 'holder did not answer have?');
            return { peerId, has: () => false };
          }
        }),
      );
      const plan = planFetch(want, views);
      const tried = new Map<ChunkId, Set<string>>();
      let round = plan.assignments;
      const sizeOf = new Map(want);
      for (const c of plan.unavailable) result.failed.push(c[0]);
      while (round.size > 0) {
        const retry: ChunkRef[] = [];
        await Promise.all(
          [...round].map(async ([peer, refs]) => {
            for (const [id] of refs) {
              let t = tried.get(id);
              if (t === undefined) tried.set(id, (t = new Set()));
              t.add(peer);
            }
            const failedHere = await this.#fetchFrom(peer, refs, signal, result, () => opts.onProgress?.({ fetchedBytes: result.fetchedBytes, totalBytes }));
            retry.push(...failedHere);
          }),
        );
        // Each failed chunk goes to the next holder of its fallback list not yet tried.
        const next = new Map<string, ChunkRef[]>();
        for (const ref of retry) {
          const alt = (plan.fallbacks.get(ref[0]) ?? []).find((p) => !tried.get(ref[0])!.has(p));
          if (alt === undefined) {
            result.failed.push(ref[0]);
            continue;
          }
          let list = next.get(alt);
          if (list === undefined) next.set(alt, (list = []));
          list.push([ref[0], sizeOf.get(ref[0]) ?? ref[1]]);
        }
        round = next;
      }
    } finally {
      release();
    }
    return result;
  }

  /** Fetches `refs` from one holder over parallel streams; returns the refs it did not deliver. */
  async #fetchFrom(peer: string, refs: readonly ChunkRef[], signal: AbortSignal | undefined, result: FetchResult, progress: () => void): Promise<ChunkRef[]> {
    // Batches of at most FETCH_BATCH_BYTES / FETCH_BATCH_IDS, taken by `streams` workers.
    const batches: ChunkRef[][] = [];
    let cur: ChunkRef[] = [];
    let curBytes = 0;
    for (const r of refs) {
      if (cur.length > 0 && (curBytes + r[1] > FETCH_BATCH_BYTES || cur.length >= FETCH_BATCH_IDS)) {
        batches.push(cur);
        cur = [];
        curBytes = 0;
      }
      cur.push(r);
      curBytes += r[1];
    }
    if (cur.length > 0) batches.push(cur);
    const failed: ChunkRef[] = [];
    const streams = Math.max(1, this.#opts.fetchStreamsPerHolder ?? 2);
    let nextBatch = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        const batch = batches[nextBatch++];
        if (batch === undefined) return;
        const pending = new Map(batch);
        try {
          await this.#open(peer, signal, async (conn) => {
            await conn.write({ t: 'fetch', ids: batch.map(([id]) => id) }, signal);
            // store while reading on; a chunk whose store fails goes back to pending
            const stores: Promise<void>[] = [];
            for (;;) {
              const r = await conn.read(FetchReply, 'fetch reply', MAX_REPLY_FRAME, signal);
              if (r.t === 'end') break;
              const size = pending.get(r.id);
              if (size === undefined) throw new FabricError('BAD_FRAME', `fetch: ${peer} sent chunk ${r.id}, which was not asked for`);
              if (r.t === 'miss') {
                result.failures.push({ peerId: peer, chunkId: r.id, reason: r.reason });
                continue; // stays pending: goes to a fallback holder
              }
              // the header's size is capped by the schema: the body is safe to read even when wrong
              const parts = await conn.readBody(r.size, 'fetched chunk', signal);
              if (r.size !== size || hashParts(parts) !== r.id) {
                result.failures.push({ peerId: peer, chunkId: r.id, reason: 'bytes do not match the chunk id' });
                this.#log.warn({ peer, chunk: r.id }, 'fetched chunk does not match its id');
                continue;
              }
              pending.delete(r.id);
              const id = r.id;
              stores.push(
                this.#store.putMany([{ id, data: parts }], { verified: true }).then(
                  () => {
                    result.fetchedChunks++;
                    result.fetchedBytes += size;
                    result.perHolder[peer] = (result.perHolder[peer] ?? 0) + size;
                    progress();
                  },
                  (err: unknown) => {
                    pending.set(id, size);
                    throw err;
                  },
                ),
              );
            }
            const settled = await Promise.allSettled(stores);
            const bad = settled.find((x) => x.status === 'rejected');
            if (bad !== undefined) throw bad.reason;
          }, true);
        } catch (err) {
          if (signal?.aborted) throw err;
          for (const [id] of pending) result.failures.push({ peerId: peer, chunkId: id, reason: errorMessage(err) });
          this.#log.debug({ peer, err: errorMessage(err) }, 'fetch from holder failed');
        }
        for (const ref of pending) failed.push(ref);
      }
    };
    await Promise.all(Array.from({ length: Math.min(streams, batches.length) }, worker));
    return failed;
  }
}
