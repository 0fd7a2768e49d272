/**
 * `/fabric/logs/1`: a job's output, read from the host it runs on by any peer. One request, one
 * reply per stream: a byte range of stdout or stderr by stream offset (see job-logs.ts), or the
 * tail; with `waitMs`, the host holds the reply until there is new output or the wait ends, so a
 * follower long-polls instead of spinning.
 */
import { existsSync } from 'node:fs';
import type { Libp2p } from '@libp2p/interface';
import { z } from 'zod';
import { FabricError, type Logger } from '../core/index.ts';
import { readLogRange, readLogTail, type LogRange } from './job-logs.ts';
import { serveProtocol, withStream } from './wire.ts';

export const LOGS_PROTOCOL = '/fabric/logs/1';
const MAX_CHUNK = 1024 * 1024;
const MAX_WAIT_MS = 30_000;

/** Job ids become directory names: nothing that could climb out of the jobs dir. */
export const JobIdSchema = z.string().min(1).max(256).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'not a job id');

export const LogRequestSchema = z.object({
  jobId: JobIdSchema,
  stream: z.enum(['stdout', 'stderr']),
  /** Stream offset to read from; null: the last `tailBytes`. */
  from: z.number().int().min(0).nullable(),
  tailBytes: z.number().int().min(0).max(MAX_CHUNK).default(64 * 1024),
  maxBytes: z.number().int().min(1).max(MAX_CHUNK).default(256 * 1024),
  waitMs: z.number().int().min(0).max(MAX_WAIT_MS).default(0),
});
export type LogRequest = z.input<typeof LogRequestSchema>;

const LogReplySchema = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), start: z.number(), end: z.number(), dropped: z.number(), size: z.number(), data: z.custom<Uint8Array>((v) => v instanceof Uint8Array) }),
  z.object({ ok: z.literal(false), message: z.string().max(1024) }),
]);
export type LogChunk = Omit<LogRange, 'data'> & { data: Uint8Array };

/** Reads a range from this host's log dir of the job, waiting up to `waitMs` for new output. */
export async function readJobLog(logDirOf: (jobId: string) => string, raw: LogRequest, signal?: AbortSignal): Promise<LogChunk> {
  const req = LogRequestSchema.parse(raw);
  const dir = logDirOf(req.jobId);
  if (!existsSync(dir)) throw new FabricError('NOT_FOUND', `job ${req.jobId} has no output on this host`);
  const read = (): LogRange => (req.from === null ? readLogTail(dir, req.stream, req.tailBytes) : readLogRange(dir, req.stream, req.from, req.maxBytes));
  let r = read();
  const deadline = Date.now() + req.waitMs;
  while (r.data.length === 0 && r.dropped === 0 && Date.now() < deadline && signal?.aborted !== true) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    r = read();
  }
  return r;
}

export async function serveLogs(host: Libp2p, log: Logger, logDirOf: (jobId: string) => string): Promise<void> {
  await serveProtocol(host, LOGS_PROTOCOL, { maxFrameBytes: 4096, log, maxInboundStreams: 64 }, async (s) => {
    const req = await s.read(LogRequestSchema, 'log request', AbortSignal.timeout(10_000));
    try {
      const r = await readJobLog(logDirOf, req, AbortSignal.timeout(MAX_WAIT_MS + 5_000));
      await s.write({ ok: true, start: r.start, end: r.end, dropped: r.dropped, size: r.size, data: r.data });
    } catch (err) {
      await s.write({ ok: false, message: err instanceof Error ? err.message.slice(0, 1024) : 'failed' });
    }
  });
}

export async function fetchJobLog(host: Libp2p, peer: string, req: LogRequest, signal: AbortSignal): Promise<LogChunk> {
  const reply = await withStream(host, peer, LOGS_PROTOCOL, MAX_CHUNK + 4096, signal, async (s) => {
    await s.write(req, signal);
    return await s.read(LogReplySchema, 'log reply', signal);
  });
  if (!reply.ok) throw new FabricError('NOT_FOUND', `${peer}: ${reply.message}`);
  return reply;
}
