/** A typed client of the daemon's local HTTP API. Every response is checked against its schema. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { z } from 'zod';
import { FabricError, errorMessage, toErrorCode } from '../core/index.ts';
import { API_FILE_NAME, ApiFileSchema, type ApiFile } from '../api/endpoint.ts';
import {
  CheckpointCommitResponseSchema,
  ErrorResponseSchema,
  ExplainResponseSchema,
  JobLogsResponseSchema,
  JobResponseSchema,
  JobSubmitResponseSchema,
  JobsResponseSchema,
  NodeResponseSchema,
  NodesResponseSchema,
  RaftPeersResponseSchema,
  StatusResponseSchema,
  TokenResponseSchema,
  type CheckpointCommitRequest,
  type JobCancelRequest,
  type LabelsChange,
} from '../api/schemas.ts';
import type { z as zod } from 'zod';
import type { JobSubmitRequestSchema } from '../api/schemas.ts';

/** What a caller gives to submit a job; defaults (tenant, priority...) are filled by the daemon. */
export type JobSubmitInput = zod.input<typeof JobSubmitRequestSchema>;

export class FabricClient {
  readonly #api: ApiFile;

  constructor(api: ApiFile) {
    this.#api = api;
  }

  /** Finds the daemon of a data dir through its `api.json`. */
  static fromDataDir(dataDir: string): FabricClient {
    const path = join(dataDir, API_FILE_NAME);
    let raw: string;
    try {
      raw = readFileSync(path, 'utf8');
    } catch {
      throw new FabricError('DAEMON_UNREACHABLE', `no daemon is running for data dir ${dataDir} (no ${API_FILE_NAME}); start one with \`fabric agent --data-dir ${dataDir}\``);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      parsed = undefined;
    }
    const api = ApiFileSchema.safeParse(parsed);
    if (!api.success) throw new FabricError('BAD_INPUT', `${path} is not a valid API file; restart the daemon to rewrite it`);
    return new FabricClient(api.data);
  }

  status() {
    return this.#get('/v1/status', StatusResponseSchema);
  }

  async nodes() {
    return (await this.#get('/v1/nodes', NodesResponseSchema)).nodes;
  }

  async token() {
    return (await this.#get('/v1/token', TokenResponseSchema)).token;
  }

  async changeLabels(change: Partial<LabelsChange>) {
    return (await this.#request('POST', '/v1/self/labels', NodeResponseSchema, change)).node;
  }

  raftPeers() {
    return this.#get('/v1/raft/peers', RaftPeersResponseSchema);
  }

  submitJob(request: JobSubmitInput) {
    return this.#request('POST', '/v1/jobs', JobSubmitResponseSchema, request);
  }

  async jobs(all = false) {
    return (await this.#get(`/v1/jobs${all ? '?all=1' : ''}`, JobsResponseSchema)).jobs;
  }

  async job(id: string) {
    return (await this.#get(`/v1/jobs/${encodeURIComponent(id)}`, JobResponseSchema)).job;
  }

  jobLogs(id: string, query: { stream?: 'stdout' | 'stderr'; from?: number; tail?: number; wait?: number } = {}) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v));
    return this.#get(`/v1/jobs/${encodeURIComponent(id)}/logs?${params.toString()}`, JobLogsResponseSchema);
  }

  commitCheckpoint(id: string, request: CheckpointCommitRequest) {
    return this.#request('POST', `/v1/jobs/${encodeURIComponent(id)}/checkpoints`, CheckpointCommitResponseSchema, request);
  }

  explainJob(id: string) {
    return this.#get(`/v1/jobs/${encodeURIComponent(id)}/explain`, ExplainResponseSchema);
  }

  cancelJob(id: string, request: JobCancelRequest = {}) {
    return this.#request('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`, JobSubmitResponseSchema, request);
  }

  #get<T>(path: string, schema: z.ZodType<T>): Promise<T> {
    return this.#request('GET', path, schema);
  }

  async #request<T>(method: string, path: string, schema: z.ZodType<T>, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.#api.url + path, {
        method,
        headers: { authorization: `Bearer ${this.#api.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(path.endsWith('/checkpoints') ? 600_000 : 30_000),
      });
    } catch (err) {
      throw new FabricError('DAEMON_UNREACHABLE', `the daemon at ${this.#api.url} does not answer (${errorMessage(err instanceof Error && err.cause ? err.cause : err)}); is it running?`);
    }
    const payload: unknown = await res.json().catch(() => undefined);
    if (!res.ok) {
      const e = ErrorResponseSchema.safeParse(payload);
      throw new FabricError(e.success ? toErrorCode(e.data.error.code) : res.status === 401 ? 'UNAUTHORIZED' : 'INTERNAL', e.success ? e.data.error.message : `HTTP ${res.status} from ${path}`);
    }
    const parsed = schema.safeParse(payload);
    if (!parsed.success) throw new FabricError('INTERNAL', `unexpected response from ${path}: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
    return parsed.data;
  }
}
