/**
 * The leader's placement loop against a real state machine (commands applied as Raft would
 * apply them) and gossiped peer states: queue order, and what a long queue of jobs that cannot
 * run costs (one scheduling cycle per shape of job, not one per job).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/index.ts';
import { FabricStateMachine, encodeCommand, type Command } from '../../src/placement/fsm/index.ts';
import { Scheduler, type ClusterState, type PlacementRequest, type ScheduleResult } from '../../src/placement/index.ts';
import { PlacementService, type PlacementControl } from '../../src/node/placement-service.ts';
import type { CommandRequest } from '../../src/node/control-plane.ts';
import { makeState } from '../gossip/mem-transport.ts';

/** The control plane as the placement loop sees it: a leader whose proposals apply at once. */
class InstantControl {
  readonly id = 'peer-a';
  readonly state = new FabricStateMachine();
  readonly #listeners = new Set<() => void>();
  #index = 0;

  localStatus(): ReturnType<PlacementControl['localStatus']> {
    return { role: 'leader', voters: ['peer-a'], learners: [] } as unknown as ReturnType<PlacementControl['localStatus']>;
  }

  onApplied(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  leaseSilenceOf(): number {
    return 0;
  }

  async submit(request: CommandRequest): Promise<{ index: number; result: ReturnType<FabricStateMachine['apply']> }> {
    const index = ++this.#index;
    const result = this.state.apply(index, encodeCommand({ ...request, at: 1_000 + index } as Command));
    for (const l of this.#listeners) l();
    return { index, result };
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

function setup(gpus: number): { control: InstantControl; scheduler: CountingScheduler } {
  service?.stop();
  const control = new InstantControl();
  const scheduler = new CountingScheduler();
  const base = makeState('peer-a');
  const device = base.inventory.devices[0]!;
  const devices = Array.from({ length: gpus }, (_, i) => ({ ...device, index: i, uuid: `GPU-peer-a-${i}` }));
  const state = { ...base, inventory: { ...base.inventory, devices } };
  service = new PlacementService({
    control: control as unknown as PlacementControl,
    peers: () => [{ peerId: 'peer-a', health: 'alive', state }],
    log: silentLogger,
    wallNow: () => Date.now(),
    scheduler,
  });
  return { control, scheduler };
}

async function submit(control: InstantControl, jobId: string, gpus: number, priority = 0): Promise<void> {
  const { result } = await control.submit({
    type: 'job.submit',
    requestId: `rq-${jobId}`,
    actor: 'test',
    jobId,
    tenant: 'default',
    name: jobId,
    priority,
    preemptible: false,
    spec: { gpus, waitForCapacity: true, command: ['true'] },
  });
  expect(result.ok).toBe(true);
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
    // One cycle for the 2-GPU shape at this capacity, one for the small job; placing the small
    // job changed capacity, so the big shape is planned once more: never once per big job.
    expect(scheduler.calls).toBeLessThanOrEqual(4);
    const settled = scheduler.calls;
    // Idle passes (one a second) at unchanged capacity plan nothing again.
    await new Promise((r) => setTimeout(r, 1_200));
    expect(scheduler.calls).toBe(settled);
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
});
