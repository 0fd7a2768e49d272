/**
 * The leader's placement loop against a real state machine (commands applied as Raft would
 * apply them) and gossiped peer states: queue order, what a long queue of jobs that cannot run
 * costs (one scheduling cycle per shape of job, not one per job), and the pipeline: many jobs
 * planned in one pass and proposed together without double-booking a device, a refused (stale)
 * proposal planned again, a job whose proposal is in flight never proposed twice, and a held
 * preemptor's devices kept for it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/index.ts';
import { FabricStateMachine, encodeCommand, type Command } from '../../src/placement/fsm/index.ts';
import { Scheduler, type ClusterState, type PlacementRequest, type ScheduleResult } from '../../src/placement/index.ts';
import { PlacementService, type PlacementControl } from '../../src/node/placement-service.ts';
import { restoreOrder } from '../../src/checkpoint/index.ts';
import type { CommandRequest } from '../../src/node/control-plane.ts';
import type { NodeState } from '../../src/gossip/state.ts';
import { makeState } from '../gossip/mem-transport.ts';

type ApplyResult = ReturnType<FabricStateMachine['apply']>;
type PlaceRequest = Extract<CommandRequest, { type: 'alloc.place' }>;

/**
 * The control plane as the placement loop sees it: a leader whose proposals apply at once, or,
 * with `deferPlacements`, whose `alloc.place` proposals wait (in flight) until `flush()`.
 */
class InstantControl {
  readonly id = 'peer-a';
  readonly state = new FabricStateMachine();
  /** The Raft group's members (the peers the scheduler may use). */
  members = ['peer-a'];
  deferPlacements = false;
  /** Every alloc.place proposed, in order, with its answer once applied. */
  readonly placements: { request: PlaceRequest; result?: ApplyResult }[] = [];
  /** Runs right before a proposal is applied (to change the state under it). */
  beforeApply: ((request: CommandRequest) => void) | undefined;
  readonly #pending: (() => void)[] = [];
  readonly #listeners = new Set<() => void>();
  #index = 0;

  localStatus(): ReturnType<PlacementControl['localStatus']> {
    return { role: 'leader', voters: ['peer-a'], learners: this.members.filter((m) => m !== 'peer-a') } as unknown as ReturnType<PlacementControl['localStatus']>;
  }

  onApplied(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  leaseSilenceOf(): number {
    return 0;
  }

  withLeasesRefused<T>(_peer: string, work: () => Promise<T>): Promise<T> {
    return work();
  }

  /** Applies a command as committed log entry (no hooks, no deferral): what another leader would have done. */
  applyNow(request: CommandRequest): ApplyResult {
    const index = ++this.#index;
    const result = this.state.apply(index, encodeCommand({ ...request, at: Date.now() + clockSkewMs } as Command));
    for (const l of this.#listeners) l();
    return result;
  }

  async submit(request: CommandRequest): Promise<{ index: number; result: ApplyResult }> {
    const record = request.type === 'alloc.place' ? { request } : undefined;
    if (record !== undefined) this.placements.push(record);
    if (record !== undefined && this.deferPlacements) await new Promise<void>((resolve) => this.#pending.push(resolve));
    this.beforeApply?.(request);
    const result = this.applyNow(request);
    if (record !== undefined) (record as { result?: ApplyResult }).result = result;
    return { index: this.#index, result };
  }

  /** Placements proposed and not applied yet. */
  get pending(): number {
    return this.#pending.length;
  }

  /** Applies every deferred placement, in the order proposed. */
  flush(): void {
    for (const resolve of this.#pending.splice(0)) resolve();
  }
}

class CountingScheduler extends Scheduler {
  calls = 0;
  override schedule(cluster: ClusterState, request: PlacementRequest, options?: Parameters<Scheduler['schedule']>[2]): ScheduleResult {
    this.calls++;
    return super.schedule(cluster, request, options);
  }
}

let service: PlacementService | undefined;
afterEach(() => service?.stop());

/** A peer's gossiped state with `gpus` GPUs (32 cores, 256 GiB). */
function peerState(peerId: string, gpus: number): NodeState {
  const base = makeState(peerId);
  const device = base.inventory.devices[0]!;
  const devices = Array.from({ length: gpus }, (_, i) => ({ ...device, index: i, uuid: `GPU-${peerId}-${i}` }));
  return { ...base, inventory: { ...base.inventory, devices } };
}

interface Fabric {
  control: InstantControl;
  scheduler: CountingScheduler;
  /** The gossiped states, by peer (replace one to change what the fabric reports). */
  states: Map<string, NodeState>;
}

/** Added to the service's wall clock (to end a preemptor's hold without waiting for it). */
let clockSkewMs = 0;

function setupFabric(peers: number, gpusPerPeer: number, reserveAfterMs?: number): Fabric {
  service?.stop();
  const control = new InstantControl();
  const scheduler = new CountingScheduler();
  const ids = Array.from({ length: peers }, (_, i) => `peer-${String.fromCharCode(97 + i)}`);
  control.members = ids;
  const states = new Map(ids.map((id) => [id, peerState(id, gpusPerPeer)]));
  service = new PlacementService({
    control: control as unknown as PlacementControl,
    peers: () => [...states].map(([peerId, state]) => ({ peerId, health: 'alive' as const, state })),
    log: silentLogger,
    wallNow: () => Date.now() + clockSkewMs,
    scheduler,
    ...(reserveAfterMs !== undefined ? { reserveAfterMs } : {}),
  });
  clockSkewMs = 0;
  return { control, scheduler, states };
}

function setup(gpus: number): { control: InstantControl; scheduler: CountingScheduler } {
  return setupFabric(1, gpus);
}

async function submit(control: InstantControl, jobId: string, gpus: number, priority = 0, extra: Record<string, unknown> = {}): Promise<void> {
  const { result } = await control.submit({
    type: 'job.submit',
    requestId: `rq-${jobId}`,
    actor: 'test',
    jobId,
    tenant: 'default',
    name: jobId,
    priority,
    preemptible: false,
    spec: { gpus, waitForCapacity: true, command: ['true'], ...extra },
  });
  expect(result.ok).toBe(true);
}

/**
 * What committed state must never show: a device granted past 1000 thousandths, a device twice in
 * one allocation, a peer's host CPU or memory over its size.
 */
function expectNoDoubleBooking(control: InstantControl, states: Map<string, NodeState>): void {
  const milli = new Map<string, number>();
  const cpu = new Map<string, number>();
  const memory = new Map<string, number>();
  for (const allocation of control.state.allocations()) {
    const uuids = allocation.devices.map((d) => d.uuid);
    expect(new Set(uuids).size, `devices of ${allocation.id}`).toBe(uuids.length);
    for (const device of allocation.devices) {
      const key = `${allocation.peerId}/${device.uuid}`;
      milli.set(key, (milli.get(key) ?? 0) + device.milli);
    }
    const spec = control.state.job(allocation.jobId)!.spec as { cpu?: number; memory?: string };
    cpu.set(allocation.peerId, (cpu.get(allocation.peerId) ?? 0) + (spec.cpu ?? 0));
    memory.set(allocation.peerId, (memory.get(allocation.peerId) ?? 0) + (spec.memory === undefined ? 0 : Number.parseInt(spec.memory, 10)));
  }
  for (const [device, total] of milli) expect(total, device).toBeLessThanOrEqual(1000);
  for (const [peerId, cores] of cpu) expect(cores, `cores on ${peerId}`).toBeLessThanOrEqual(states.get(peerId)!.inventory.host.cpuCores);
  for (const [peerId, gib] of memory) expect(gib * 1024, `memory on ${peerId}`).toBeLessThanOrEqual(states.get(peerId)!.inventory.host.memoryMiB);
}

async function until(what: string, fn: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const placed = (control: InstantControl, jobId: string): boolean => control.state.job(jobId)!.state !== 'queued';

describe('placement service', () => {
  it('plans one job per shape: a long queue that cannot run costs one cycle, and a job behind it still runs', async () => {
    const { control, scheduler } = setup(1);
    for (let i = 0; i < 300; i++) await submit(control, `big-${String(i).padStart(3, '0')}`, 2);
    await submit(control, 'small', 1);
    service!.start();
    await until('the small job placed', () => placed(control, 'small'));
    expect(control.state.waitingJobs()).toHaveLength(300);
    // One cycle for the 2-GPU shape at this capacity, one for the small job (a placement only
    // takes capacity: the big shape is not planned again for it); never one per big job.
    expect(scheduler.calls).toBeLessThanOrEqual(4);
    const settled = scheduler.calls;
    // Idle passes (one a second) at unchanged capacity plan nothing again.
    await new Promise((r) => setTimeout(r, 1_200));
    expect(scheduler.calls).toBe(settled);
  });

  it('at unchanged capacity a pass looks only at the jobs that entered the queue since the last; new capacity looks at them all', async () => {
    const { control, states } = setupFabric(1, 1);
    for (let i = 0; i < 300; i++) await submit(control, `big-${String(i).padStart(3, '0')}`, 2);
    // How many waiting jobs each pass is handed.
    const looked: number[] = [];
    const added = control.state.waitingAddedAfter.bind(control.state);
    control.state.waitingAddedAfter = (seq: number) => {
      const r = added(seq);
      looked.push(r.jobs.length);
      return r;
    };
    service!.start();
    await until('a first pass', () => looked.length > 0);
    expect(looked[0]).toBe(300);
    await new Promise((r) => setTimeout(r, 1_200)); // idle passes
    looked.length = 0;
    await submit(control, 'small', 1);
    await until('the small job placed', () => placed(control, 'small'));
    expect(Math.max(...looked)).toBeLessThanOrEqual(1);
    // A second peer of two GPUs: capacity grew, every waiting job is looked at again, one runs.
    looked.length = 0;
    states.set('peer-b', peerState('peer-b', 2));
    control.members = ['peer-a', 'peer-b'];
    await until('a big job placed', () => control.state.waitingJobs().length === 299);
    expect(Math.max(...looked)).toBe(300);
  });

  it('places the waiting job that comes first in queue order: priority, then age', async () => {
    const { control } = setup(1);
    await submit(control, 'old-low', 1, 0);
    await submit(control, 'high', 1, 5);
    await submit(control, 'young-low', 1, 0);
    service!.start();
    await until('one job placed', () => control.state.waitingJobs().length === 2);
    expect(placed(control, 'high')).toBe(true);

    // A second GPU appears: next in order is the older of the two equal-priority jobs.
    const { control: second } = setup(2);
    await submit(second, 'old-low', 1, 0);
    await submit(second, 'high', 1, 5);
    await submit(second, 'young-low', 1, 0);
    service!.start();
    await until('two jobs placed', () => second.state.waitingJobs().length === 1);
    expect(second.state.waitingJobs().map((j) => j.id)).toEqual(['young-low']);
  });

  it('plans many jobs in one pass and proposes them together, never two on one device', async () => {
    const { control, scheduler, states } = setupFabric(3, 8);
    control.deferPlacements = true;
    // 48 jobs of four shapes asking for 45 GPUs (host CPU and memory too) on 24 GPUs.
    const sizes = [1, 2, 0.5, 0.25];
    for (let i = 0; i < 48; i++) await submit(control, `job-${String(i).padStart(2, '0')}`, sizes[i % 4]!, 0, { cpu: 2, memory: '16GiB' });
    service!.start();
    await until('a pass proposed placements', () => control.pending > 0);
    // One pass planned many jobs on its working state before any of them committed.
    const firstPass = control.pending;
    expect(firstPass).toBeGreaterThan(10);
    expect(control.state.allocations()).toHaveLength(0);
    const cycles = scheduler.calls;
    control.flush();
    // Commit whatever follows at once, until the fabric is as full as the queue can make it.
    control.deferPlacements = false;
    await until('every proposal answered', () => control.pending === 0 && control.placements.every((p) => p.result !== undefined));
    await new Promise((r) => setTimeout(r, 300));
    control.flush();
    expect(control.placements.filter((p) => !p.result!.ok).map((p) => p.result)).toEqual([]);
    expectNoDoubleBooking(control, states);
    const placedIds = control.state.allocations().map((a) => a.jobId);
    // Every proposal of the first pass committed, and no job was proposed twice.
    expect(new Set(placedIds).size).toBeGreaterThanOrEqual(firstPass);
    expect(new Set(control.placements.map((p) => p.request.jobId)).size).toBe(control.placements.length);
    // The fabric is full for what still waits: 24 GPUs, 45 asked.
    expect(control.state.waitingJobs().length).toBeGreaterThan(0);
    const gpusHeld = control.state.allocations().reduce((sum, a) => sum + a.devices.reduce((s, d) => s + d.milli, 0), 0) / 1000;
    expect(gpusHeld).toBeGreaterThan(20);
    expect(cycles).toBeLessThan(48 + 4); // one cycle per job placed, one per shape that stopped fitting
  });

  it('places a job with a checkpoint on its holders in restore order: on the one that restores it ahead of need', async () => {
    const holders = ['peer-b', 'peer-c', 'peer-d'];
    // A job whose first holder is not the first peer the scheduler would pick anyway.
    const jobId = Array.from({ length: 50 }, (_, i) => `ck-${i}`).find((id) => restoreOrder(id, holders)[0] === 'peer-d')!;
    const { control, states } = setupFabric(4, 1);
    await submit(control, jobId, 1);
    const uuid = states.get('peer-a')!.inventory.devices[0]!.uuid;
    const ok = (r: ApplyResult) => expect(r).toMatchObject({ ok: true });
    ok(control.applyNow({ type: 'alloc.place', requestId: 'p1', actor: 'test', jobId, epoch: 1, allocations: [{ peerId: 'peer-a', devices: [{ uuid }] }] }));
    ok(control.applyNow({ type: 'job.transition', requestId: 't1', actor: 'test', jobId, attempt: 1, to: 'running' }));
    ok(control.applyNow({ type: 'checkpoint.commit', requestId: 'c1', actor: 'test', jobId, epoch: 1, step: 20, manifestId: 'm'.repeat(64), sizeBytes: 1, holders }));
    ok(control.applyNow({ type: 'job.transition', requestId: 't2', actor: 'test', jobId, attempt: 1, to: 'restarting', reason: 'host lost' }));
    service!.start();
    await until('the job placed again', () => placed(control, jobId) && control.state.job(jobId)!.state !== 'restarting');
    expect(control.state.allocations().map((a) => a.peerId)).toEqual(['peer-d']);
  });

  it('plans a job again when the state machine refuses its placement as stale, under a new request id', async () => {
    const { control, states } = setupFabric(1, 2);
    await submit(control, 'x', 1);
    let intruded: string | undefined;
    control.beforeApply = (request) => {
      if (request.type !== 'alloc.place' || request.jobId !== 'x' || intruded !== undefined) return;
      // Another placement commits first and takes the very device x's plan names.
      intruded = request.allocations[0]!.devices[0]!.uuid;
      expect(control.applyNow({ type: 'job.submit', requestId: 'rq-other', actor: 'test', jobId: 'other', tenant: 'default', name: 'other', priority: 0, preemptible: false, spec: { gpus: 1, command: ['true'] } }).ok).toBe(true);
      const taken = control.applyNow({ type: 'alloc.place', requestId: 'other:place:1', actor: 'elsewhere', jobId: 'other', epoch: 1, allocations: [{ peerId: 'peer-a', devices: [{ uuid: intruded }] }] });
      expect(taken.ok).toBe(true);
    };
    service!.start();
    await until('x placed', () => placed(control, 'x'));
    const tries = control.placements.filter((p) => p.request.jobId === 'x');
    expect(tries.map((t) => t.result!.ok)).toEqual([false, true]);
    expect(tries[0]!.result).toMatchObject({ ok: false, code: 'DEVICE_BUSY' });
    expect(tries.map((t) => t.request.requestId)).toEqual(['x:place:1', 'x:place:1/1']);
    const xDevice = control.state.allocations().find((a) => a.jobId === 'x')!.devices[0]!.uuid;
    expect(xDevice).not.toBe(intruded);
    expectNoDoubleBooking(control, states);
  });

  it('never proposes a job twice while its placement is in flight, not even across a rebuilt working state', async () => {
    const { control, states } = setupFabric(1, 1);
    control.deferPlacements = true;
    await submit(control, 'x', 1);
    service!.start();
    await until('x proposed', () => control.pending === 1);
    // Passes run (new submissions, a peer's state replaced: the working state is rebuilt) while
    // x's placement waits for its commit: x is not planned again, and its GPU is not handed out.
    await submit(control, 'y', 1);
    const a = states.get('peer-a')!;
    states.set('peer-a', { ...a, seq: a.seq + 1, labels: { ...a.labels, extra: { rack: 'r2' } } });
    await new Promise((r) => setTimeout(r, 400));
    await submit(control, 'z', 0.5);
    await new Promise((r) => setTimeout(r, 300));
    expect(control.placements.map((p) => p.request.jobId)).toEqual(['x']);
    control.flush();
    await until('x placed', () => placed(control, 'x'));
    await new Promise((r) => setTimeout(r, 300));
    expect(control.placements.map((p) => p.request.jobId)).toEqual(['x']);
    expect(control.placements[0]!.result!.ok).toBe(true);
    expect(control.state.waitingJobs().map((j) => j.id).sort()).toEqual(['y', 'z']);
    expectNoDoubleBooking(control, states);
  });

  it('never proposes a job twice while its placement is in flight, even when that placement no longer fits', async () => {
    const { control, states } = setupFabric(1, 2);
    control.deferPlacements = true;
    await submit(control, 'x', 1);
    service!.start();
    await until('x proposed', () => control.pending === 1);
    // Another placement commits on x's device before x's proposal does: the working state drops
    // x's plan (it no longer fits) while x's proposal is still in flight. The other GPU is free,
    // but x is not planned again until its answer comes.
    const device = control.placements[0]!.request.allocations[0]!.devices[0]!.uuid;
    expect(control.applyNow({ type: 'job.submit', requestId: 'rq-other', actor: 'test', jobId: 'other', tenant: 'default', name: 'other', priority: 0, preemptible: false, spec: { gpus: 1, command: ['true'] } }).ok).toBe(true);
    expect(control.applyNow({ type: 'alloc.place', requestId: 'other:place:1', actor: 'elsewhere', jobId: 'other', epoch: 1, allocations: [{ peerId: 'peer-a', devices: [{ uuid: device }] }] }).ok).toBe(true);
    await new Promise((r) => setTimeout(r, 400));
    expect(control.placements.map((p) => p.request.requestId)).toEqual(['x:place:1']);
    // Its answer (refused: the device is taken) lets it be planned again, on the free GPU.
    control.deferPlacements = false;
    control.flush();
    await until('x placed', () => placed(control, 'x'));
    expect(control.placements.map((p) => [p.request.requestId, p.result!.ok])).toEqual([
      ['x:place:1', false],
      ['x:place:1/1', true],
    ]);
    expectNoDoubleBooking(control, states);
  });

  it('keeps the devices of a held preemptor for it: the released victim does not take them back meanwhile', async () => {
    const { control, states } = setupFabric(1, 2);
    const submitJob = (jobId: string, priority: number, preemptible: boolean): void => {
      const spec = { gpus: 2, priority, preemptible, waitForCapacity: true, command: ['true'] };
      expect(control.applyNow({ type: 'job.submit', requestId: `rq-${jobId}`, actor: 'test', jobId, tenant: 'default', name: jobId, priority, preemptible, spec }).ok).toBe(true);
    };
    submitJob('victim', 0, true);
    service!.start();
    await until('the victim placed', () => placed(control, 'victim'));
    submitJob('boss', 10, false);
    await until('the victim released', () => control.state.job('victim')!.state === 'restarting');
    // The victim waits, as a restarting job, while it stops; its GPUs are kept for the boss.
    await new Promise((r) => setTimeout(r, 400));
    expect(control.placements.map((p) => p.request.jobId)).toEqual(['victim']);
    expect(control.state.job('boss')!.state).toBe('queued');
    // The hold ends: the boss takes those GPUs, the victim waits for them.
    clockSkewMs = 60_000;
    await until('the boss placed', () => placed(control, 'boss'));
    await new Promise((r) => setTimeout(r, 200));
    expect(control.placements.map((p) => [p.request.jobId, p.result!.ok])).toEqual([
      ['victim', true],
      ['boss', true],
    ]);
    expect(control.state.job('victim')!.state).toBe('restarting');
    expectNoDoubleBooking(control, states);
  });

  it('a large job that has waited reserves peers: smaller jobs of no higher priority do not starve it', async () => {
    for (const reserveAfterMs of [3_600_000, 0]) {
      const { control, states } = setupFabric(1, 2, reserveAfterMs);
      await submit(control, 'filler', 1);
      service!.start();
      await until('the filler placed', () => placed(control, 'filler'));
      await submit(control, 'big', 2);
      await submit(control, 'small', 1);
      await new Promise((r) => setTimeout(r, 300));
      if (reserveAfterMs > 0) {
        // Plain backfill: the small job takes the free GPU, and the big one waits on.
        expect(placed(control, 'small')).toBe(true);
        expect(placed(control, 'big')).toBe(false);
        continue;
      }
      // The big job has waited long enough: the peer is held for it; the small one waits, and
      // `explain` says why.
      expect(placed(control, 'small')).toBe(false);
      expect(JSON.stringify(service!.explain('small').explanation)).toContain('reserved');
      // The filler ends: the big job gets both GPUs before the small one gets any.
      expect((await control.submit({ type: 'job.cancel', requestId: 'rq-cancel', actor: 'test', jobId: 'filler' })).result.ok).toBe(true);
      await until('the big job placed', () => placed(control, 'big'));
      expect(placed(control, 'small')).toBe(false);
      expectNoDoubleBooking(control, states);
    }
  });
});
