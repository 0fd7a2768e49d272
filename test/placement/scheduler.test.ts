import { beforeAll, describe, expect, test } from 'vitest';
import type { Device, Link } from '../../src/devices/model.ts';
import { AllocPlaceSchema, AllocReleaseSchema, FabricStateMachine, encodeCommand, type Command } from '../../src/placement/fsm/index.ts';
import {
  ClusterState,
  Scheduler,
  snapshotOf,
  checkFeasibleEver,
  formatExplanation,
  requestFromSpec,
  scheduleQueue,
  toAllocPlaceCommand,
  toReleaseCommands,
  verifyPlan,
  type JobSpecInput,
  type Plan,
  type PlacementRequest,
  type PeerView,
  type ScheduleResult,
} from '../../src/placement/index.ts';
import { clusterOf, peerOf } from './helpers.ts';

let h100a: PeerView;
let h100b: PeerView;
let a100: PeerView;
let mig: PeerView;
let l40s: PeerView;
let mi300: PeerView;

beforeAll(async () => {
  h100a = await peerOf('h100-a', 'h100-sxm-8', { zone: 'eu-1', price: 3 });
  h100b = await peerOf('h100-b', 'h100-sxm-8', { zone: 'eu-2', price: 2 });
  a100 = await peerOf('a100', 'a100-sxm-8', { zone: 'eu-1', labels: { team: 'ml' } });
  mig = await peerOf('mig', 'h100-mig', { zone: 'eu-1' });
  l40s = await peerOf('l40s', 'l40s-1', { zone: 'us-1', spot: true, price: 1 });
  mi300 = await peerOf('mi300', 'mi300x-4', { zone: 'us-1' });
});

function req(spec: JobSpecInput, jobId = 'job'): PlacementRequest {
  return requestFromSpec(spec, jobId);
}

/** Schedules and applies the plan (victims released first), as the leader would after commit. */
function commit(cluster: ClusterState, result: ScheduleResult, request: PlacementRequest): Plan {
  const plan = result.plan;
  if (plan === null) throw new Error(`not placed: ${result.explain.summary}`);
  expect(verifyPlan(cluster, plan, request)).toEqual({ ok: true });
  for (const victim of plan.preemptions) cluster.release(victim.jobId);
  cluster.place(
    { jobId: plan.jobId, epoch: 1, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: cluster.now },
    plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
  );
  return plan;
}

function devicesOn(peer: PeerView, plan: Plan): number[] {
  const member = plan.members.find((m) => m.peerId === peer.peerId)!;
  return member.devices.map((d) => peer.devices.find((x) => x.uuid === d.uuid)!.index).sort((a, b) => a - b);
}

/** An 8-GPU host with two NVLink islands of four (0–3, 4–7), PCIe switches per pair, two NUMA nodes. */
function twoIslandPeer(peerId: string): PeerView {
  const devices: Device[] = Array.from({ length: 8 }, (_, index) => ({
    index,
    uuid: `GPU-${peerId}-${index}`,
    vendor: 'nvidia',
    model: 'NVIDIA A100-SXM4-80GB',
    memoryMiB: 81_920,
    numaNode: index < 4 ? 0 : 1,
    migEnabled: false,
    migInstances: [],
  }));
  const links: Link[] = [];
  for (let a = 0; a < 8; a++) {
    for (let b = a + 1; b < 8; b++) {
      const sameIsland = a < 4 === b < 4;
      links.push({ a, b, kind: sameIsland ? 'nvlink' : Math.floor(a / 2) === Math.floor(b / 2) ? 'pix' : 'sys', width: sameIsland ? 12 : 0 });
    }
  }
  return { peerId, labels: { spot: 'false' }, zone: null, region: null, cloud: null, pricePerGpuHour: null, spot: false, cpuMilli: 64_000, memoryMiB: 512 * 1024, devices, links, schedulable: true };
}

describe('whole GPUs and topology', () => {
  test('a 4-GPU NVLink job gets four GPUs of one island, by UUID', () => {
    const cluster = clusterOf([h100a]);
    const request = req({ gpus: 4, interconnect: 'nvlink' });
    const result = new Scheduler().schedule(cluster, request);
    expect(result.status.code).toBe('Success');
    const plan = commit(cluster, result, request);
    expect(plan.members).toHaveLength(1);
    expect(plan.members[0]!.devices).toHaveLength(4);
    expect(plan.members[0]!.devices.every((d) => d.milli === 1000 && d.parentUuid === null && d.uuid.startsWith('GPU-'))).toBe(true);
    expect(cluster.peerById.get('h100-a')!.wholeFree).toBe(4);
  });

  test('on a two-island host, jobs stay inside one island and leave the other whole', () => {
    const peer = twoIslandPeer('split');
    const cluster = clusterOf([peer]);
    const scheduler = new Scheduler();
    const two = commit(cluster, scheduler.schedule(cluster, req({ gpus: 2 }, 'two')), req({ gpus: 2 }, 'two'));
    const first = devicesOn(peer, two);
    expect(first.every((i) => i < 4) || first.every((i) => i >= 4)).toBe(true);
    // Four on NVLink: only the untouched island has four.
    const four = commit(cluster, scheduler.schedule(cluster, req({ gpus: 4, interconnect: 'nvlink' }, 'four')), req({ gpus: 4, interconnect: 'nvlink' }, 'four'));
    const island = devicesOn(peer, four);
    expect(island.every((i) => i < 4) || island.every((i) => i >= 4)).toBe(true);
    expect(new Set([...first, ...island]).size).toBe(6);
    // Two more must come from the two left in the first island: NVLink pair.
    const last = devicesOn(peer, commit(cluster, scheduler.schedule(cluster, req({ gpus: 2, interconnect: 'nvlink' }, 'last')), req({ gpus: 2, interconnect: 'nvlink' }, 'last')));
    expect(last.every((i) => i < 4) === first.every((i) => i < 4)).toBe(true);
  });

  test('an NVLink job that no island can hold is refused as unresolvable', () => {
    const cluster = clusterOf([twoIslandPeer('split')]);
    const result = new Scheduler().schedule(cluster, req({ gpus: 6, interconnect: 'nvlink' }));
    expect(result.status.code).toBe('UnschedulableAndUnresolvable');
    expect(result.explain.summary).toBe('1 peers: 1 have no NVLink island of 6 matching GPUs');
    // Without the NVLink requirement six fit, spread over both islands.
    expect(new Scheduler().schedule(cluster, req({ gpus: 6 })).status.code).toBe('Success');
  });

  test('peers with fewer matching GPUs than asked are counted by reason', () => {
    const cluster = clusterOf([h100a, a100, l40s, mi300]);
    const result = new Scheduler().schedule(cluster, req({ gpus: 8, models: ['A100'], spotTolerant: true }));
    expect(result.plan!.members[0]!.peerId).toBe('a100');
    const none = new Scheduler().schedule(cluster, req({ gpus: 2, gpuMemory: '100GiB', vendor: 'nvidia', spotTolerant: true }));
    expect(none.status.code).toBe('UnschedulableAndUnresolvable');
    expect(none.explain.summary).toBe('4 peers: 3 GPUs with less than 100 GiB, 1 wrong vendor');
    const wrongModel = new Scheduler().schedule(cluster, req({ gpus: 1, models: ['H200'] }));
    expect(wrongModel.explain.removed.map((r) => `${r.count} ${r.reason}`)).toEqual(['3 wrong model', '1 spot peers (job is not spot-tolerant)']);
  });
});

describe('fractions and MIG slices', () => {
  test('shares of one GPU pack onto the fullest GPU that fits, never past 1000', () => {
    const cluster = clusterOf([h100a]);
    const scheduler = new Scheduler();
    const uuids: string[] = [];
    for (const [i, gpus] of [0.5, 0.25, 0.25, 0.5].entries()) {
      const request = req({ gpus }, `share-${i}`);
      const plan = commit(cluster, scheduler.schedule(cluster, request), request);
      expect(plan.members[0]!.devices).toEqual([{ uuid: expect.any(String), milli: gpus * 1000, parentUuid: null }]);
      uuids.push(plan.members[0]!.devices[0]!.uuid);
    }
    // 0.5 + 0.25 + 0.25 fill the first GPU exactly; the last half goes to a second one.
    expect(uuids[1]).toBe(uuids[0]);
    expect(uuids[2]).toBe(uuids[0]);
    expect(uuids[3]).not.toBe(uuids[0]);
    const peer = cluster.peerById.get('h100-a')!;
    expect([...peer.free].sort()).toEqual([0, 1000, 1000, 1000, 1000, 1000, 1000, 500]);
  });

  test('a share with a memory floor needs that much of the GPU', () => {
    const cluster = clusterOf([l40s]);
    const fits = req({ gpus: 0.5, gpuMemory: '20GiB', spotTolerant: true });
    expect(new Scheduler().schedule(cluster, fits).status.code).toBe('Success');
    const tooBig = new Scheduler().schedule(cluster, req({ gpus: 0.25, gpuMemory: '20GiB', spotTolerant: true }));
    expect(tooBig.explain.summary).toBe('1 peers: 1 GPUs with less than 20 GiB in a 25% share');
  });

  test('MIG slices are granted whole with their parent, each once', () => {
    const cluster = clusterOf([mig]);
    const scheduler = new Scheduler();
    const parent = mig.devices[0]!;
    const slices = parent.migInstances.filter((m) => m.profile === '1g.10gb').map((m) => m.uuid);
    const got: string[] = [];
    for (const id of ['m1', 'm2']) {
      const request = req({ mig: '1g.10gb' }, id);
      const plan = commit(cluster, scheduler.schedule(cluster, request), request);
      expect(plan.members[0]!.devices).toEqual([{ uuid: expect.stringMatching(/^MIG-/), milli: 1000, parentUuid: parent.uuid }]);
      got.push(plan.members[0]!.devices[0]!.uuid);
    }
    expect(got.sort()).toEqual([...slices].sort());
    const third = scheduler.schedule(cluster, req({ mig: '1g.10gb' }, 'm3'));
    expect(third.status.code).toBe('Unschedulable');
    expect(third.explain.summary).toBe('1 peers: 1 lack a free MIG 1g.10gb instance');
    // The MIG-mode GPU itself is never handed out whole.
    const whole = scheduler.schedule(cluster, req({ gpus: 1 }, 'w'));
    expect(whole.explain.summary).toBe('1 peers: 1 GPUs in MIG mode (only MIG slices can be granted)');
    expect(scheduler.schedule(cluster, req({ mig: '3g.40gb' }, 'big')).status.code).toBe('Success');
  });
});

describe('gangs', () => {
  test('a gang is placed whole in one zone when one zone can hold it', async () => {
    const peers = [h100a, await peerOf('h100-c', 'h100-sxm-8', { zone: 'eu-2' }), h100b, await peerOf('h100-d', 'h100-sxm-8', { zone: 'eu-3' })];
    const cluster = clusterOf(peers);
    const request = req({ nodes: 2, gpusPerNode: 8 });
    const plan = commit(cluster, new Scheduler().schedule(cluster, request), request);
    expect(plan.members.map((m) => m.peerId).sort()).toEqual(['h100-b', 'h100-c']);
    expect(plan.members.every((m) => m.devices.length === 8)).toBe(true);
  });

  test('spreadOver puts the members in distinct zones', async () => {
    const peers = [h100a, await peerOf('h100-c', 'h100-sxm-8', { zone: 'eu-2' }), h100b, await peerOf('h100-d', 'h100-sxm-8', { zone: 'eu-3' })];
    const cluster = clusterOf(peers);
    const plan = new Scheduler().schedule(cluster, req({ nodes: 3, gpusPerNode: 1, spreadOver: 'zone' })).plan!;
    const zones = plan.members.map((m) => peers.find((p) => p.peerId === m.peerId)!.zone);
    expect(new Set(zones).size).toBe(3);
  });

  test('all or nothing: too few peers fit, nothing is placed', () => {
    const cluster = clusterOf([h100a, h100b]);
    const scheduler = new Scheduler();
    commit(cluster, scheduler.schedule(cluster, req({ gpus: 4 }, 'filler')), req({ gpus: 4 }, 'filler'));
    const result = scheduler.schedule(cluster, req({ nodes: 2, gpusPerNode: 8 }, 'gang'));
    expect(result.plan).toBeNull();
    expect(result.status.code).toBe('Unschedulable');
    expect(result.status.reasons[0]).toBe('gang needs 2 peers, 1 fit now');
    expect(result.explain.summary).toBe('2 peers: gang needs 2 peers, 1 fit now, 1 lack 8 free GPUs');
  });
});

describe('priorities and preemption', () => {
  test('a higher-priority job preempts the cheapest lower-priority preemptible jobs, named in the plan', () => {
    const cluster = clusterOf([h100a]);
    const scheduler = new Scheduler();
    const low = req({ gpus: 4, priority: 1, preemptible: true }, 'low');
    const lower = req({ gpus: 2, priority: 0, preemptible: true }, 'lower');
    const keep = req({ gpus: 2, priority: 0, preemptible: false }, 'keep');
    for (const r of [low, lower, keep]) commit(cluster, scheduler.schedule(cluster, r), r);
    const urgent = req({ gpus: 2, priority: 10 }, 'urgent');
    const result = scheduler.schedule(cluster, urgent);
    expect(result.status.code).toBe('Success');
    // Evicting the priority-0 2-GPU job is cheaper than the priority-1 one; the non-preemptible one is never chosen.
    expect(result.plan!.preemptions.map((v) => v.jobId)).toEqual(['lower']);
    expect(result.plan!.preemptions[0]).toMatchObject({ epoch: 1, priority: 0, gpus: 2, peerIds: ['h100-a'] });
    expect(result.explain.summary).toMatch(/preempting lower \(priority 0\)$/);
    commit(cluster, result, urgent);
    expect(cluster.jobs.has('lower')).toBe(false);
    const releases = toReleaseCommands(result.plan!, { requestIdPrefix: 'r', actor: 'leader', at: 1 });
    expect(AllocReleaseSchema.safeParse(releases[0]).success).toBe(true);
  });

  test('equal or higher priority, or not preemptible: nobody is preempted', () => {
    const cluster = clusterOf([h100a]);
    const scheduler = new Scheduler();
    const busy = req({ gpus: 8, priority: 5, preemptible: true }, 'busy');
    commit(cluster, scheduler.schedule(cluster, busy), busy);
    expect(scheduler.schedule(cluster, req({ gpus: 1, priority: 5 }, 'same')).plan).toBeNull();
    expect(scheduler.schedule(cluster, req({ gpus: 1, priority: 6 }, 'higher')).plan!.preemptions.map((v) => v.jobId)).toEqual(['busy']);
    expect(new Scheduler({ preemption: false }).schedule(cluster, req({ gpus: 1, priority: 6 }, 'off')).plan).toBeNull();
  });

  test('a gang victim is released everywhere it runs', () => {
    const cluster = clusterOf([h100a, h100b]);
    const scheduler = new Scheduler();
    const gang = req({ nodes: 2, gpusPerNode: 8, priority: 0, preemptible: true }, 'gang');
    commit(cluster, scheduler.schedule(cluster, gang), gang);
    const result = scheduler.schedule(cluster, req({ gpus: 1, priority: 1 }, 'small'));
    expect(result.plan!.preemptions).toEqual([{ jobId: 'gang', epoch: 1, tenant: 'default', priority: 0, peerIds: expect.arrayContaining(['h100-a', 'h100-b']), gpus: 16 }]);
  });
});

describe('quotas, price, spot, labels', () => {
  test('a tenant over its GPU quota waits; the reason says so', () => {
    const cluster = clusterOf([h100a], [], [{ name: 'lab', maxGpus: 3, maxGpuHours: null, gpuHoursUsed: 0 }]);
    const scheduler = new Scheduler();
    const two = req({ gpus: 2, tenant: 'lab' }, 'two');
    commit(cluster, scheduler.schedule(cluster, two), two);
    const result = scheduler.schedule(cluster, req({ gpus: 2, tenant: 'lab' }, 'more'));
    expect(result.status.code).toBe('Wait');
    expect(result.explain.summary).toBe('1 peers: 1 held back by tenant quota, tenant lab holds 2 of its 3 GPUs; 2 more asked');
    expect(scheduler.schedule(cluster, req({ gpus: 1, tenant: 'lab' }, 'one')).status.code).toBe('Success');
    expect(checkFeasibleEver(cluster, req({ gpus: 4, tenant: 'lab' }), scheduler)).toEqual({
      feasible: false,
      reason: 'tenant lab may hold at most 3 GPUs; the job asks for 4',
    });
  });

  test('GPU-hours spent: the tenant waits', () => {
    const cluster = clusterOf([h100a], [], [{ name: 'lab', maxGpus: null, maxGpuHours: 100, gpuHoursUsed: 100 }]);
    const result = new Scheduler().schedule(cluster, req({ gpus: 1, tenant: 'lab' }));
    expect(result.status).toEqual({ code: 'Wait', reasons: ['1 held back by tenant quota', 'tenant lab has used its 100 GPU-hours'] });
  });

  test('spot peers only for spot-tolerant jobs; price caps; cheaper peers preferred', () => {
    const cluster = clusterOf([h100a, h100b, l40s]);
    const scheduler = new Scheduler();
    expect(scheduler.schedule(cluster, req({ gpus: 1, models: ['L40S'] })).explain.summary).toBe('3 peers: 2 wrong model, 1 spot peers (job is not spot-tolerant)');
    expect(scheduler.schedule(cluster, req({ gpus: 1, models: ['L40S'], spotTolerant: true })).plan!.members[0]!.peerId).toBe('l40s');
    const capped = scheduler.schedule(cluster, req({ gpus: 1, maxPricePerGpuHour: 2.5, models: ['H100'] }));
    expect(capped.plan!.members[0]!.peerId).toBe('h100-b');
    expect(capped.explain.removed.map((r) => r.reason)).toContain('cost more than 2.5 per GPU-hour');
    // Two identical idle H100 hosts: the cheaper one wins on price.
    expect(scheduler.schedule(cluster, req({ gpus: 8 })).plan!.members[0]!.peerId).toBe('h100-b');
  });

  test('affinity, anti-affinity and preferences over peer labels', () => {
    const cluster = clusterOf([h100a, a100, h100b]);
    const scheduler = new Scheduler();
    const onlyMl = req({ gpus: 1, affinity: { required: [{ key: 'team', operator: 'In', values: ['ml'] }] } });
    expect(scheduler.schedule(cluster, onlyMl).plan!.members[0]!.peerId).toBe('a100');
    const notEu1 = req({ gpus: 1, antiAffinity: { required: [{ key: 'zone', operator: 'In', values: ['eu-1'] }] } });
    expect(scheduler.schedule(cluster, notEu1).plan!.members[0]!.peerId).toBe('h100-b');
    const prefer = req({ gpus: 8, affinity: { preferred: [{ weight: 100, requirement: { key: 'zone', operator: 'In', values: ['eu-1'] } }] }, models: ['H100'] });
    expect(new Scheduler({ weights: { affinity: 50 } }).schedule(cluster, prefer).plan!.members[0]!.peerId).toBe('h100-a');
  });

  test('peers that take no new work are skipped', async () => {
    const draining = await peerOf('drain', 'h100-sxm-8', { schedulable: false });
    const result = new Scheduler().schedule(clusterOf([draining]), req({ gpus: 1 }));
    expect(result.explain.summary).toBe('1 peers: 1 not taking new work (suspected, leaving or draining)');
  });

  test('a CPU-only job reserves host CPU and memory, no device', () => {
    const cluster = clusterOf([l40s]);
    const request = req({ cpu: 60, memory: '100GiB', spotTolerant: true });
    const plan = commit(cluster, new Scheduler().schedule(cluster, request), request);
    expect(plan.members).toEqual([{ peerId: 'l40s', devices: [], cpuMilli: 60_000, memoryMiB: 102_400 }]);
    expect(new Scheduler().schedule(cluster, req({ cpu: 8, spotTolerant: true }, 'more')).explain.summary).toBe('1 peers: 1 lack 8 CPU cores free');
  });
});

describe('model-aware sizing (gpus: auto)', () => {
  test('70B bf16 serving takes two 80 GB GPUs; on 48 GB GPUs, four; on one-GPU peers, a gang of four', () => {
    const h100 = new Scheduler().schedule(clusterOf([h100a]), req({ model: { params: '70B' } }));
    expect(h100.plan!.members[0]!.devices).toHaveLength(2);
    expect(h100.explain.sizing).toMatch(/^model needs .* shapes: 2 GPUs with /);
    const spread = new Scheduler().schedule(clusterOf([l40s, { ...l40s, peerId: 'l40s-2' }, { ...l40s, peerId: 'l40s-3' }, { ...l40s, peerId: 'l40s-4' }]), req({ model: { params: '70B' }, spotTolerant: true }));
    expect(spread.plan!.members).toHaveLength(4);
  });

  test('7B serving fits one GPU; the smallest GPU that holds it is preferred', () => {
    const result = new Scheduler().schedule(clusterOf([h100a, l40s]), req({ model: { params: '7B' }, spotTolerant: true }));
    expect(result.plan!.members).toEqual([expect.objectContaining({ peerId: 'l40s' })]);
  });

  test('a model too large for the whole fabric is refused at submit', () => {
    const cluster = clusterOf([l40s]);
    const scheduler = new Scheduler();
    const verdict = checkFeasibleEver(cluster, req({ model: { params: '70B' }, spotTolerant: true }), scheduler);
    expect(verdict).toEqual({ feasible: false, reason: 'no peer could ever run it: 1 peers; the gang needs 4 peers, 1 could run a member' });
  });
});

describe('feasibility at submit', () => {
  test('an impossible request is refused with the reason; a busy fabric is not a reason', () => {
    const cluster = clusterOf([h100a, a100]);
    const scheduler = new Scheduler();
    expect(checkFeasibleEver(cluster, req({ gpus: 16 }), scheduler)).toEqual({ feasible: false, reason: 'no peer could ever run it: 2 peers: 2 only 8 matching GPUs (16 per peer needed)' });
    expect(checkFeasibleEver(cluster, req({ gpus: 1, models: ['MI300X'] }), scheduler)).toEqual({ feasible: false, reason: 'no peer could ever run it: 2 peers: 2 wrong model' });
    expect(checkFeasibleEver(cluster, req({ nodes: 3, gpusPerNode: 1 }), scheduler)).toEqual({
      feasible: false,
      reason: 'no peer could ever run it: 2 peers; the gang needs 3 peers, 2 could run a member',
    });
    const full = req({ gpus: 8 }, 'full');
    commit(cluster, scheduler.schedule(cluster, full), full);
    commit(cluster, scheduler.schedule(cluster, req({ gpus: 8 }, 'full2')), req({ gpus: 8 }, 'full2'));
    expect(checkFeasibleEver(cluster, req({ gpus: 8 }, 'x'), scheduler)).toEqual({ feasible: true });
  });
});

describe('plans, the fsm and the leader check', () => {
  test('a plan maps 1:1 onto alloc.place, which the replicated state accepts', () => {
    const cluster = clusterOf([h100a, mig]);
    const scheduler = new Scheduler();
    const fsm = new FabricStateMachine();
    let index = 0;
    const apply = (command: Command): void => {
      const result = fsm.apply(++index, encodeCommand(command));
      if (!result.ok) throw new Error(`${command.type}: ${result.message}`);
    };
    const envelope = (n: number): { requestId: string; actor: string; at: number } => ({ requestId: `r${n}`, actor: 'leader', at: 1000 + n });
    const specs: [string, JobSpecInput][] = [
      ['a', { gpus: 2 }],
      ['b', { gpus: 0.5 }],
      ['c', { mig: '2g.20gb' }],
      ['d', { gpus: 0.5 }],
    ];
    for (const [n, [jobId, spec]] of specs.entries()) {
      const request = req(spec, jobId);
      apply({ type: 'job.submit', ...envelope(n * 2), jobId, tenant: request.tenant, name: jobId, priority: 0, preemptible: false, spec: spec as Record<string, unknown> as never });
      const plan = commit(cluster, scheduler.schedule(cluster, request), request);
      const command = toAllocPlaceCommand(plan, { ...envelope(n * 2 + 1), epoch: 1 });
      expect(AllocPlaceSchema.safeParse(command).success).toBe(true);
      apply(command);
    }
    // The fsm's view of what is held matches the scheduler's.
    const held = fsm.allocations().flatMap((a) => a.devices.map((d) => `${a.peerId}:${d.uuid}:${d.milli}`)).sort();
    const ours = [...cluster.jobs.keys()].flatMap((jobId) => [...cluster.peers].flatMap((p) => (p.holdings.get(jobId)?.grants ?? []).map((g) => `${p.id}:${g.uuid}:${g.milli}`))).sort();
    expect(held).toEqual(ours);
  });

  test('snapshotOf maps the committed state: holdings, host demand from the spec, priorities, quotas', () => {
    const fsm = new FabricStateMachine();
    let index = 0;
    const apply = (command: Command): void => {
      const result = fsm.apply(++index, encodeCommand(command));
      if (!result.ok) throw new Error(result.message);
    };
    const base = (n: number): { requestId: string; actor: string; at: number } => ({ requestId: `q${n}`, actor: 'leader', at: 3_600_000 });
    apply({ type: 'tenant.upsert', ...base(1), tenant: 'lab', maxGpus: 4, maxGpuHours: null });
    apply({ type: 'job.submit', ...base(2), jobId: 'j1', tenant: 'lab', name: 'j1', priority: 3, preemptible: true, spec: { gpus: 2, cpu: 6, memory: '10GiB' } });
    const uuids = h100a.devices.slice(0, 2).map((d) => ({ uuid: d.uuid }));
    apply({ type: 'alloc.place', ...base(3), jobId: 'j1', epoch: 1, allocations: [{ peerId: 'h100-a', devices: uuids }] });
    const snap = snapshotOf({ peers: [h100a], jobs: fsm.jobs(), allocations: fsm.allocations(), tenants: fsm.tenants(), now: 3_600_000 });
    expect(snap.allocations).toEqual([
      { jobId: 'j1', epoch: 1, tenant: 'lab', peerId: 'h100-a', priority: 3, preemptible: true, devices: uuids.map((u) => ({ ...u, milli: 1000, parentUuid: null })), cpuMilli: 6000, memoryMiB: 10_240, placedAt: 3_600_000 },
    ]);
    const cluster = ClusterState.fromSnapshot(snap);
    const peer = cluster.peerById.get('h100-a')!;
    expect([peer.wholeFree, peer.cpuFree, peer.memoryFree]).toEqual([6, peer.cpuTotal - 6000, peer.memoryTotal - 10_240]);
    expect(cluster.tenants.get('lab')).toMatchObject({ maxGpus: 4, heldMilli: 2000 });
    expect(cluster.orphans).toEqual([]);
  });

  test('an allocation on a device the peer no longer reports is kept out of reach and reported', () => {
    const cluster = ClusterState.fromSnapshot({
      peers: [h100a],
      allocations: [
        { jobId: 'old', epoch: 1, tenant: 't', peerId: 'h100-a', priority: 0, preemptible: false, devices: [{ uuid: 'GPU-gone', milli: 1000, parentUuid: null }, { uuid: h100a.devices[0]!.uuid, milli: 1000, parentUuid: null }], cpuMilli: 0, memoryMiB: 0, placedAt: 0 },
        { jobId: 'lost', epoch: 2, tenant: 't', peerId: 'vanished', priority: 0, preemptible: false, devices: [], cpuMilli: 0, memoryMiB: 0, placedAt: 0 },
      ],
      tenants: [],
      now: 0,
    });
    expect(cluster.orphans).toEqual(['job old: peer h100-a has no GPU GPU-gone', 'job lost holds devices on peer vanished, which is not in the snapshot']);
    // The device it still resolves to stays taken.
    expect(cluster.peerById.get('h100-a')!.free[0]).toBe(0);
  });

  test('verifyPlan refuses a plan made stale by a commit in between', () => {
    const cluster = clusterOf([h100a]);
    const scheduler = new Scheduler();
    const first = scheduler.schedule(cluster, req({ gpus: 8 }, 'first'));
    const second = scheduler.schedule(cluster, req({ gpus: 8 }, 'second'));
    commit(cluster, first, req({ gpus: 8 }, 'first'));
    const verdict = verifyPlan(cluster, second.plan!, req({ gpus: 8 }, 'second'));
    expect(verdict.ok).toBe(false);
    expect((verdict as { problems: string[] }).problems[0]).toMatch(/^GPU GPU-.* on peer h100-a has 0\/1000 free, 1000 asked$/);
  });

  test('verifyPlan checks victims, peers, device constraints and quota', () => {
    const cluster = clusterOf([h100a, mig], [], [{ name: 'lab', maxGpus: 1, maxGpuHours: null, gpuHoursUsed: 0 }]);
    const request = req({ gpus: 1, models: ['H100'] }, 'x');
    const good = new Scheduler().schedule(cluster, request).plan!;
    expect(verifyPlan(cluster, good, request)).toEqual({ ok: true });
    const forged: Plan = {
      ...good,
      priority: 0,
      members: [{ peerId: 'ghost', devices: [], cpuMilli: 0, memoryMiB: 0 }, { ...good.members[0]!, devices: [{ uuid: mig.devices[0]!.uuid, milli: 1000, parentUuid: null }], peerId: 'mig' }],
      preemptions: [{ jobId: 'nobody', epoch: 1, tenant: 't', priority: 0, peerIds: [], gpus: 1 }],
    };
    const verdict = verifyPlan(cluster, forged, { ...request, nodes: 1, tenant: 'lab', member: { ...request.member, gpus: 2 } });
    expect(verdict.ok).toBe(false);
    expect((verdict as { problems: string[] }).problems).toEqual([
      'victim nobody no longer holds devices',
      'peer ghost is not in the fabric',
      `GPU ${mig.devices[0]!.uuid} on peer mig is in MIG mode: only its instances can be granted`,
      'the job spans 1 peers, the plan 2',
      'peer mig: 1 devices, 2 asked',
      `peer mig: ${mig.devices[0]!.uuid} does not meet the job's device constraints`,
    ]);
  });

  test('explain prints filter counts for a waiting job and scores for a placed one', () => {
    const cluster = clusterOf([h100a, h100b, a100]);
    const scheduler = new Scheduler();
    const placed = scheduler.schedule(cluster, req({ gpus: 4, models: ['H100'] }, 'placed'));
    const text = formatExplanation(placed.explain, placed.status.code);
    expect(text).toMatch(/^job placed: Success\n  shape: 4 GPUs\n  3 peers, 2 fit; placed on h100-b\n/);
    expect(text).toContain('    1  wrong model  [DeviceClass, UnschedulableAndUnresolvable]');
    expect(text).toMatch(/chosen:\n    h100-b: total \d+(\.\d+)? \(.*price 100.*\)\n      GPU-/);
    expect(text).toMatch(/runners-up:\n    h100-a: total /);
    const waiting = scheduler.schedule(cluster, req({ gpus: 4, gpuMemory: '60GiB', models: ['A100'] }, 'waiting'));
    expect(formatExplanation(waiting.explain, waiting.status.code)).toBe(
      [
        'job waiting: UnschedulableAndUnresolvable',
        '  shape: 4 GPUs with 60 GiB',
        '  3 peers: 2 wrong model, 1 GPUs with less than 60 GiB',
        '  filters (3 peers, 0 fit):',
        '          2  wrong model  [DeviceClass, UnschedulableAndUnresolvable]',
        '          1  GPUs with less than 60 GiB  [DeviceClass, UnschedulableAndUnresolvable]',
      ].join('\n'),
    );
  });
});

describe('the queue', () => {
  test('within a priority, the tenant with the smallest dominant share goes first; higher priority first of all', () => {
    const cluster = clusterOf([h100a, h100b]);
    const scheduler = new Scheduler();
    const big = req({ gpus: 8, tenant: 'big' }, 'big-running');
    commit(cluster, scheduler.schedule(cluster, big), big);
    const pending = [
      { request: req({ gpus: 1, tenant: 'big' }, 'big-1'), submittedAt: 1 },
      { request: req({ gpus: 1, tenant: 'small' }, 'small-1'), submittedAt: 2 },
      { request: req({ gpus: 1, tenant: 'big', priority: 5 }, 'big-urgent'), submittedAt: 3 },
      { request: req({ gpus: 1, tenant: 'small' }, 'small-2'), submittedAt: 4 },
    ];
    const outcome = scheduleQueue(cluster, pending, scheduler);
    expect(outcome.order).toEqual(['big-urgent', 'small-1', 'small-2', 'big-1']);
    expect(outcome.plans.map((p) => p.jobId)).toEqual(['big-urgent', 'small-1', 'small-2', 'big-1']);
    // Plans of one pass never share a device.
    const devices = outcome.plans.flatMap((p) => p.members.flatMap((m) => m.devices.map((d) => d.uuid)));
    expect(new Set(devices).size).toBe(devices.length);
  });

  test('backfill: small jobs pass a blocked big one, until it has waited long enough to reserve', () => {
    const cluster = ClusterState.fromSnapshot({ peers: [h100a, h100b], allocations: [], tenants: [], now: 10 * 60_000 });
    const scheduler = new Scheduler();
    // Half of each peer is taken (packing alone would have put both on one peer).
    commit(cluster, scheduler.schedule(cluster, req({ gpus: 4 }, 'half'), { only: new Set(['h100-a']) }), req({ gpus: 4 }, 'half'));
    commit(cluster, scheduler.schedule(cluster, req({ gpus: 4 }, 'half2'), { only: new Set(['h100-b']) }), req({ gpus: 4 }, 'half2'));
    // Both peers have 4 free: an 8-GPU job is blocked.
    const fresh = scheduleQueue(cluster, [
      { request: req({ gpus: 8, priority: 1 }, 'big'), submittedAt: 10 * 60_000 },
      { request: req({ gpus: 2 }, 'small'), submittedAt: 10 * 60_000 },
    ], scheduler);
    expect(fresh.plans.map((p) => p.jobId)).toEqual(['small']);
    expect(fresh.reservations.size).toBe(0);
    const old = scheduleQueue(cluster, [
      { request: req({ gpus: 8, priority: 1 }, 'big'), submittedAt: 0 },
      { request: req({ gpus: 2 }, 'small'), submittedAt: 0 },
    ], scheduler);
    expect([...old.reservations.values()]).toEqual(['big']);
    const reservedPeer = [...old.reservations.keys()][0];
    // The small job still runs, but not on the peer held for the big one.
    expect(old.plans.map((p) => p.members[0]!.peerId)).toEqual([reservedPeer === 'h100-a' ? 'h100-b' : 'h100-a']);
  });
});
