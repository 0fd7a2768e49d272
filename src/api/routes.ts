/**
 * The local HTTP API's routes. The daemon hands in a backend; this module checks the bearer
 * token, dispatches, validates request bodies and shapes errors. It never listens itself.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import { FabricError, errorMessage, type Logger } from '../core/index.ts';
import type { NodeView, StatusResponse, TokenResponse } from './schemas.ts';

export interface ApiBackend {
  status(): StatusResponse;
  nodes(): NodeView[];
  token(): TokenResponse;
}

type Route = { method: string; path: string; run: (backend: ApiBackend) => unknown };

const ROUTES: readonly Route[] = [
  { method: 'GET', path: '/v1/status', run: (b) => b.status() },
  { method: 'GET', path: '/v1/nodes', run: (b) => ({ nodes: b.nodes() }) },
  { method: 'GET', path: '/v1/token', run: (b) => b.token() },
];

const STATUS_BY_CODE: Partial<Record<FabricError['code'], number>> = {
  BAD_INPUT: 400,
  BAD_TOKEN: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
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
    const matching = ROUTES.filter((r) => r.path === url.pathname);
    const route = matching.find((r) => r.method === req.method);
    if (route === undefined) {
      if (matching.length > 0) sendError(res, 405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${url.pathname}`);
      else sendError(res, 404, 'NOT_FOUND', `no such endpoint: ${url.pathname}`);
      return;
    }
    try {
      sendJson(res, 200, route.run(backend));
    } catch (err) {
      const code = err instanceof FabricError ? err.code : 'INTERNAL';
      const status = (err instanceof FabricError && STATUS_BY_CODE[err.code]) || 500;
      if (status === 500) opts.log.error({ err: errorMessage(err), path: url.pathname }, 'API handler failed');
      sendError(res, status, code, errorMessage(err));
    }
  };
}
