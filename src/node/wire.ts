/**
 * Fabric protocols over libp2p streams: length-prefixed msgpackr frames, each size-limited and
 * checked with a zod schema on arrival. A bad frame ends that stream with a logged reason; it
 * never throws out of a handler and never reaches the state it would have changed.
 */
import type { Libp2p, Stream, Connection } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import { Packr } from 'msgpackr';
import type { z } from 'zod';
import { FabricError, errorMessage, type Logger } from '../core/index.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

export function encodeFrame(value: unknown): Uint8Array {
  return packr.pack(value);
}

/** Decodes and validates one frame; throws FabricError('BAD_FRAME') with the reason. */
export function decodeFrame<T>(bytes: Uint8Array, schema: z.ZodType<T>, what: string): T {
  let raw: unknown;
  try {
    raw = packr.unpack(bytes);
  } catch (err) {
    throw new FabricError('BAD_FRAME', `${what}: not msgpack (${errorMessage(err)})`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new FabricError('BAD_FRAME', `${what}: ${first ? `${first.path.join('.') || '(root)'}: ${first.message}` : 'invalid'}`);
  }
  return parsed.data;
}

export interface FramedStream {
  read<T>(schema: z.ZodType<T>, what: string, signal?: AbortSignal): Promise<T>;
  write(value: unknown, signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
  abort(reason: string): void;
  readonly remotePeer: string;
}

export function framed(stream: Stream, remotePeer: string, maxFrameBytes: number): FramedStream {
  const lp: LengthPrefixedStream<Stream> = lpStream(stream, { maxDataLength: maxFrameBytes });
  return {
    remotePeer,
    async read(schema, what, signal) {
      const chunk = await lp.read(signal ? { signal } : undefined);
      return decodeFrame(chunk.subarray(), schema, what);
    },
    async write(value, signal) {
      await lp.write(encodeFrame(value), signal ? { signal } : undefined);
    },
    async close() {
      // close() with unsent data can reject with a non-Error event object; it must never escape
      try {
        await stream.close();
      } catch {
        stream.abort(new Error('close failed'));
      }
    },
    abort(reason) {
      stream.abort(new Error(reason));
    },
  };
}

export interface ServeOptions {
  maxFrameBytes: number;
  log: Logger;
  /** Concurrent inbound streams allowed per connection. */
  maxInboundStreams?: number;
}

/** Registers a protocol handler whose failures (bad frames, aborts) are logged, never thrown. */
export async function serveProtocol(
  node: Libp2p,
  protocol: string,
  opts: ServeOptions,
  handler: (stream: FramedStream, connection: Connection) => Promise<void>,
): Promise<void> {
  await node.handle(
    protocol,
    async (stream, connection) => {
      const fs = framed(stream, connection.remotePeer.toString(), opts.maxFrameBytes);
      try {
        await handler(fs, connection);
        await fs.close();
      } catch (err) {
        const level = err instanceof FabricError && err.code === 'BAD_FRAME' ? 'warn' : 'debug';
        opts.log[level]({ protocol, peer: fs.remotePeer, err: errorMessage(err) }, 'stream ended with an error');
        fs.abort(errorMessage(err));
      }
    },
    { maxInboundStreams: opts.maxInboundStreams ?? 32, runOnLimitedConnection: false },
  );
}

/** Opens a stream to `peerId` on `protocol` and runs `fn` on it; the stream is always closed. */
export async function withStream<T>(
  node: Libp2p,
  peerId: string,
  protocol: string,
  maxFrameBytes: number,
  signal: AbortSignal,
  fn: (stream: FramedStream) => Promise<T>,
): Promise<T> {
  const stream = await node.dialProtocol(peerIdFromString(peerId), protocol, { signal });
  const fs = framed(stream, peerId, maxFrameBytes);
  const onAbort = () => fs.abort('aborted');
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const result = await fn(fs);
    await fs.close();
    return result;
  } catch (err) {
    fs.abort(errorMessage(err));
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
