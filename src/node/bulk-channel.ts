/**
 * Byte channels for checkpoint data: a libp2p stream, or a direct TCP connection with its own
 * AES-256-GCM records (the "bulk" path).
 *
 * Why a second path. Through libp2p every byte of a checkpoint passes the private-network cipher,
 * Noise's ChaCha20-Poly1305 in 64 KiB messages (a cipher object and two buffers each), yamux
 * framing and window updates, and several small socket writes per frame: ~10 CPU-s per GiB per
 * side measured here, against ~1 for raw TCP, with the garbage collector taking a third. A bulk
 * channel is a plain socket that carries 1 MiB records, each one cipher pass: the same
 * protection for the data (confidential, authenticated, in order) at a few tenths of a CPU-s
 * per GiB more than raw TCP.
 *
 * Trust comes from the libp2p connection, never from the socket: a peer asks for a bulk channel
 * over `/fabric/ckpt/1` (swarm key, Noise, the peer's identity), and the answer carries a
 * one-time ticket and a fresh 32-byte secret. The asker connects to the answerer's bulk port,
 * sends the ticket, and from then on every byte either way is in records keyed from the secret.
 * The listener accepts a socket only with a ticket it issued to that peer, unused and unexpired,
 * and answers with an empty record first, so the dialer knows before it sends a byte of data
 * that it reached the right listener and both hold the same keys. A socket that presents no
 * valid ticket in time is closed; a record that does not authenticate aborts the channel.
 *
 * Record: [u32 length L, big-endian][L bytes of ciphertext][16-byte GCM tag]. The length is the
 * record's associated data; the nonce is a per-direction counter; each direction has its own key
 * (HKDF-SHA256 of the secret, salted with the ticket). Plaintext is handed on only after its tag
 * verified.
 */
import { createCipheriv, createDecipheriv, createSecretKey, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import net from 'node:net';
import type { Stream } from '@libp2p/interface';
import { FabricError, errorMessage, type Logger } from '../core/index.ts';

/** What a channel tells its one reader. */
export interface ChannelEvents {
  /** Bytes in order, as they arrived. */
  data(bytes: Uint8Array): void;
  /** The remote closed its side cleanly: no more data. */
  end(): void;
  /** The channel is gone, with the error that ended it if it failed. */
  close(err?: Error): void;
  /** `send` may go on after it returned false. */
  drain(): void;
}

/** A duplex byte stream to one peer: what the checkpoint protocol runs over. */
export interface ByteChannel {
  /** 'libp2p' or 'bulk': for logs and tests. */
  readonly kind: 'libp2p' | 'bulk';
  /** Registers the reader; called once, before any data is delivered. */
  listen(events: ChannelEvents): void;
  /** Queues bytes (kept by reference until sent: do not change them); false means wait for drain. */
  send(bytes: Uint8Array): boolean;
  /** Ends our side once everything queued is sent. */
  close(): Promise<void>;
  /** Ends both sides now. */
  abort(err: Error): void;
}

/** A libp2p stream as a ByteChannel. */
export function streamChannel(stream: Stream): ByteChannel {
  return {
    kind: 'libp2p',
    listen(ev) {
      stream.addEventListener('message', (evt) => {
        const data = evt.data;
        if (data instanceof Uint8Array) ev.data(data);
        else for (const part of data) ev.data(part);
      });
      stream.addEventListener('remoteCloseWrite', () => ev.end());
      stream.addEventListener('close', (evt) => ev.close(evt.error));
      stream.addEventListener('drain', () => ev.drain());
    },
    send: (bytes) => stream.send(bytes),
    async close() {
      try {
        await stream.close();
      } catch {
        // close() with unsent data can reject with a non-Error event object (STACK.md)
        stream.abort(new Error('close failed'));
      }
    },
    abort: (err) => stream.abort(err),
  };
}

// ---- records -------------------------------------------------------------------------------

export const BULK_PROTOCOL_INFO = 'fabric-bulk/1';
export const TICKET_BYTES = 16;
export const SECRET_BYTES = 32;
/** Plaintext bytes per record. */
const MAX_RECORD = 1024 * 1024;
const HEADER_BYTES = 4;
const TAG_BYTES = 16;
/** How long a closed channel waits for the remote to end its side before it drops the socket. */
const CLOSE_LINGER_MS = 30_000;
/** Bytes queued (not yet handed to the socket, plus the socket's own buffer) before send() says wait. */
const SEND_HIGH_WATER = 8 * 1024 * 1024;

type Role = 'dialer' | 'listener';

function directionKey(secret: Uint8Array, ticket: Uint8Array, sender: Role): KeyObject {
  return createSecretKey(Buffer.from(hkdfSync('sha256', secret, ticket, `${BULK_PROTOCOL_INFO} ${sender}`, 32)));
}

function nonceOf(counter: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeUIntBE(counter, 6, 6);
  return n;
}

/** Received bytes not yet taken: a list of pieces, taken from the front. */
class Pieces {
  readonly #parts: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.#parts.push(b);
    this.length += b.length;
  }

  /** The first `n` bytes (n <= length) as pieces, removed. */
  take(n: number): Buffer[] {
    const out: Buffer[] = [];
    while (n > 0) {
      const p = this.#parts[0]!;
      if (p.length <= n) {
        out.push(p);
        this.#parts.shift();
        n -= p.length;
        this.length -= p.length;
      } else {
        out.push(p.subarray(0, n));
        this.#parts[0] = p.subarray(n);
        this.length -= n;
        n = 0;
      }
    }
    return out;
  }

  /** The first `n` bytes (n <= length) in one buffer, not removed. */
  peek(n: number): Buffer {
    const first = this.#parts[0]!;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.#parts, this.length).subarray(0, n);
  }
}

/** An established bulk socket: records both ways. */
class BulkChannel implements ByteChannel {
  readonly kind = 'bulk' as const;
  readonly #socket: net.Socket;
  readonly #sendKey: KeyObject;
  readonly #recvKey: KeyObject;
  #sendCounter = 0;
  #recvCounter = 0;
  readonly #inbox = new Pieces();
  #outbox: Uint8Array[] = [];
  #outboxBytes = 0;
  #flushQueued = false;
  #events: ChannelEvents | undefined;
  /** What arrived before `listen`: plaintext, and whether the remote ended. */
  #early: Uint8Array[] = [];
  #earlyEnd = false;
  #closed = false;
  #ended = false;
  #wantDrain = false;
  /** Resolves on the first (empty) record from the listener: the dialer's proof of keys. */
  #helloWaiter: ((err?: Error) => void) | undefined;
  #seenHello: boolean;

  /** `initial`: bytes that arrived on the socket before the channel took it over. */
  constructor(socket: net.Socket, sendKey: KeyObject, recvKey: KeyObject, expectHello: boolean, initial?: Buffer) {
    this.#socket = socket;
    this.#sendKey = sendKey;
    this.#recvKey = recvKey;
    this.#seenHello = !expectHello;
    socket.setNoDelay(true);
    socket.on('data', (b: Buffer) => this.#onData(b));
    socket.on('end', () => {
      if (!this.#seenHello) this.#fail(new FabricError('UNAVAILABLE', 'bulk listener closed the socket without answering (a ticket it did not take?)'));
      else if (this.#inbox.length > 0) this.#fail(new FabricError('BAD_FRAME', 'bulk channel ended inside a record'));
      else this.#deliverEnd();
    });
    socket.on('drain', () => this.#maybeDrain());
    socket.on('error', (err) => this.#fail(err));
    socket.on('close', () => this.#fail(undefined));
    if (initial !== undefined && initial.length > 0) this.#onData(initial);
  }

  /** Dialer: waits for the listener's empty first record. */
  hello(timeoutMs: number): Promise<void> {
    if (this.#seenHello) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#helloWaiter = undefined;
        const err = new FabricError('TIMEOUT', `bulk listener did not answer in ${timeoutMs} ms`);
        this.abort(err);
        reject(err);
      }, timeoutMs);
      this.#helloWaiter = (err) => {
        clearTimeout(timer);
        this.#helloWaiter = undefined;
        if (err === undefined) resolve();
        else reject(err);
      };
    });
  }

  listen(events: ChannelEvents): void {
    this.#events = events;
    for (const b of this.#early) events.data(b);
    this.#early = [];
    if (this.#earlyEnd) events.end();
    if (this.#closed) events.close(this.#closeError);
  }

  #closeError: Error | undefined;

  #onData(b: Buffer): void {
    if (this.#closed) return;
    this.#inbox.push(b);
    while (this.#inbox.length >= HEADER_BYTES) {
      const header = this.#inbox.peek(HEADER_BYTES);
      const len = header.readUInt32BE(0);
      if (len > MAX_RECORD) {
        this.#fail(new FabricError('BAD_FRAME', `bulk record of ${len} bytes is over the ${MAX_RECORD}-byte limit`));
        return;
      }
      if (this.#inbox.length < HEADER_BYTES + len + TAG_BYTES) return;
      // the header stays valid after take(): pieces are sliced, never written to
      this.#inbox.take(HEADER_BYTES);
      const aad = header;
      const body = this.#inbox.take(len);
      const tag = Buffer.concat(this.#inbox.take(TAG_BYTES), TAG_BYTES);
      let plain: Buffer[];
      try {
        const d = createDecipheriv('aes-256-gcm', this.#recvKey, nonceOf(this.#recvCounter++), { authTagLength: TAG_BYTES });
        d.setAAD(aad);
        plain = body.map((p) => d.update(p));
        d.setAuthTag(tag);
        d.final();
      } catch {
        this.#fail(new FabricError('BAD_FRAME', 'bulk record did not authenticate'));
        return;
      }
      if (!this.#seenHello) {
        if (len !== 0) {
          this.#fail(new FabricError('BAD_FRAME', 'bulk listener sent data before its hello'));
          return;
        }
        this.#seenHello = true;
        this.#helloWaiter?.();
        continue;
      }
      for (const p of plain) if (p.length > 0) this.#deliver(p);
    }
  }

  #deliver(p: Uint8Array): void {
    if (this.#events === undefined) this.#early.push(p);
    else this.#events.data(p);
  }

  #deliverEnd(): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#events === undefined) this.#earlyEnd = true;
    else this.#events.end();
  }

  #fail(err: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    this.#socket.destroy();
    this.#helloWaiter?.(err ?? new FabricError('UNAVAILABLE', 'bulk channel closed before the listener answered'));
    this.#events?.close(err);
    if (this.#wantDrain) this.#events?.drain();
  }

  send(bytes: Uint8Array): boolean {
    if (this.#closed) return false;
    if (bytes.length > 0) {
      this.#outbox.push(bytes);
      this.#outboxBytes += bytes.length;
    }
    // Small writes made in one go (a frame's length, header and body) become one record.
    if (this.#outboxBytes >= MAX_RECORD) this.#flush();
    else if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(() => {
        this.#flushQueued = false;
        this.#flush();
      });
    }
    const ok = this.#outboxBytes + this.#socket.writableLength < SEND_HIGH_WATER;
    if (!ok) this.#wantDrain = true;
    return ok;
  }

  /** Sends everything queued, as records of at most MAX_RECORD bytes. */
  #flush(): void {
    if (this.#closed) return;
    while (this.#outboxBytes > 0) {
      const parts: Uint8Array[] = [];
      let len = 0;
      while (this.#outbox.length > 0 && len < MAX_RECORD) {
        const p = this.#outbox[0]!;
        const k = Math.min(p.length, MAX_RECORD - len);
        parts.push(k === p.length ? p : p.subarray(0, k));
        len += k;
        if (k === p.length) this.#outbox.shift();
        else this.#outbox[0] = p.subarray(k);
      }
      this.#outboxBytes -= len;
      this.#writeRecord(parts, len);
    }
  }

  #writeRecord(parts: readonly Uint8Array[], len: number): void {
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32BE(len, 0);
    const c = createCipheriv('aes-256-gcm', this.#sendKey, nonceOf(this.#sendCounter++), { authTagLength: TAG_BYTES });
    c.setAAD(header);
    this.#socket.cork();
    this.#socket.write(header);
    for (const p of parts) this.#socket.write(c.update(p));
    c.final();
    this.#socket.write(c.getAuthTag());
    this.#socket.uncork();
  }

  /** Listener: the empty first record that proves to the dialer it holds the keys. */
  sendHello(): void {
    this.#writeRecord([], 0);
  }

  #maybeDrain(): void {
    if (!this.#wantDrain || this.#closed) return;
    if (this.#outboxBytes + this.#socket.writableLength >= SEND_HIGH_WATER) return;
    this.#wantDrain = false;
    this.#events?.drain();
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#flush();
    // a remote that never ends its side does not hold the socket forever
    const timer = setTimeout(() => this.#fail(undefined), CLOSE_LINGER_MS);
    timer.unref();
    this.#socket.once('close', () => clearTimeout(timer));
    return new Promise<void>((resolve) => {
      this.#socket.end(() => resolve());
      this.#socket.once('close', () => resolve());
    });
  }

  abort(err: Error): void {
    this.#fail(err);
  }
}

// ---- listener and dialer --------------------------------------------------------------------

/** What a peer gets over libp2p to open a bulk channel. */
export interface BulkTicket {
  port: number;
  ticket: Uint8Array;
  secret: Uint8Array;
}

export interface BulkListenerOptions {
  /** Address to listen on (an IP; '0.0.0.0' for all). */
  host: string;
  /** 0: any free port. */
  port: number;
  log: Logger;
  /** A channel a peer opened with a ticket issued to it. */
  onChannel(channel: ByteChannel, peer: string): void;
  /** How long a ticket stays valid (default 10 s). */
  ticketTtlMs?: number;
  /** How long a new socket has to present its ticket (default 5 s). */
  handshakeTimeoutMs?: number;
  /** Tickets outstanding at once, all peers together (default 256). */
  maxTickets?: number;
  /** Sockets that have not presented a ticket yet, at once (default 64). */
  maxPendingSockets?: number;
}

interface Issued {
  peer: string;
  secret: Uint8Array;
  expiresAt: number;
}

/** Accepts bulk sockets that present a ticket this daemon issued. */
export class BulkListener {
  readonly #opts: BulkListenerOptions;
  readonly #log: Logger;
  readonly #tickets = new Map<string, Issued>();
  readonly #pending = new Set<net.Socket>();
  readonly #channels = new Set<BulkChannel>();
  /** Every accepted socket until it closes: stop() ends them all, so the server can close. */
  readonly #sockets = new Set<net.Socket>();
  #server: net.Server | undefined;
  #port = 0;

  constructor(opts: BulkListenerOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ module: 'bulk' });
  }

  get port(): number {
    return this.#port;
  }

  async start(): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket));
    server.on('error', (err) => this.#log.warn({ err: errorMessage(err) }, 'bulk listener error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.#opts.host, port: this.#opts.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    const addr = server.address();
    this.#port = typeof addr === 'object' && addr !== null ? addr.port : 0;
    this.#log.debug({ host: this.#opts.host, port: this.#port }, 'bulk listener up');
  }

  async stop(): Promise<void> {
    for (const s of this.#pending) s.destroy();
    for (const c of this.#channels) c.abort(new FabricError('ABORTED', 'bulk listener stopped'));
    for (const s of this.#sockets) s.destroy();
    const server = this.#server;
    this.#server = undefined;
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** A one-time ticket for `peer` (already authenticated over libp2p), or undefined when at the limit. */
  issue(peer: string): BulkTicket | undefined {
    if (this.#server === undefined) return undefined;
    const now = Date.now();
    for (const [k, t] of this.#tickets) if (t.expiresAt <= now) this.#tickets.delete(k);
    if (this.#tickets.size >= (this.#opts.maxTickets ?? 256)) return undefined;
    const ticket = randomBytes(TICKET_BYTES);
    const secret = randomBytes(SECRET_BYTES);
    this.#tickets.set(ticket.toString('hex'), { peer, secret, expiresAt: now + (this.#opts.ticketTtlMs ?? 10_000) });
    return { port: this.#port, ticket, secret };
  }

  #accept(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    if (this.#pending.size >= (this.#opts.maxPendingSockets ?? 64)) {
      this.#log.warn({ remote: `${socket.remoteAddress}:${socket.remotePort}` }, 'bulk socket refused: too many sockets without a ticket');
      socket.destroy();
      return;
    }
    this.#pending.add(socket);
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    let got: Buffer = Buffer.alloc(0);
    const drop = (why: string): void => {
      this.#log.warn({ remote, why }, 'bulk socket refused');
      cleanup();
      socket.destroy();
    };
    const timer = setTimeout(() => drop('no ticket in time'), this.#opts.handshakeTimeoutMs ?? 5_000);
    const onData = (b: Buffer): void => {
      got = got.length === 0 ? b : Buffer.concat([got, b]);
      if (got.length < TICKET_BYTES) return;
      const ticket = got.subarray(0, TICKET_BYTES);
      const rest = got.subarray(TICKET_BYTES);
      cleanup();
      const key = ticket.toString('hex');
      const issued = this.#tickets.get(key);
      this.#tickets.delete(key);
      if (issued === undefined || issued.expiresAt <= Date.now()) {
        drop(issued === undefined ? 'unknown ticket' : 'expired ticket');
        return;
      }
      // bytes that came right behind the ticket are the first records
      const channel = new BulkChannel(socket, directionKey(issued.secret, ticket, 'listener'), directionKey(issued.secret, ticket, 'dialer'), false, rest);
      channel.sendHello();
      this.#channels.add(channel);
      socket.once('close', () => this.#channels.delete(channel));
      this.#opts.onChannel(channel, issued.peer);
    };
    const onEarlyClose = (): void => cleanup();
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onEarlyClose);
      this.#pending.delete(socket);
    };
    socket.on('data', onData);
    socket.on('close', onEarlyClose);
    socket.on('error', () => {});
  }
}

/** Opens a bulk channel to `address` (an IP) with a ticket that peer issued; resolves once its listener answered. */
export async function dialBulk(address: string, t: BulkTicket, timeoutMs: number, signal?: AbortSignal): Promise<ByteChannel> {
  if (t.ticket.length !== TICKET_BYTES || t.secret.length !== SECRET_BYTES) throw new FabricError('BAD_FRAME', 'bulk ticket or secret of the wrong size');
  const socket = net.connect({ host: address, port: t.port, allowHalfOpen: true, noDelay: true });
  const onAbort = (): void => {
    socket.destroy(new FabricError('ABORTED', 'aborted'));
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new FabricError('TIMEOUT', `bulk connect to ${address}:${t.port} took over ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    const ticket = Buffer.from(t.ticket);
    const channel = new BulkChannel(socket, directionKey(t.secret, ticket, 'dialer'), directionKey(t.secret, ticket, 'listener'), true);
    socket.write(ticket);
    await channel.hello(timeoutMs);
    return channel;
  } catch (err) {
    socket.destroy();
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
