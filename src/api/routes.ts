/**
 * The local HTTP API's routes. The daemon hands in a backend; this module checks the bearer
 * token, dispatches, validates request bodies and shapes errors. It never listens itself.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import { FabricError, errorMessage, type Logger } from '../core/index.ts';
import type { z } from 'zod';
import {
  CheckpointCommitRequestSchema,
  JobCancelRequestSchema,
  JobLogsQuerySchema,
  JobSubmitRequestSchema,
  LabelsChangeSchema,
  type Job,
  type JobCancelRequest,
  type CheckpointCommitRequest,
  type CheckpointCommitResponse,
  type ExplainResponse,
  type JobDetail,
  type JobLogsQuery,
  type JobLogsResponse,
  type JobSubmitRequest,
  type JobSubmitResponse,
  type LabelsChange,
  type NodeView,
  type RaftPeersResponse,
  type StatusResponse,
  type TokenResponse,
} from './schemas.ts';

export interface ApiBackend {
  status(): Promise<StatusResponse>;
  nodes(): NodeView[];
  token(): TokenResponse;
  /** Changes this daemon's own labels; the new state is gossiped at once. */
  changeLabels(change: LabelsChange): Promise<NodeView>;
  /** The Raft group's voters and learners as the leader sees them (forwarded to the leader). */
  raftPeers(): Promise<RaftPeersResponse>;
  submitJob(request: JobSubmitRequest): Promise<JobSubmitResponse>;
  /** Jobs that are not finished, or every job with `all`; linearizable. */
  jobs(all: boolean): Promise<Job[]>;
  job(id: string): Promise<JobDetail>;
  cancelJob(id: string, request: JobCancelRequest): Promise<JobSubmitResponse>;
  /** A range of a job's output, read from the peer it runs on. */
  jobLogs(id: string, query: JobLogsQuery): Promise<JobLogsResponse>;
  /** Commits a checkpoint of a job running on this host: chunks, replicas, then Raft. */
  commitCheckpoint(id: string, request: CheckpointCommitRequest): Promise<CheckpointCommitResponse>;
  /** Why a job waits, or where it went and why (asked of the leader). */
  explainJob(id: string): Promise<ExplainResponse>;
}

const MAX_BODY_BYTES = 1024 * 1024;

interface RouteRequest {
  body: unknown;
  /** Values of the path's `:name` segments. */
  params: Record<string, string>;
  query: URLSearchParams;
}

type Route = {
  method: string;
  /** Segments starting with `:` match one path segment and land in `params`. */
  path: string;
  /** The request body's schema; routes without one take no body. */
  body?: z.ZodType<unknown>;
  run: (backend: ApiBackend, req: RouteRequest) => unknown;
};

const ROUTES: readonly Route[] = [
  { method: 'GET', path: '/v1/status', run: (b) => b.status() },
  { method: 'GET', path: '/v1/nodes', run: (b) => ({ nodes: b.nodes() }) },
  { method: 'GET', path: '/v1/token', run: (b) => b.token() },
  { method: 'POST', path: '/v1/self/labels', body: LabelsChangeSchema, run: async (b, r) => ({ node: await b.changeLabels(r.body as LabelsChange) }) },
  { method: 'GET', path: '/v1/raft/peers', run: (b) => b.raftPeers() },
  { method: 'POST', path: '/v1/jobs', body: JobSubmitRequestSchema, run: (b, r) => b.submitJob(r.body as JobSubmitRequest) },
  { method: 'GET', path: '/v1/jobs', run: async (b, r) => ({ jobs: await b.jobs(['1', 'true'].includes(r.query.get('all') ?? '')) }) },
  { method: 'GET', path: '/v1/jobs/:id', run: async (b, r) => ({ job: await b.job(r.params['id']!) }) },
  { method: 'POST', path: '/v1/jobs/:id/checkpoints', body: CheckpointCommitRequestSchema, run: (b, r) => b.commitCheckpoint(r.params['id']!, r.body as CheckpointCommitRequest) },
  { method: 'GET', path: '/v1/jobs/:id/explain', run: (b, r) => b.explainJob(r.params['id']!) },
  { method: 'GET', path: '/v1/jobs/:id/logs', run: (b, r) => b.jobLogs(r.params['id']!, parseQuery(JobLogsQuerySchema, r.query)) },
  { method: 'POST', path: '/v1/jobs/:id/cancel', body: JobCancelRequestSchema, run: (b, r) => b.cancelJob(r.params['id']!, r.body as JobCancelRequest) },
];

/** Query parameters through a schema; every bad one named. */
function parseQuery<T>(schema: z.ZodType<T>, query: URLSearchParams): T {
  const parsed = schema.safeParse(Object.fromEntries(query));
  if (!parsed.success) throw new FabricError('BAD_INPUT', parsed.error.issues.map((i) => `${i.path.join('.') || '(query)'}: ${i.message}`).join('; '));
  return parsed.data;
}

/** Matches a path against a route pattern; returns the params, or undefined. */
function matchPath(pattern: string, path: string): Record<string, string> | undefined {
  const want = pattern.split('/');
  const got = path.split('/');
  if (want.length !== got.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    const g = got[i]!;
    if (w.startsWith(':')) {
      if (g === '') return undefined;
      try {
        params[w.slice(1)] = decodeURIComponent(g);
      } catch {
        return undefined;
      }
    } else if (w !== g) return undefined;
  }
  return params;
}

async function readBody(req: IncomingMessage, schema: z.ZodType<unknown>): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new FabricError('BAD_INPUT', `request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new FabricError('BAD_INPUT', 'request body is not valid JSON');
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new FabricError('BAD_INPUT', parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; '));
  }
  return parsed.data;
}

const STATUS_BY_CODE: Partial<Record<FabricError['code'], number>> = {
  BAD_INPUT: 400,
  BAD_TOKEN: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  REJECTED: 409,
  NOT_LEADER: 503,
  TIMEOUT: 503,
  DAEMON_UNREACHABLE: 503,
};

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  sendJson(res, status, { error: { code, message } });
}

function bearerMatches(header: string | undefined, token: string): boolean {
  if (header === undefined || !header.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice('Bearer '.length).trim());
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

export function createApiHandler(backend: ApiBackend, opts: { token: string; log: Logger }) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (!bearerMatches(req.headers.authorization, opts.token)) {
      sendError(res, 401, 'UNAUTHORIZED', 'missing or wrong bearer token (see api.json in the data dir)');
      return;
    }
    const matching = ROUTES.flatMap((r) => {
      const params = matchPath(r.path, url.pathname);
      return params === undefined ? [] : [{ route: r, params }];
    });
    const found = matching.find((m) => m.route.method === req.method);
    const route = found?.route;
    if (route === undefined) {
      if (matching.length > 0) sendError(res, 405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${url.pathname}`);
      else sendError(res, 404, 'NOT_FOUND', `no such endpoint: ${url.pathname}`);
      return;
    }
    void (async () => {
      try {
        const body = route.body ? await readBody(req, route.body) : undefined;
        sendJson(res, 200, await route.run(backend, { body, params: found!.params, query: url.searchParams }));
      } catch (err) {
        const code = err instanceof FabricError ? err.code : 'INTERNAL';
        const status = (err instanceof FabricError && STATUS_BY_CODE[err.code]) || 500;
        if (status === 500) opts.log.error({ err: errorMessage(err), path: url.pathname }, 'API handler failed');
        if (!res.headersSent) sendError(res, status, code, errorMessage(err));
      }
    })();
  };
}
