import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import {
  COMMAND_TYPES,
  FabricStateMachine,
  JOB_STATES,
  MAX_SPEC_BYTES,
  decodeCommand,
  encodeCommand,
  type ApplyResult,
  type Command,
  type FsmLimits,
  type JobState,
} from '../../src/placement/fsm/index.ts';

/** A command without the envelope fields, which the harness fills in unless the test gives them. */
type Body = Command extends infer C
  ? C extends Command
    ? Omit<C, 'requestId' | 'actor' | 'at'> & Partial<Pick<C, 'requestId' | 'actor' | 'at'>>
    : never
  : never;

const T0 = 1_700_000_000_000;

/** One replica plus a client stamping commands the way the leader would. */
class Harness {
  fsm: FabricStateMachine;
  index = 0;
  at = T0;
  #requests = 0;

  constructor(limits: Partial<FsmLimits> = {}) {
    this.fsm = new FabricStateMachine(limits);
  }

  apply(body: Body): ApplyResult {
    const command = { requestId: `req-${++this.#requests}`, actor: 'alice', at: this.at, ...body } as Command;
    return this.fsm.apply(++this.index, encodeCommand(command));
  }

  applyBytes(data: Uint8Array): ApplyResult {
    return this.fsm.apply(++this.index, data);
  }

  /** Applies and insists it was accepted, handing back the value. */
  ok(body: Body): Record<string, unknown> {
    const result = this.apply(body);
    if (!result.ok) throw new Error(`${body.type} refused: ${result.code} ${result.message}`);
    return result.value as Record<string, unknown>;
  }

  submit(jobId: string, extra: Partial<Extract<Body, { type: 'job.submit' }>> = {}): void {
    this.ok({ type: 'job.submit', jobId, tenant: 'research', name: `train ${jobId}`, priority: 0, preemptible: false, spec: { gpus: 1 }, ...extra });
  }

  place(jobId: string, epoch: number, peers: Record<string, string[]>): ApplyResult {
    const allocations = Object.entries(peers).map(([peerId, uuids]) => ({ peerId, devices: uuids.map((uuid) => ({ uuid })) }));
    return this.apply({ type: 'alloc.place', jobId, epoch, allocations });
  }

  transition(jobId: string, to: JobState, attempt: number, extra: { reason?: string; exitCode?: number } = {}): ApplyResult {
    return this.apply({ type: 'job.transition', jobId, to, attempt, ...extra });
  }
}

/** Byte equality (msgpackr hangs a dataView on buffers it reads, which deep equality would see). */
function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(Buffer.from(actual).equals(Buffer.from(expected))).toBe(true);
}

function expectRejected(result: ApplyResult, code: string, message?: RegExp): void {
  expect(result.ok, JSON.stringify(result)).toBe(false);
  if (result.ok) return;
  expect(result.code).toBe(code);
  if (message !== undefined) expect(result.message).toMatch(message);
}

/** The domain state, without the bookkeeping (applied index, audit, idempotency table). */
function domainState(fsm: FabricStateMachine): unknown {
  return {
    jobs: fsm.jobs(),
    allocations: fsm.allocations(),
    checkpoints: fsm.jobs().map((job) => fsm.checkpoints(job.id)),
    tenants: fsm.tenants(),
  };
}

const packr = new Packr({ useRecords: false });

describe('commands: encoding', () => {
  it('round-trips every command type through msgpack', () => {
    const envelope = { requestId: 'r', actor: 'peer-a', at: T0 };
    const commands: Command[] = [
      { type: 'job.submit', ...envelope, jobId: 'j', tenant: 't', name: 'n', priority: 5, preemptible: true, spec: { a: [1, 'x', null, { b: true }] } },
      { type: 'job.cancel', ...envelope, jobId: 'j', reason: 'no longer needed' },
      { type: 'job.transition', ...envelope, jobId: 'j', attempt: 1, to: 'failed', exitCode: 3 },
      { type: 'alloc.place', ...envelope, jobId: 'j', epoch: 1, allocations: [{ peerId: 'p', devices: [{ uuid: 'GPU-1', milli: 250 }, { uuid: 'MIG-1', parentUuid: 'GPU-2' }] }] },
      { type: 'alloc.release', ...envelope, jobId: 'j', epoch: 1 },
      { type: 'checkpoint.commit', ...envelope, jobId: 'j', epoch: 1, step: 10, manifestId: 'm', sizeBytes: 1024, holders: ['p', 'q'] },
      { type: 'checkpoint.gc', ...envelope, jobId: 'j', keep: 2 },
      { type: 'tenant.upsert', ...envelope, tenant: 't', maxGpus: 8, maxGpuHours: null },
      { type: 'noop', ...envelope },
    ];
    expect(commands.map((command) => command.type).sort()).toEqual([...COMMAND_TYPES].sort());
    for (const command of commands) expect(decodeCommand(encodeCommand(command))).toEqual(command);
  });

  it('refuses to encode an invalid command, naming the field', () => {
    const bad = { type: 'job.submit', requestId: 'r', actor: 'a', at: T0, jobId: '', tenant: 't', name: 'n', priority: 0, preemptible: false, spec: {} };
    expect(() => encodeCommand(bad as Command)).toThrow(/jobId/);
  });

  it('decodes bad bytes into a clear FabricError', () => {
    const cases: [Uint8Array, RegExp][] = [
      [new Uint8Array(), /empty/],
      [new Uint8Array([0x82, 0xa1]), /not valid msgpack/],
      [new Uint8Array([0x01, 0x02]), /not valid msgpack/],
      [new Uint8Array([0xc1]), /invalid command/],
      [packr.pack(42), /invalid command/],
      [packr.pack({ type: 'job.explode', requestId: 'r', actor: 'a', at: 1 }), /type/],
      [packr.pack({ type: 'noop', requestId: 'r', actor: 'a', at: 1, extra: 1 }), /extra|unrecognized/i],
      [packr.pack({ type: 'noop', requestId: 'r', actor: 'a', at: -1 }), /at/],
      [new Uint8Array(200 * 1024), /over the/],
    ];
    for (const [bytes, message] of cases) {
      let caught: unknown;
      try {
        decodeCommand(bytes);
      } catch (err) {
        caught = err;
      }
      expect(isFabricError(caught, 'BAD_INPUT'), String(caught)).toBe(true);
      expect((caught as Error).message).toMatch(message);
    }
  });

  it('keeps a spec only when it is a plain JSON object under the size cap', () => {
    const submit = (spec: unknown) =>
      packr.pack({ type: 'job.submit', requestId: 'r', actor: 'a', at: 1, jobId: 'j', tenant: 't', name: 'n', priority: 0, preemptible: false, spec });
    expect(() => decodeCommand(submit({ gpus: 2, nested: { list: [1, 2.5, 'x', null, false] } }))).not.toThrow();
    expect(() => decodeCommand(submit([1, 2]))).toThrow(/JSON object/);
    expect(() => decodeCommand(submit('text'))).toThrow(/JSON object/);
    expect(() => decodeCommand(submit({ when: new Date(0) }))).toThrow(/spec.*when.*Date/);
    expect(() => decodeCommand(submit({ blob: new Uint8Array([1, 2]) }))).toThrow(/blob/);
    expect(() => decodeCommand(submit({ big: 'x'.repeat(MAX_SPEC_BYTES) }))).toThrow(/byte limit/);
    let deep: unknown = 1;
    for (let i = 0; i < 40; i++) deep = { d: deep };
    expect(() => decodeCommand(submit(deep))).toThrow(/deeper/);
  });

  it('refuses a gang naming a peer twice, or a device twice on one peer', () => {
    const place = (allocations: unknown) => packr.pack({ type: 'alloc.place', requestId: 'r', actor: 'a', at: 1, jobId: 'j', epoch: 1, allocations });
    expect(() => decodeCommand(place([{ peerId: 'p', devices: [] }, { peerId: 'p', devices: [] }]))).toThrow(/peer appears twice/);
    expect(() => decodeCommand(place([{ peerId: 'p', devices: [{ uuid: 'g' }, { uuid: 'g' }] }]))).toThrow(/device appears twice/);
    expect(() => decodeCommand(place([]))).toThrow(/allocations/);
  });
});

describe('jobs', () => {
  it('submits a job as queued and creates its tenant with no limits', () => {
    const h = new Harness();
    expect(h.ok({ type: 'job.submit', jobId: 'j1', tenant: 'research', name: 'train', priority: 10, preemptible: true, spec: { z: 1, a: 2 } })).toEqual({
      jobId: 'j1',
      state: 'queued',
      attempt: 0,
    });
    const job = h.fsm.job('j1');
    expect(job).toMatchObject({ id: 'j1', tenant: 'research', state: 'queued', attempt: 0, epoch: 0, priority: 10, preemptible: true, submittedBy: 'alice', submittedAt: T0 });
    expect(job?.spec).toEqual({ a: 2, z: 1 });
    expect(h.fsm.tenants()).toMatchObject([{ name: 'research', maxGpus: null, maxGpuHours: null, gpusHeld: 0 }]);
  });

  it('refuses a second job with the same id', () => {
    const h = new Harness();
    h.submit('j1');
    expectRejected(h.apply({ type: 'job.submit', jobId: 'j1', tenant: 'other', name: 'again', priority: 0, preemptible: false, spec: {} }), 'ALREADY_EXISTS');
    expect(h.fsm.job('j1')?.tenant).toBe('research');
  });

  it('runs a job through its life: placed, running, succeeded, with the attempt recorded', () => {
    const h = new Harness();
    h.submit('j1');
    h.at += 1000;
    expect(h.place('j1', 1, { 'peer-a': ['GPU-1'] })).toEqual({ ok: true, value: { jobId: 'j1', state: 'placed', attempt: 1, epoch: 1, allocationIds: ['j1/1/peer-a'] } });
    h.at += 1000;
    expect(h.transition('j1', 'running', 1)).toEqual({ ok: true, value: { jobId: 'j1', state: 'running', attempt: 1 } });
    h.at += 1000;
    expect(h.transition('j1', 'succeeded', 1, { exitCode: 0 }).ok).toBe(true);
    const job = h.fsm.job('j1');
    expect(job).toMatchObject({ state: 'succeeded', exitCode: 0, allocationIds: [] });
    expect(job?.attempts).toEqual([
      { attempt: 1, epoch: 1, peerIds: ['peer-a'], placedAt: T0 + 1000, startedAt: T0 + 2000, endedAt: T0 + 3000, outcome: 'succeeded', reason: null },
    ]);
    expect(h.fsm.allocationsOn('peer-a')).toEqual([]);
  });

  it('refuses illegal transitions and changes nothing', () => {
    const h = new Harness();
    h.submit('j1');
    expectRejected(h.transition('j1', 'running', 0), 'ILLEGAL_TRANSITION', /queued to running/);
    expectRejected(h.transition('j1', 'placed', 0), 'ILLEGAL_TRANSITION', /alloc\.place/);
    expectRejected(h.transition('j1', 'cancelled', 0), 'ILLEGAL_TRANSITION', /job\.cancel/);
    expectRejected(h.transition('j1', 'queued', 0), 'ILLEGAL_TRANSITION');
    expect(h.place('j1', 1, { p: ['g'] }).ok).toBe(true);
    expectRejected(h.transition('j1', 'placed', 1), 'ILLEGAL_TRANSITION');
    expect(h.transition('j1', 'succeeded', 1).ok).toBe(true);
    for (const to of JOB_STATES) expectRejected(h.transition('j1', to, 1), 'ILLEGAL_TRANSITION', /succeeded/);
    expect(h.fsm.job('j1')?.state).toBe('succeeded');
  });

  it('refuses a report about another attempt', () => {
    const h = new Harness();
    h.submit('j1');
    h.place('j1', 1, { 'peer-a': ['g'] });
    h.transition('j1', 'running', 1);
    h.transition('j1', 'lost', 1, { reason: 'peer-a declared dead' });
    h.transition('j1', 'restarting', 1);
    expect(h.place('j1', 2, { 'peer-b': ['g'] }).ok).toBe(true);
    // The old host, cut off, reports its run ending: it is about attempt 1 and must not count.
    expectRejected(h.transition('j1', 'failed', 1), 'STALE_ATTEMPT', /attempt 2/);
    expectRejected(h.transition('j1', 'running', 3), 'STALE_ATTEMPT');
    expect(h.transition('j1', 'running', 2).ok).toBe(true);
    const job = h.fsm.job('j1');
    expect(job?.attempts.map((a) => [a.attempt, a.epoch, a.peerIds, a.outcome])).toEqual([
      [1, 1, ['peer-a'], 'lost'],
      [2, 2, ['peer-b'], null],
    ]);
    expect(job?.attempts[0]?.reason).toBe('peer-a declared dead');
  });

  it('retries a failed run through restarting and fails for good with the exit code', () => {
    const h = new Harness();
    h.submit('j1');
    h.place('j1', 1, { p: ['g'] });
    h.transition('j1', 'running', 1);
    expect(h.transition('j1', 'restarting', 1, { reason: 'exit 1, retrying', exitCode: 1 }).ok).toBe(true);
    expect(h.fsm.allocationsOn('p')).toEqual([]);
    h.place('j1', 2, { p: ['g'] });
    expect(h.transition('j1', 'failed', 2, { reason: 'exit 1, out of retries', exitCode: 1 }).ok).toBe(true);
    expect(h.fsm.job('j1')).toMatchObject({ state: 'failed', exitCode: 1, reason: 'exit 1, out of retries', attempt: 2 });
  });

  it('cancels a job in any live state and releases its devices; refuses a finished one', () => {
    const h = new Harness();
    h.submit('queued');
    h.submit('running');
    h.place('running', 1, { p: ['g1'] });
    h.transition('running', 'running', 1);
    expect(h.ok({ type: 'job.cancel', jobId: 'queued' })).toEqual({ jobId: 'queued', state: 'cancelled', attempt: 0 });
    expect(h.ok({ type: 'job.cancel', jobId: 'running', reason: 'user asked' })).toEqual({ jobId: 'running', state: 'cancelled', attempt: 1 });
    expect(h.fsm.job('running')).toMatchObject({ state: 'cancelled', reason: 'user asked', allocationIds: [] });
    expect(h.fsm.job('queued')?.reason).toBe('cancelled by alice');
    expect(h.fsm.allocations()).toEqual([]);
    expectRejected(h.apply({ type: 'job.cancel', jobId: 'running' }), 'ILLEGAL_TRANSITION', /already cancelled/);
    expectRejected(h.apply({ type: 'job.cancel', jobId: 'nope' }), 'NOT_FOUND');
    expectRejected(h.transition('nope', 'running', 0), 'NOT_FOUND');
  });

  it('reports the jobs that entered the waiting states after a sequence number, a job that comes back again, and the same after a restore', () => {
    const h = new Harness();
    const ids = (r: { jobs: readonly { id: string }[] }) => r.jobs.map((j) => j.id);
    h.submit('a');
    h.submit('b');
    const first = h.fsm.waitingAddedAfter(0);
    expect(ids(first)).toEqual(['a', 'b']);
    expect(ids(h.fsm.waitingAddedAfter(first.seq))).toEqual([]);
    h.submit('c');
    h.place('a', 1, { p: ['g'] });
    h.transition('a', 'running', 1);
    expect(ids(h.fsm.waitingAddedAfter(first.seq))).toEqual(['c']);
    // a fails and is retried: it waits again, and is new again.
    h.transition('a', 'restarting', 1, { reason: 'exit 1, retrying', exitCode: 1 });
    const second = h.fsm.waitingAddedAfter(first.seq);
    expect(ids(second)).toEqual(['c', 'a']);
    h.ok({ type: 'job.cancel', jobId: 'c' });
    expect(ids(h.fsm.waitingAddedAfter(first.seq))).toEqual(['a']);
    expect(ids(h.fsm.waitingAddedAfter(0))).toEqual(['b', 'a']);
    expect(h.fsm.waitingCount()).toBe(2);
    const restored = FabricStateMachine.restore(h.fsm.snapshot());
    expect(new Set(ids(restored.waitingAddedAfter(0)))).toEqual(new Set(['a', 'b']));
    expect(restored.waitingCount()).toBe(2);
  });

  it('keeps the waiting-entry log in step with the queue through many entries and exits', () => {
    const h = new Harness();
    let seq = 0;
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 700; i++) h.submit(`r${round}-${i}`);
      for (let i = 0; i < 700; i++) if (i % 7 !== 0) h.ok({ type: 'job.cancel', jobId: `r${round}-${i}` });
      const added = h.fsm.waitingAddedAfter(seq);
      expect(added.jobs.map((j) => j.id)).toEqual(Array.from({ length: 100 }, (_, k) => `r${round}-${k * 7}`));
      seq = added.seq;
    }
    expect(h.fsm.waitingAddedAfter(0).jobs).toHaveLength(500);
    expect(h.fsm.waitingJobs()).toHaveLength(500);
  });

  it('lists jobs by state and tenant', () => {
    const h = new Harness();
    h.submit('b', { tenant: 'x' });
    h.submit('a', { tenant: 'y' });
    h.submit('c', { tenant: 'x' });
    h.place('c', 1, { p: ['g'] });
    expect(h.fsm.jobs().map((job) => job.id)).toEqual(['a', 'b', 'c']);
    expect(h.fsm.jobs({ tenant: 'x' }).map((job) => job.id)).toEqual(['b', 'c']);
    expect(h.fsm.jobs({ state: 'queued' }).map((job) => job.id)).toEqual(['a', 'b']);
    expect(h.fsm.jobs({ state: ['placed', 'running'], tenant: 'x' }).map((job) => job.id)).toEqual(['c']);
  });
});

describe('allocations', () => {
  it('places a gang on several peers at one epoch', () => {
    const h = new Harness();
    h.submit('gang');
    expect(h.place('gang', 1, { 'peer-b': ['GPU-b1', 'GPU-b2'], 'peer-a': ['GPU-a1'] })).toMatchObject({
      ok: true,
      value: { allocationIds: ['gang/1/peer-b', 'gang/1/peer-a'] },
    });
    expect(h.fsm.allocationsOn('peer-b')).toEqual([
      {
        id: 'gang/1/peer-b',
        jobId: 'gang',
        tenant: 'research',
        peerId: 'peer-b',
        epoch: 1,
        attempt: 1,
        devices: [
          { uuid: 'GPU-b1', milli: 1000, parentUuid: null },
          { uuid: 'GPU-b2', milli: 1000, parentUuid: null },
        ],
        placedAt: T0,
      },
    ]);
    expect(h.fsm.job('gang')?.attempts[0]?.peerIds).toEqual(['peer-b', 'peer-a']);
  });

  it('refuses a device already held on that peer, and places none of a gang that hits one', () => {
    const h = new Harness();
    h.submit('first');
    h.submit('second');
    h.place('first', 1, { 'peer-a': ['GPU-1'] });
    const before = domainState(h.fsm);
    expectRejected(h.place('second', 1, { 'peer-b': ['GPU-1'], 'peer-a': ['GPU-2', 'GPU-1'] }), 'DEVICE_BUSY', /GPU-1 on peer peer-a/);
    expect(domainState(h.fsm)).toEqual(before);
    expect(h.fsm.allocationsOn('peer-b')).toEqual([]);
    // The same UUID on another peer is another device.
    expect(h.place('second', 1, { 'peer-b': ['GPU-1'] }).ok).toBe(true);
  });

  it('frees devices when the job ends, so they can be placed again', () => {
    const h = new Harness();
    h.submit('first');
    h.submit('second');
    h.place('first', 1, { p: ['g'] });
    expectRejected(h.place('second', 1, { p: ['g'] }), 'DEVICE_BUSY');
    h.transition('first', 'failed', 1);
    expect(h.place('second', 1, { p: ['g'] }).ok).toBe(true);
  });

  it('shares a device by thousandths up to the whole of it', () => {
    const h = new Harness();
    for (const id of ['a', 'b', 'c']) h.submit(id);
    const share = (jobId: string, milli: number) =>
      h.apply({ type: 'alloc.place', jobId, epoch: 1, allocations: [{ peerId: 'p', devices: [{ uuid: 'g', milli }] }] });
    expect(share('a', 600).ok).toBe(true);
    expectRejected(share('b', 500), 'DEVICE_BUSY', /400\/1000 free/);
    expect(share('b', 400).ok).toBe(true);
    expectRejected(share('c', 1), 'DEVICE_BUSY');
  });

  it('keeps a MIG slice and its parent GPU from being handed out together', () => {
    const h = new Harness();
    for (const id of ['slice', 'whole', 'slice2']) h.submit(id);
    const slice = (jobId: string, uuid: string) =>
      h.apply({ type: 'alloc.place', jobId, epoch: 1, allocations: [{ peerId: 'p', devices: [{ uuid, parentUuid: 'GPU-0' }] }] });
    expect(slice('slice', 'MIG-1').ok).toBe(true);
    expectRejected(h.place('whole', 1, { p: ['GPU-0'] }), 'DEVICE_BUSY', /MIG slices/);
    expectRejected(slice('slice2', 'MIG-1'), 'DEVICE_BUSY');
    expect(slice('slice2', 'MIG-2').ok).toBe(true);
    h.apply({ type: 'job.cancel', jobId: 'slice' });
    h.apply({ type: 'job.cancel', jobId: 'slice2' });
    expect(h.place('whole', 1, { p: ['GPU-0'] }).ok).toBe(true);
    h.submit('late-slice');
    expectRejected(slice('late-slice', 'MIG-3'), 'DEVICE_BUSY', /allocated as a whole/);
    h.submit('both');
    const both = h.apply({
      type: 'alloc.place',
      jobId: 'both',
      epoch: 1,
      allocations: [{ peerId: 'q', devices: [{ uuid: 'GPU-7' }, { uuid: 'MIG-7', parentUuid: 'GPU-7' }] }],
    });
    expectRejected(both, 'DEVICE_BUSY', /both whole and as MIG slices/);
  });

  it('places only waiting jobs, with an epoch greater than any before', () => {
    const h = new Harness();
    expectRejected(h.place('nope', 1, { p: ['g'] }), 'NOT_FOUND');
    h.submit('j');
    h.place('j', 3, { p: ['g'] });
    expectRejected(h.place('j', 4, { q: ['g'] }), 'ILLEGAL_TRANSITION', /placed, not waiting/);
    h.transition('j', 'restarting', 1);
    expectRejected(h.place('j', 3, { q: ['g'] }), 'STALE_EPOCH', /greater/);
    expectRejected(h.place('j', 2, { q: ['g'] }), 'STALE_EPOCH');
    expect(h.place('j', 4, { q: ['g'] }).ok).toBe(true);
  });

  it('releases a placement: devices back, job to be placed again; refuses stale or idle ones', () => {
    const h = new Harness();
    h.submit('j');
    h.place('j', 1, { p: ['g'], q: ['h'] });
    expectRejected(h.apply({ type: 'alloc.release', jobId: 'j', epoch: 2 }), 'STALE_EPOCH');
    expect(h.ok({ type: 'alloc.release', jobId: 'j', epoch: 1, reason: 'preempted' })).toEqual({
      jobId: 'j',
      state: 'restarting',
      epoch: 1,
      released: ['j/1/p', 'j/1/q'],
    });
    expect(h.fsm.allocations()).toEqual([]);
    expect(h.fsm.job('j')?.attempts[0]).toMatchObject({ outcome: 'restarting', reason: 'preempted' });
    expectRejected(h.apply({ type: 'alloc.release', jobId: 'j', epoch: 1 }), 'ILLEGAL_TRANSITION', /holds no allocation/);
    expectRejected(h.apply({ type: 'alloc.release', jobId: 'nope', epoch: 1 }), 'NOT_FOUND');
  });
});

describe('checkpoints', () => {
  const commit = (h: Harness, manifestId: string, epoch: number, step: number) =>
    h.apply({ type: 'checkpoint.commit', jobId: 'j', epoch, step, manifestId, sizeBytes: 1 << 20, holders: ['peer-b', 'peer-c'] });

  it('records committed checkpoints with their holders in commit order', () => {
    const h = new Harness();
    h.submit('j');
    h.place('j', 1, { 'peer-a': ['g'] });
    h.transition('j', 'running', 1);
    expect(commit(h, 'm1', 1, 100)).toEqual({ ok: true, value: { jobId: 'j', manifestId: 'm1', step: 100 } });
    h.at += 5;
    expect(commit(h, 'm2', 1, 200).ok).toBe(true);
    expect(h.fsm.checkpoints('j')).toEqual([
      { jobId: 'j', manifestId: 'm1', step: 100, sizeBytes: 1 << 20, holders: ['peer-b', 'peer-c'], epoch: 1, attempt: 1, committedAt: T0, committedBy: 'alice' },
      { jobId: 'j', manifestId: 'm2', step: 200, sizeBytes: 1 << 20, holders: ['peer-b', 'peer-c'], epoch: 1, attempt: 1, committedAt: T0 + 5, committedBy: 'alice' },
    ]);
    expectRejected(commit(h, 'm2', 1, 300), 'ALREADY_EXISTS');
  });

  it('refuses a checkpoint from a stale epoch (fencing) or one never placed', () => {
    const h = new Harness();
    h.submit('j');
    expectRejected(commit(h, 'm0', 1, 1), 'STALE_EPOCH', /never placed/);
    h.place('j', 1, { 'peer-a': ['g'] });
    h.transition('j', 'lost', 1);
    h.transition('j', 'restarting', 1);
    h.place('j', 2, { 'peer-b': ['g'] });
    // peer-a was only partitioned and still writes checkpoints of its epoch-1 run.
    expectRejected(commit(h, 'm-old', 1, 500), 'STALE_EPOCH', /stale/);
    expect(h.fsm.checkpoints('j')).toEqual([]);
    expect(commit(h, 'm-new', 2, 400).ok).toBe(true);
    expectRejected(h.apply({ type: 'checkpoint.commit', jobId: 'nope', epoch: 1, step: 0, manifestId: 'm', sizeBytes: 0, holders: ['p'] }), 'NOT_FOUND');
  });

  it('collects all but the last K and says what may be deleted where', () => {
    const h = new Harness({ maxCheckpointsPerJob: 4 });
    h.submit('j');
    h.place('j', 1, { p: ['g'] });
    for (let i = 1; i <= 4; i++) commit(h, `m${i}`, 1, i * 10);
    expectRejected(commit(h, 'm5', 1, 50), 'LIMIT_REACHED');
    expect(h.ok({ type: 'checkpoint.gc', jobId: 'j', keep: 2 })).toEqual({
      jobId: 'j',
      removed: [
        { manifestId: 'm1', holders: ['peer-b', 'peer-c'] },
        { manifestId: 'm2', holders: ['peer-b', 'peer-c'] },
      ],
    });
    expect(h.fsm.checkpoints('j').map((c) => c.manifestId)).toEqual(['m3', 'm4']);
    expect(h.ok({ type: 'checkpoint.gc', jobId: 'j', keep: 5 })).toEqual({ jobId: 'j', removed: [] });
    expect(commit(h, 'm5', 1, 50).ok).toBe(true);
    expectRejected(h.apply({ type: 'checkpoint.gc', jobId: 'nope', keep: 1 }), 'NOT_FOUND');
  });
});

describe('tenants and quotas', () => {
  it('creates and updates a tenant, keeping its usage', () => {
    const h = new Harness();
    expect(h.ok({ type: 'tenant.upsert', tenant: 'research', maxGpus: 4, maxGpuHours: 100 })).toEqual({ tenant: 'research', created: true });
    h.at += 10;
    expect(h.ok({ type: 'tenant.upsert', tenant: 'research', maxGpus: 8, maxGpuHours: null })).toEqual({ tenant: 'research', created: false });
    expect(h.fsm.tenant('research')).toEqual({
      name: 'research',
      maxGpus: 8,
      maxGpuHours: null,
      usedMilliGpuMs: 0,
      createdAt: T0,
      updatedAt: T0 + 10,
      gpusHeld: 0,
      gpuHoursUsed: 0,
    });
  });

  it('refuses a placement over the tenant GPU quota, fractions counted by share', () => {
    const h = new Harness();
    h.ok({ type: 'tenant.upsert', tenant: 'research', maxGpus: 2, maxGpuHours: null });
    for (const id of ['a', 'b', 'c']) h.submit(id);
    h.place('a', 1, { p: ['g1'] });
    h.apply({ type: 'alloc.place', jobId: 'b', epoch: 1, allocations: [{ peerId: 'p', devices: [{ uuid: 'g2', milli: 500 }] }] });
    expect(h.fsm.tenant('research')?.gpusHeld).toBe(1.5);
    expectRejected(h.place('c', 1, { q: ['g1'] }), 'QUOTA_EXCEEDED', /holds 1.5 GPUs of its 2/);
    h.apply({ type: 'job.cancel', jobId: 'a' });
    expect(h.place('c', 1, { q: ['g1'] }).ok).toBe(true);
  });

  it('counts GPU-hours as time passes and refuses placements once they are spent', () => {
    const h = new Harness();
    h.ok({ type: 'tenant.upsert', tenant: 'research', maxGpus: null, maxGpuHours: 2 });
    h.submit('a');
    h.submit('b');
    h.place('a', 1, { p: ['g1', 'g2'] });
    h.at += 30 * 60 * 1000;
    h.ok({ type: 'noop' });
    expect(h.fsm.tenant('research')?.gpuHoursUsed).toBe(1);
    h.transition('a', 'restarting', 1);
    expect(h.fsm.tenant('research')).toMatchObject({ gpuHoursUsed: 1, usedMilliGpuMs: 2 * 1000 * 30 * 60 * 1000 });
    expect(h.place('a', 2, { p: ['g1', 'g2'] }).ok).toBe(true);
    h.at += 30 * 60 * 1000;
    expectRejected(h.place('b', 1, { p: ['g3'] }), 'QUOTA_EXCEEDED', /GPU-hours/);
  });

  it('refuses a bad tenant name at decode', () => {
    const h = new Harness();
    expect(() => h.apply({ type: 'tenant.upsert', tenant: 'no spaces', maxGpus: 1, maxGpuHours: 1 })).toThrow(/tenant/);
  });
});

describe('idempotency', () => {
  it('answers a retried submit with the first result and creates one job', () => {
    const h = new Harness();
    const first = h.apply({ type: 'job.submit', requestId: 'client-7', jobId: 'j-100', tenant: 't', name: 'n', priority: 0, preemptible: false, spec: {} });
    // After a leader change the new leader assigns a fresh job id to the same request.
    h.at += 2000;
    const retry = h.apply({ type: 'job.submit', requestId: 'client-7', jobId: 'j-200', tenant: 't', name: 'n', priority: 0, preemptible: false, spec: {} });
    expect(retry).toEqual(first);
    expect(h.fsm.jobs().map((job) => job.id)).toEqual(['j-100']);
    expect(h.fsm.audit(2).map((entry) => [entry.requestId, entry.replay, entry.at])).toEqual([
      ['client-7', false, T0],
      ['client-7', true, T0 + 2000],
    ]);
  });

  it('answers a retried refusal with the same refusal, and a reused id of another type with an error', () => {
    const h = new Harness();
    const refused = h.apply({ type: 'job.cancel', requestId: 'r1', jobId: 'ghost' });
    h.submit('ghost');
    expect(h.apply({ type: 'job.cancel', requestId: 'r1', jobId: 'ghost' })).toEqual(refused);
    expect(h.fsm.job('ghost')?.state).toBe('queued');
    expectRejected(h.apply({ type: 'noop', requestId: 'r1' }), 'REQUEST_ID_REUSED', /job\.cancel/);
  });

  it('remembers a bounded number of request ids, forgetting the oldest', () => {
    const h = new Harness({ maxRequests: 3 });
    for (let i = 1; i <= 5; i++) h.apply({ type: 'noop', requestId: `r${i}` });
    expect(['r1', 'r2', 'r3', 'r4', 'r5'].map((id) => h.fsm.hasRequest(id))).toEqual([false, false, true, true, true]);
  });

  it('forgets request ids older than the retention, by the commands\u2019 clock', () => {
    const h = new Harness({ requestRetentionMs: 1000 });
    h.apply({ type: 'noop', requestId: 'old' });
    h.at += 600;
    h.apply({ type: 'noop', requestId: 'mid' });
    h.at += 600;
    h.apply({ type: 'noop', requestId: 'new' });
    expect(['old', 'mid', 'new'].map((id) => h.fsm.hasRequest(id))).toEqual([false, true, true]);
    // A leader with a clock behind does not turn time back.
    h.at -= 5000;
    h.apply({ type: 'noop', requestId: 'skewed' });
    expect(h.fsm.hasRequest('mid')).toBe(true);
  });
});

describe('audit trail and bad input', () => {
  it('records who asked for what, when, and the answer', () => {
    const h = new Harness();
    h.apply({ type: 'job.submit', actor: 'peer-x', requestId: 'a', jobId: 'j', tenant: 't', name: 'n', priority: 0, preemptible: false, spec: {} });
    h.apply({ type: 'job.transition', actor: 'peer-y', requestId: 'b', jobId: 'j', to: 'running', attempt: 0 });
    h.apply({ type: 'tenant.upsert', actor: 'admin', requestId: 'c', tenant: 't', maxGpus: 1, maxGpuHours: null });
    expect(h.fsm.audit()).toEqual([
      { seq: 0, index: 1, at: T0, actor: 'peer-x', type: 'job.submit', requestId: 'a', subject: 'j', ok: true, code: null, message: null, replay: false },
      {
        seq: 1,
        index: 2,
        at: T0,
        actor: 'peer-y',
        type: 'job.transition',
        requestId: 'b',
        subject: 'j',
        ok: false,
        code: 'ILLEGAL_TRANSITION',
        message: 'job j cannot go from queued to running',
        replay: false,
      },
      { seq: 2, index: 3, at: T0, actor: 'admin', type: 'tenant.upsert', requestId: 'c', subject: 't', ok: true, code: null, message: null, replay: false },
    ]);
    expect(h.fsm.audit(1).map((entry) => entry.seq)).toEqual([2]);
  });

  it('keeps a ring of the last N entries', () => {
    const h = new Harness({ auditEntries: 4 });
    for (let i = 0; i < 10; i++) h.apply({ type: 'noop' });
    expect(h.fsm.audit().map((entry) => entry.seq)).toEqual([6, 7, 8, 9]);
    expect(h.fsm.audit(100)).toHaveLength(4);
    expect(h.fsm.audit(0)).toEqual([]);
  });

  it('refuses garbage bytes with BAD_COMMAND, audits them, and changes nothing else', () => {
    const h = new Harness();
    h.submit('j');
    h.place('j', 1, { p: ['g'] });
    const before = domainState(h.fsm);
    const garbage = [
      new Uint8Array([0xff, 0x00, 0x13]),
      new Uint8Array(),
      packr.pack({ type: 'job.cancel', jobId: 'j' }),
      packr.pack({ type: 'alloc.place', requestId: 'x', actor: 'a', at: 1, jobId: 'j', epoch: 0, allocations: [] }),
      new TextEncoder().encode('{"type":"noop"}'),
    ];
    for (const bytes of garbage) {
      const result = h.applyBytes(bytes);
      expectRejected(result, 'BAD_COMMAND');
    }
    expect(domainState(h.fsm)).toEqual(before);
    expect(h.fsm.appliedIndex).toBe(2 + garbage.length);
    expect(h.fsm.audit(1)[0]).toMatchObject({ actor: null, type: null, ok: false, code: 'BAD_COMMAND' });
  });

  it('does nothing for a log index already applied', () => {
    const h = new Harness();
    h.ok({ type: 'noop' });
    const snapshot = h.fsm.snapshot();
    expectRejected(h.fsm.apply(1, encodeCommand({ type: 'noop', requestId: 'z', actor: 'a', at: T0 })), 'ALREADY_APPLIED');
    expectSameBytes(h.fsm.snapshot(), snapshot);
  });
});

describe('snapshots', () => {
  function busyHarness(): Harness {
    const h = new Harness();
    h.ok({ type: 'tenant.upsert', tenant: 'research', maxGpus: 16, maxGpuHours: 1000 });
    h.submit('a', { spec: { model: { params: 7e9, dtype: 'bf16' }, gpus: 1 } });
    h.submit('b');
    h.submit('c', { tenant: 'ops' });
    h.place('a', 1, { 'peer-a': ['GPU-1', 'GPU-2'], 'peer-b': ['GPU-3'] });
    h.transition('a', 'running', 1);
    h.apply({ type: 'checkpoint.commit', jobId: 'a', epoch: 1, step: 10, manifestId: 'm1', sizeBytes: 99, holders: ['peer-c'] });
    h.place('b', 1, { 'peer-c': ['GPU-1'] });
    h.apply({ type: 'job.cancel', jobId: 'c' });
    h.applyBytes(new Uint8Array([1, 2, 3]));
    h.at += 1000;
    return h;
  }

  it('restores an identical state, and the restored one answers the future identically', () => {
    const h = busyHarness();
    const bytes = h.fsm.snapshot();
    const restored = FabricStateMachine.restore(bytes);
    expectSameBytes(restored.snapshot(), bytes);
    expect(restored.appliedIndex).toBe(h.fsm.appliedIndex);
    expect(domainState(restored)).toEqual(domainState(h.fsm));
    expect(restored.audit()).toEqual(h.fsm.audit());

    const future: Body[] = [
      { type: 'job.submit', requestId: 'req-2', jobId: 'dup', tenant: 't', name: 'n', priority: 0, preemptible: false, spec: {} }, // a retry of an old request
      { type: 'job.submit', jobId: 'd', tenant: 'research', name: 'n', priority: 0, preemptible: false, spec: {} },
      { type: 'alloc.place', jobId: 'd', epoch: 1, allocations: [{ peerId: 'peer-a', devices: [{ uuid: 'GPU-1' }] }] }, // busy
      { type: 'alloc.place', jobId: 'd', epoch: 1, allocations: [{ peerId: 'peer-a', devices: [{ uuid: 'GPU-9' }] }] },
      { type: 'checkpoint.commit', jobId: 'a', epoch: 1, step: 20, manifestId: 'm2', sizeBytes: 99, holders: ['peer-c'] },
      { type: 'job.transition', jobId: 'a', to: 'lost', attempt: 1 },
      { type: 'checkpoint.gc', jobId: 'a', keep: 1 },
    ];
    const twin = new Harness();
    twin.fsm = restored;
    twin.index = h.index;
    twin.at = h.at;
    for (let i = 0; i < future.length; i++) {
      const body = { requestId: `future-${i}`, ...future[i] } as Body;
      expect(twin.apply(body)).toEqual(h.apply(body));
    }
    expectSameBytes(twin.fsm.snapshot(), h.fsm.snapshot());
  });

  it('gives the same bytes for the same state whatever order its maps were filled in', () => {
    const h = busyHarness();
    const once = FabricStateMachine.restore(h.fsm.snapshot());
    const twice = FabricStateMachine.restore(once.snapshot());
    expectSameBytes(twice.snapshot(), h.fsm.snapshot());
    expectSameBytes(h.fsm.snapshot(), h.fsm.snapshot());
  });

  it('keeps its limits across a restore', () => {
    const h = new Harness({ auditEntries: 3, maxRequests: 2 });
    for (let i = 0; i < 5; i++) h.apply({ type: 'noop' });
    const restored = FabricStateMachine.restore(h.fsm.snapshot());
    expect(restored.limits).toEqual(h.fsm.limits);
    expect(restored.audit().map((entry) => entry.seq)).toEqual([2, 3, 4]);
  });

  it('refuses an unknown version, garbage and an inconsistent snapshot, clearly', () => {
    const snapshot = packr.unpack(busyHarness().fsm.snapshot()) as Record<string, unknown>;
    const refusals: [unknown, RegExp][] = [
      [packr.pack({ ...snapshot, v: 2 }), /version 2 is unknown.*upgrade/],
      [packr.pack({ ...snapshot, v: undefined }), /no version/],
      [packr.pack([1, 2]), /not an object/],
      [new Uint8Array([0x92, 0x01]), /not valid msgpack/],
      [packr.pack({ ...snapshot, jobs: 'many' }), /invalid state snapshot: jobs/],
      [packr.pack({ ...snapshot, jobs: [] }), /belongs to no live job/],
    ];
    for (const [bytes, message] of refusals) {
      let caught: unknown;
      try {
        FabricStateMachine.restore(bytes as Uint8Array);
      } catch (err) {
        caught = err;
      }
      expect(isFabricError(caught, 'BAD_INPUT'), String(caught)).toBe(true);
      expect((caught as Error).message).toMatch(message);
    }
  });
});

describe('determinism (property)', () => {
  const jobIds = ['j1', 'j2', 'j3', 'j4'];
  const peers = ['p1', 'p2', 'p3'];
  const devices = [
    { uuid: 'g1' },
    { uuid: 'g2' },
    { uuid: 'g3' },
    { uuid: 'g1', milli: 300 },
    { uuid: 'm1', parentUuid: 'g3' },
    { uuid: 'm2', parentUuid: 'g3', milli: 500 },
  ];
  const tenants = ['t1', 't2'];

  const jobId = fc.constantFrom(...jobIds);
  // Attempts and epochs are mostly resolved against the current state when the step is applied,
  // so that sequences get past the refusals and reach placements, runs and checkpoints.
  const epoch = fc.oneof(fc.constant('next' as const), fc.constant('current' as const), fc.integer({ min: 1, max: 6 }));
  const attempt = fc.oneof(fc.constant('current' as const), fc.integer({ min: 0, max: 3 }));
  const spec = fc.dictionary(fc.string({ maxLength: 3 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 });
  const submit = fc.record({
    type: fc.constant('job.submit'),
    jobId,
    tenant: fc.constantFrom(...tenants),
    name: fc.constant('n'),
    priority: fc.integer({ min: -5, max: 5 }),
    preemptible: fc.boolean(),
    spec,
  });
  const transition = fc.record({
    type: fc.constant('job.transition'),
    jobId,
    to: fc.constantFrom(...JOB_STATES),
    attempt,
    exitCode: fc.option(fc.integer({ min: 0, max: 2 }), { nil: undefined }),
  });
  const peerGrant = fc.record({
    peerId: fc.constantFrom(...peers),
    devices: fc.uniqueArray(fc.constantFrom(...devices), { maxLength: 2, selector: (d) => d.uuid }),
  });
  const place = fc.record({
    type: fc.constant('alloc.place'),
    jobId,
    epoch,
    allocations: fc.uniqueArray(peerGrant, { minLength: 1, maxLength: 2, selector: (a) => a.peerId }),
  });
  const commit = fc.record({
    type: fc.constant('checkpoint.commit'),
    jobId,
    epoch,
    step: fc.nat(1000),
    manifestId: fc.constantFrom('m1', 'm2', 'm3', 'm4', 'm5'),
    sizeBytes: fc.nat(),
    holders: fc.uniqueArray(fc.constantFrom(...peers), { minLength: 1, maxLength: 2 }),
  });
  const upsert = fc.record({
    type: fc.constant('tenant.upsert'),
    tenant: fc.constantFrom(...tenants),
    maxGpus: fc.option(fc.nat(4), { nil: null }),
    maxGpuHours: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: null }),
  });
  const body: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
    { weight: 3, arbitrary: submit },
    fc.record({ type: fc.constant('job.cancel'), jobId }),
    { weight: 4, arbitrary: transition },
    { weight: 4, arbitrary: place },
    fc.record({ type: fc.constant('alloc.release'), jobId, epoch }),
    { weight: 3, arbitrary: commit },
    fc.record({ type: fc.constant('checkpoint.gc'), jobId, keep: fc.nat(3) }),
    upsert,
    fc.record({ type: fc.constant('noop') }),
  );
  const step = fc.oneof(
    {
      weight: 12,
      arbitrary: fc.record({
        body,
        /** Mostly a fresh request id; sometimes one used before (a retry, or a client bug). */
        reuse: fc.option(fc.nat(20), { freq: 6 }),
        actor: fc.constantFrom('peer-a', 'bob'),
        dt: fc.integer({ min: -2000, max: 120_000 }),
      }),
    },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 24 }).map((garbage) => ({ garbage })) },
  );

  /** The command a step stands for, its symbolic attempt and epoch read from `fsm`. */
  function resolve(fsm: FabricStateMachine, body: Record<string, unknown>): Record<string, unknown> {
    const job = typeof body['jobId'] === 'string' ? fsm.job(body['jobId']) : undefined;
    const resolved = { ...body };
    if (body['attempt'] === 'current') resolved['attempt'] = job?.attempt ?? 0;
    if (body['epoch'] === 'current') resolved['epoch'] = Math.max(1, job?.epoch ?? 1);
    if (body['epoch'] === 'next') resolved['epoch'] = (job?.epoch ?? 0) + 1;
    return resolved;
  }

  it('two replicas, one snapshotted and restored midway, agree on every answer and every byte', () => {
    const limits = { maxRequests: 12, requestRetentionMs: 300_000, auditEntries: 16, maxCheckpointsPerJob: 3, attemptsKept: 2 };
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 80, size: 'max' }), fc.nat(), (steps, splitSeed) => {
        let a = new FabricStateMachine(limits);
        let b = new FabricStateMachine(limits);
        const split = splitSeed % steps.length;
        let at = T0;
        steps.forEach((item, i) => {
          let data: Uint8Array;
          if ('garbage' in item) {
            data = item.garbage;
          } else {
            at = Math.max(0, at + item.dt);
            const requestId = item.reuse === null ? `r${i}` : `r${item.reuse}`;
            data = encodeCommand({ ...resolve(a, item.body), requestId, actor: item.actor, at } as Command);
          }
          if (i === split) b = FabricStateMachine.restore(b.snapshot());
          const resultA = a.apply(i + 1, data);
          const resultB = b.apply(i + 1, data);
          expect(resultB).toEqual(resultA);
          checkInvariants(a);
        });
        expectSameBytes(b.snapshot(), a.snapshot());
        a = FabricStateMachine.restore(a.snapshot());
        expectSameBytes(a.snapshot(), b.snapshot());
      }),
      { numRuns: 200 },
    );
  });

  /** What must hold after any command sequence: no device over-booked, allocations iff holding. */
  function checkInvariants(fsm: FabricStateMachine): void {
    const held = new Map<string, number>();
    const slices = new Set<string>();
    for (const allocation of fsm.allocations()) {
      for (const device of allocation.devices) {
        const key = `${allocation.peerId}|${device.uuid}`;
        held.set(key, (held.get(key) ?? 0) + device.milli);
        if (device.parentUuid !== null) slices.add(`${allocation.peerId}|${device.parentUuid}`);
      }
    }
    for (const [key, milli] of held) expect(milli, key).toBeLessThanOrEqual(1000);
    for (const parent of slices) expect(held.has(parent), parent).toBe(false);
    for (const job of fsm.jobs()) {
      const live = job.state === 'placed' || job.state === 'running';
      expect(job.allocationIds.length > 0, `${job.id} ${job.state}`).toBe(live);
      for (const id of job.allocationIds) expect(fsm.allocation(id)?.epoch).toBe(job.epoch);
    }
  }
});
