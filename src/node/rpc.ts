/**
 * `/fabric/rpc/1`: how a peer hands a request to the Raft leader. One stream per request: one
 * request frame, one reply frame. Writes carry an encoded fsm command (checked again by the
 * leader before it proposes); reads carry a query the leader answers after a read-index barrier.
 * A peer that is not the leader answers NOT_LEADER with the leader it knows, so the caller
 * follows the hint and retries.
 */
import { z } from 'zod';
import type { Libp2p } from '@libp2p/interface';
import { FabricError, errorMessage, toErrorCode, type Logger } from '../core/index.ts';
import { MAX_COMMAND_BYTES } from '../placement/fsm/index.ts';
import { serveProtocol, withStream } from './wire.ts';

export const RPC_PROTOCOL = '/fabric/rpc/1';
const MAX_REQUEST_FRAME = MAX_COMMAND_BYTES + 4096;
/** Replies carry query results (a job list); bounded so a peer cannot make us buffer without end. */
const MAX_REPLY_FRAME = 16 * 1024 * 1024;

const Id = z.string().min(1).max(256);

export const QuerySchema = z.discriminatedUnion('q', [
  z.object({ q: z.literal('jobs'), all: z.boolean() }),
  z.object({ q: z.literal('job'), jobId: Id }),
  z.object({ q: z.literal('raft') }),
  z.object({ q: z.literal('explain'), jobId: Id }),
]);
export type Query = z.infer<typeof QuerySchema>;

export const RpcRequestSchema = z.discriminatedUnion('t', [
  z.object({ t: z.literal('propose'), command: z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'bytes').refine((b) => b.byteLength <= MAX_COMMAND_BYTES, 'command too large') }),
  z.object({ t: z.literal('query'), query: QuerySchema }),
  /** A host renewing its lease on the jobs it runs (see job-agent.ts): only the leader grants it. */
  z.object({ t: z.literal('lease') }),
]);
export type RpcRequest = z.infer<typeof RpcRequestSchema>;

export const RpcReplySchema = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), index: z.number().int().min(0), value: z.unknown() }),
  z.object({ ok: z.literal(false), code: z.string().max(64), message: z.string().max(4096), leader: z.string().max(128).nullable() }),
]);
export type RpcReply = z.infer<typeof RpcReplySchema>;

export type RpcHandler = (req: RpcRequest, from: string, signal: AbortSignal) => Promise<RpcReply>;

/** Serves the protocol; the handler's failures become error replies, never a crash. */
export async function serveRpc(host: Libp2p, log: Logger, handler: RpcHandler, timeoutMs: number): Promise<void> {
  await serveProtocol(host, RPC_PROTOCOL, { maxFrameBytes: MAX_REQUEST_FRAME, log, maxInboundStreams: 256 }, async (s) => {
    const req = await s.read(RpcRequestSchema, 'rpc request', AbortSignal.timeout(timeoutMs));
    let reply: RpcReply;
    try {
      reply = await handler(req, s.remotePeer, AbortSignal.timeout(timeoutMs));
    } catch (err) {
      reply = errorReply(err, null);
    }
    await s.write(reply);
  });
}

/** Sends one request to `peer`; a transport failure throws DAEMON_UNREACHABLE (worth a retry). */
export async function callRpc(host: Libp2p, peer: string, req: RpcRequest, signal: AbortSignal): Promise<RpcReply> {
  try {
    return await withStream(host, peer, RPC_PROTOCOL, MAX_REPLY_FRAME, signal, async (s) => {
      await s.write(req, signal);
      return await s.read(RpcReplySchema, 'rpc reply', signal);
    });
  } catch (err) {
    if (err instanceof FabricError && err.code === 'BAD_FRAME') throw err;
    throw new FabricError('DAEMON_UNREACHABLE', `peer ${peer} did not answer: ${errorMessage(err)}`, { cause: err });
  }
}

export function errorReply(err: unknown, leader: string | null): RpcReply {
  const code = err instanceof FabricError ? err.code : 'INTERNAL';
  const hint = err instanceof FabricError && typeof err.details?.['leader'] === 'string' ? err.details['leader'] : leader;
  return { ok: false, code, message: errorMessage(err).slice(0, 4096), leader: hint };
}

/** Turns an error reply back into the FabricError the leader raised. */
export function replyError(reply: Extract<RpcReply, { ok: false }>): FabricError {
  return new FabricError(toErrorCode(reply.code), reply.message, { details: { leader: reply.leader } });
}
