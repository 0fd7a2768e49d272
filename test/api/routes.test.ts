import { describe, expect, test } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createApiHandler, type ApiBackend } from '../../src/api/routes.ts';
import { FabricError, silentLogger } from '../../src/core/index.ts';

async function serve(backend: ApiBackend): Promise<{ url: string; server: Server }> {
  const server = createServer(createApiHandler(backend, { token: 'secret-token-0123456789', log: silentLogger }));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

const auth = { authorization: 'Bearer secret-token-0123456789' };

const unused = (): never => {
  throw new Error('unused');
};
/** A backend whose every call fails; tests override what they use. */
function backend(overrides: Partial<ApiBackend>): ApiBackend {
  return { status: unused, nodes: unused, token: unused, changeLabels: unused, raftPeers: unused, submitJob: unused, jobs: unused, job: unused, cancelJob: unused, jobLogs: unused, explainJob: unused, commitCheckpoint: unused, ...overrides };
}

describe('API routes', () => {
  test('401 without or with a wrong token, 200 with it', async () => {
    const { url, server } = await serve(backend({ nodes: () => [], token: () => ({ token: 't' }) }));
    try {
      expect((await fetch(`${url}/v1/nodes`)).status).toBe(401);
      expect((await fetch(`${url}/v1/nodes`, { headers: { authorization: 'Bearer nope' } })).status).toBe(401);
      expect((await fetch(`${url}/v1/nodes`, { headers: { authorization: 'Basic c2VjcmV0' } })).status).toBe(401);
      const r = await fetch(`${url}/v1/nodes`, { headers: auth });
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual({ nodes: [] });
    } finally {
      server.close();
    }
  });

  test('unknown paths are 404, wrong methods 405, failures carry their code', async () => {
    const { url, server } = await serve(backend({
      status: () => { throw new FabricError('NOT_FOUND', 'nothing'); },
      nodes: () => { throw new Error('boom'); },
      token: () => ({ token: 't' }),
      changeLabels: async (c) => ({ peerId: JSON.stringify(c) }) as never,
    }));
    try {
      expect((await fetch(`${url}/v1/nope`, { headers: auth })).status).toBe(404);
      expect((await fetch(`${url}/v1/nodes`, { method: 'DELETE', headers: auth })).status).toBe(405);
      const s = await fetch(`${url}/v1/status`, { headers: auth });
      expect(s.status).toBe(404);
      expect(await s.json()).toEqual({ error: { code: 'NOT_FOUND', message: 'nothing' } });
      const n = await fetch(`${url}/v1/nodes`, { headers: auth });
      expect(n.status).toBe(500);
      expect(((await n.json()) as { error: { code: string } }).error.code).toBe('INTERNAL');
      const post = (body: string) => fetch(`${url}/v1/self/labels`, { method: 'POST', headers: auth, body });
      const bad = await post('{"set": {"": "x"}, "remove": "nope"}');
      expect(bad.status).toBe(400);
      const msg = ((await bad.json()) as { error: { message: string } }).error.message;
      expect(msg).toMatch(/set/);
      expect(msg).toMatch(/remove/);
      expect((await post('not json')).status).toBe(400);
      expect((await post('x'.repeat(2 * 1024 * 1024))).status).toBe(400);
      const good = await post('{"set": {"rack": "r1"}}');
      expect(good.status).toBe(200);
      expect(await good.json()).toEqual({ node: { peerId: JSON.stringify({ set: { rack: 'r1' }, remove: [] }) } });
    } finally {
      server.close();
    }
  });

  test('job routes: path parameters, defaults filled, bad specs named, refusals map to their HTTP status', async () => {
    const calls: unknown[] = [];
    const { url, server } = await serve(backend({
      submitJob: async (r) => {
        calls.push(r);
        return { jobId: 'j-1', state: 'queued', index: 7 };
      },
      jobs: async (all) => {
        calls.push({ all });
        return [];
      },
      job: async (id) => {
        throw new FabricError('NOT_FOUND', `no job ${id}`);
      },
      cancelJob: async (id) => {
        throw new FabricError('REJECTED', `job ${id} is finished`);
      },
      raftPeers: async () => {
        throw new FabricError('TIMEOUT', 'no leader');
      },
    }));
    try {
      const post = (path: string, body: unknown) => fetch(`${url}${path}`, { method: 'POST', headers: auth, body: JSON.stringify(body) });
      const ok = await post('/v1/jobs', { spec: { name: 'train', gpus: 1, command: ['python', 'train.py'] } });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ jobId: 'j-1', state: 'queued', index: 7 });
      expect(calls[0]).toEqual({ spec: { name: 'train', gpus: 1, command: ['python', 'train.py'] } });
      const bad = await post('/v1/jobs', { spec: { name: '', tenant: 'no spaces', gpus: 1.5, nodes: 0 }, extra: true });
      expect(bad.status).toBe(400);
      const msg = ((await bad.json()) as { error: { message: string } }).error.message;
      for (const field of ['spec.name', 'spec.tenant', 'spec.gpus', 'spec.nodes', 'extra']) expect(msg).toContain(field);
      expect(calls).toHaveLength(1);
      expect((await fetch(`${url}/v1/jobs?all=1`, { headers: auth })).status).toBe(200);
      expect(calls[1]).toEqual({ all: true });
      const missing = await fetch(`${url}/v1/jobs/j%2Fx`, { headers: auth });
      expect(missing.status).toBe(404);
      expect(((await missing.json()) as { error: { message: string } }).error.message).toBe('no job j/x');
      expect((await post('/v1/jobs/j-9/cancel', {})).status).toBe(409);
      expect((await fetch(`${url}/v1/jobs/j-9/cancel`, { headers: auth })).status).toBe(405);
      expect((await fetch(`${url}/v1/jobs/j-9/nope`, { headers: auth })).status).toBe(404);
      expect((await fetch(`${url}/v1/raft/peers`, { headers: auth })).status).toBe(503);
    } finally {
      server.close();
    }
  });
});
