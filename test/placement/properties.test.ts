/**
 * Property tests: random fabrics (whole GPUs, NVLink islands, MIG-mode GPUs with instances,
 * zones, spot) and random streams of jobs (counts, shares, MIG slices, gangs, priorities,
 * tenants with quotas, CPU) and departures. Every plan is checked against an independent ledger
 * kept from the plans alone, against the leader's verifyPlan, and by applying it to the
 * replicated state machine, which has its own device and quota checks.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import type { Device, Link } from '../../src/devices/model.ts';
import { FabricStateMachine, encodeCommand, type Command } from '../../src/placement/fsm/index.ts';
import {
  ClusterState,
  Scheduler,
  requestFromSpec,
  toAllocPlaceCommand,
  toReleaseCommands,
  verifyPlan,
  type JobSpecInput,
  type PeerView,
  type Plan,
  type PlacementRequest,
  type TenantQuota,
} from '../../src/placement/index.ts';

const MODELS = ['NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-40GB', 'NVIDIA L40S'];
const MIG_LAYOUTS = [['3g.40gb', '2g.20gb', '1g.10gb', '1g.10gb'], ['1g.10gb', '1g.10gb', '1g.10gb'], ['4g.40gb', '3g.40gb']];

// Small fabrics, so that random job streams fill them and preemption, quotas and waiting happen.
const peerArb = fc.record({
  gpus: fc.integer({ min: 0, max: 6 }),
  migGpus: fc.integer({ min: 0, max: 2 }),
  migLayout: fc.integer({ min: 0, max: MIG_LAYOUTS.length - 1 }),
  model: fc.integer({ min: 0, max: MODELS.length - 1 }),
  islands: fc.integer({ min: 1, max: 3 }),
  cpuCores: fc.integer({ min: 4, max: 128 }),
  memoryGiB: fc.integer({ min: 16, max: 1024 }),
  zone: fc.constantFrom('z1', 'z2'),
  spot: fc.boolean(),
});

const jobArb = fc.record({
  kind: fc.constantFrom('whole', 'whole', 'share', 'mig', 'cpu', 'gang'),
  gpus: fc.constantFrom(1, 1, 2, 4, 8),
  share: fc.constantFrom(0.125, 0.25, 0.5, 0.75),
  mig: fc.constantFrom('1g.10gb', '2g.20gb', '3g.40gb'),
  nodes: fc.integer({ min: 2, max: 3 }),
  priority: fc.integer({ min: 0, max: 3 }),
  preemptible: fc.boolean(),
  tenant: fc.constantFrom('t1', 't2', 't3'),
  cpu: fc.constantFrom(0, 1, 4, 16),
  nvlink: fc.boolean(),
  spotTolerant: fc.boolean(),
});

const stepArb = fc.oneof(
  { weight: 6, arbitrary: jobArb.map((job) => ({ op: 'submit' as const, job })) },
  { weight: 1, arbitrary: fc.nat().map((n) => ({ op: 'release' as const, n })) },
);

type PeerSpec = typeof peerArb extends fc.Arbitrary<infer T> ? T : never;
type JobSpecArb = typeof jobArb extends fc.Arbitrary<infer T> ? T : never;

function buildPeers(specs: PeerSpec[]): PeerView[] {
  return specs.map((p, i) => {
    const peerId = `p${i}`;
    const devices: Device[] = [];
    for (let g = 0; g < p.gpus; g++) {
      devices.push({ index: g, uuid: `GPU-${peerId}-${g}`, vendor: 'nvidia', model: MODELS[p.model]!, memoryMiB: 40_960, numaNode: g % 2, migEnabled: false, migInstances: [] });
    }
    for (let m = 0; m < p.migGpus; m++) {
      const index = p.gpus + m;
      devices.push({
        index,
        uuid: `GPU-${peerId}-${index}`,
        vendor: 'nvidia',
        model: 'NVIDIA H100 80GB HBM3',
        memoryMiB: 81_559,
        migEnabled: true,
        migInstances: MIG_LAYOUTS[p.migLayout]!.map((profile, k) => ({ uuid: `MIG-${peerId}-${index}-${k}`, profile, gpuInstanceId: k, memoryMiB: 10_000 * Number(profile[0]) })),
      });
    }
    const links: Link[] = [];
    for (let a = 0; a < p.gpus; a++) {
      for (let b = a + 1; b < p.gpus; b++) {
        const sameIsland = a % p.islands === b % p.islands;
        links.push({ a, b, kind: sameIsland ? 'nvlink' : 'sys', width: sameIsland ? 12 : 0 });
      }
    }
    return {
      peerId,
      labels: { zone: p.zone, spot: String(p.spot) },
      zone: p.zone,
      region: null,
      cloud: null,
      pricePerGpuHour: null,
      spot: p.spot,
      cpuMilli: p.cpuCores * 1000,
      memoryMiB: p.memoryGiB * 1024,
      devices,
      links,
      schedulable: true,
    };
  });
}

function specOf(job: JobSpecArb): JobSpecInput {
  const base: JobSpecInput = { priority: job.priority, preemptible: job.preemptible, tenant: job.tenant, cpu: job.cpu, spotTolerant: job.spotTolerant };
  switch (job.kind) {
    case 'whole':
      return { ...base, gpus: job.gpus, ...(job.nvlink && job.gpus > 1 ? { interconnect: 'nvlink' } : {}) };
    case 'share':
      return { ...base, gpus: job.share };
    case 'mig':
      return { ...base, mig: job.mig };
    case 'cpu':
      return { ...base, cpu: Math.max(1, job.cpu) };
    case 'gang':
      return { ...base, nodes: job.nodes, gpusPerNode: Math.min(job.gpus, 4) };
    default:
      throw new Error(`unknown job kind ${job.kind}`);
  }
}

interface Running {
  request: PlacementRequest;
  plan: Plan;
  epoch: number;
}

/** What the plans add up to, kept without looking at the scheduler's own state. */
class Ledger {
  readonly milli = new Map<string, number>();
  readonly migTaken = new Set<string>();
  readonly cpu = new Map<string, number>();
  readonly memory = new Map<string, number>();
  readonly tenantMilli = new Map<string, number>();

  apply(plan: Plan, request: PlacementRequest, sign: 1 | -1): void {
    for (const member of plan.members) {
      for (const d of member.devices) {
        if (d.parentUuid !== null) {
          if (sign === 1) this.migTaken.add(`${member.peerId}/${d.uuid}`);
          else this.migTaken.delete(`${member.peerId}/${d.uuid}`);
        } else {
          const key = `${member.peerId}/${d.uuid}`;
          this.milli.set(key, (this.milli.get(key) ?? 0) + sign * d.milli);
        }
        this.tenantMilli.set(request.tenant, (this.tenantMilli.get(request.tenant) ?? 0) + sign * d.milli);
      }
      this.cpu.set(member.peerId, (this.cpu.get(member.peerId) ?? 0) + sign * member.cpuMilli);
      this.memory.set(member.peerId, (this.memory.get(member.peerId) ?? 0) + sign * member.memoryMiB);
    }
  }
}

describe('placement properties', () => {
  test('capacity, MIG and shares, gangs, quotas and preemption hold over random job streams', () => {
    fc.assert(
      fc.property(
        fc.array(peerArb, { minLength: 1, maxLength: 3 }),
        fc.array(stepArb, { minLength: 1, maxLength: 40 }),
        fc.record({ t1: fc.option(fc.integer({ min: 0, max: 12 })), t2: fc.option(fc.integer({ min: 0, max: 12 })) }),
        (peerSpecs, steps, quotas) => {
          const peers = buildPeers(peerSpecs);
          const tenants: TenantQuota[] = Object.entries(quotas).map(([name, maxGpus]) => ({ name, maxGpus, maxGpuHours: null, gpuHoursUsed: 0 }));
          const cluster = ClusterState.fromSnapshot({ peers, allocations: [], tenants, now: 0 });
          const scheduler = new Scheduler();
          const fsm = new FabricStateMachine();
          let index = 0;
          let at = 1;
          const apply = (command: Command): void => {
            const result = fsm.apply(++index, encodeCommand(command));
            if (!result.ok) throw new Error(`fsm refused ${command.type}: ${result.code} ${result.message}`);
          };
          for (const t of tenants) apply({ type: 'tenant.upsert', requestId: `tenant-${t.name}`, actor: 'test', at, tenant: t.name, maxGpus: t.maxGpus, maxGpuHours: null });
          const ledger = new Ledger();
          const running = new Map<string, Running>();
          const totals = new Map(peers.map((p) => [p.peerId, p]));
          let jobs = 0;
          let epochs = 0;

          for (const step of steps) {
            at++;
            if (step.op === 'release') {
              const ids = [...running.keys()].sort();
              if (ids.length === 0) continue;
              const jobId = ids[step.n % ids.length]!;
              const job = running.get(jobId)!;
              cluster.release(jobId);
              ledger.apply(job.plan, job.request, -1);
              apply({ type: 'alloc.release', requestId: `rel-${at}`, actor: 'test', at, jobId, epoch: job.epoch });
              running.delete(jobId);
              continue;
            }
            const spec = specOf(step.job);
            const jobId = `j${++jobs}`;
            const request = requestFromSpec(spec, jobId);
            apply({ type: 'job.submit', requestId: `sub-${jobId}`, actor: 'test', at, jobId, tenant: request.tenant, name: jobId, priority: request.priority, preemptible: request.preemptible, spec: spec as never });
            const result = scheduler.schedule(cluster, request);
            const plan = result.plan;
            if (plan === null) {
              expect(result.status.code).not.toBe('Success');
              continue;
            }
            // The leader's check passes for a fresh plan.
            expect(verifyPlan(cluster, plan, request)).toEqual({ ok: true });
            // Gangs: all members or none, on distinct peers.
            expect(plan.members).toHaveLength(request.nodes!);
            expect(new Set(plan.members.map((m) => m.peerId)).size).toBe(plan.members.length);
            // Only strictly lower-priority preemptible jobs are preempted.
            for (const victim of plan.preemptions) {
              const held = running.get(victim.jobId)!;
              expect(held.request.preemptible).toBe(true);
              expect(held.request.priority).toBeLessThan(request.priority);
            }
            // Commit: victims first, in the fsm and here.
            for (const release of toReleaseCommands(plan, { requestIdPrefix: `pre-${jobId}`, actor: 'test', at })) apply(release);
            for (const victim of plan.preemptions) {
              const held = running.get(victim.jobId)!;
              cluster.release(victim.jobId);
              ledger.apply(held.plan, held.request, -1);
              running.delete(victim.jobId);
            }
            const epoch = ++epochs;
            apply(toAllocPlaceCommand(plan, { requestId: `place-${jobId}`, actor: 'test', at, epoch }));
            cluster.place(
              { jobId, epoch, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: at },
              plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
            );
            ledger.apply(plan, request, 1);
            running.set(jobId, { request, plan, epoch });

            // Capacity never exceeded; no MIG slice or share double-booked; MIG parents never whole.
            for (const [key, milli] of ledger.milli) {
              expect(milli).toBeLessThanOrEqual(1000);
              expect(milli).toBeGreaterThanOrEqual(0);
              const [peerId, uuid] = key.split('/') as [string, string];
              const device = totals.get(peerId)!.devices.find((d) => d.uuid === uuid)!;
              if (milli > 0) expect(device.migEnabled).toBe(false);
            }
            const migGrants = plan.members.flatMap((m) => m.devices.filter((d) => d.parentUuid !== null).map((d) => `${m.peerId}/${d.uuid}`));
            expect(new Set(migGrants).size).toBe(migGrants.length);
            for (const [peerId, cpu] of ledger.cpu) expect(cpu).toBeLessThanOrEqual(totals.get(peerId)!.cpuMilli);
            for (const [peerId, memory] of ledger.memory) expect(memory).toBeLessThanOrEqual(totals.get(peerId)!.memoryMiB);
            // Quotas hold.
            for (const t of tenants) if (t.maxGpus !== null) expect(ledger.tenantMilli.get(t.name) ?? 0).toBeLessThanOrEqual(t.maxGpus * 1000);
            // The cluster's own bookkeeping agrees with the ledger.
            for (const peer of cluster.peers) {
              let whole = 0;
              let total = 0;
              peer.gpus.forEach((gpu, slot) => {
                const expected = 1000 - (ledger.milli.get(`${peer.id}/${gpu.uuid}`) ?? 0);
                expect(peer.free[slot]).toBe(expected);
                if (expected === 1000) whole++;
                total += expected;
              });
              expect(peer.wholeFree).toBe(whole);
              expect(peer.freeMilliTotal).toBe(total);
              peer.migs.forEach((mig, slot) => expect(peer.migFree[slot] === 0).toBe(ledger.migTaken.has(`${peer.id}/${mig.uuid}`)));
              expect(peer.cpuFree).toBe(peer.cpuTotal - (ledger.cpu.get(peer.id) ?? 0));
            }
          }
          // The replicated state holds exactly what the ledger holds.
          const fsmHeld = fsm.allocations().flatMap((a) => a.devices.map((d) => `${a.peerId}/${d.uuid}/${d.milli}`)).sort();
          const planned = [...running.values()].flatMap((r) => r.plan.members.flatMap((m) => m.devices.map((d) => `${m.peerId}/${d.uuid}/${d.milli}`))).sort();
          expect(fsmHeld).toEqual(planned);
        },
      ),
      { numRuns: 120 },
    );
  });

  test('under contention, only strictly lower-priority preemptible jobs are preempted, and only when needed', () => {
    let preemptions = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 }),
        fc.array(fc.record({ gpus: fc.constantFrom(1, 2, 3, 4), priority: fc.integer({ min: 0, max: 4 }), preemptible: fc.boolean(), leave: fc.boolean() }), { minLength: 2, maxLength: 30 }),
        (peerCount, stream) => {
          const peers = buildPeers(Array.from({ length: peerCount }, () => ({ gpus: 4, migGpus: 0, migLayout: 0, model: 0, islands: 1, cpuCores: 64, memoryGiB: 256, zone: 'z1', spot: false })));
          const cluster = ClusterState.fromSnapshot({ peers, allocations: [], tenants: [], now: 0 });
          const scheduler = new Scheduler();
          const jobs = new Map<string, PlacementRequest>();
          stream.forEach((s, i) => {
            const request = requestFromSpec({ gpus: s.gpus, priority: s.priority, preemptible: s.preemptible }, `c${i}`);
            const freeNow = cluster.peers.some((p) => p.wholeFree >= s.gpus);
            const result = scheduler.schedule(cluster, request);
            const plan = result.plan;
            if (plan === null) return;
            // Preemption only when the job did not fit as things were.
            if (freeNow) expect(plan.preemptions).toEqual([]);
            for (const victim of plan.preemptions) {
              const held = jobs.get(victim.jobId)!;
              expect(held.preemptible).toBe(true);
              expect(held.priority).toBeLessThan(request.priority);
              cluster.release(victim.jobId);
              jobs.delete(victim.jobId);
              preemptions++;
            }
            expect(verifyPlan(cluster, { ...plan, preemptions: [] }, request)).toEqual({ ok: true });
            cluster.place(
              { jobId: request.jobId, epoch: 1, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: 0 },
              plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
            );
            jobs.set(request.jobId, request);
            if (s.leave && jobs.size > 2) {
              const oldest = [...jobs.keys()][0]!;
              cluster.release(oldest);
              jobs.delete(oldest);
            }
          });
        },
      ),
      { numRuns: 200 },
    );
    // The property is about preemption: make sure the streams exercised it.
    expect(preemptions).toBeGreaterThan(50);
  });

  test('a stale plan is refused by verifyPlan, never applied twice', () => {
    fc.assert(
      fc.property(fc.array(peerArb, { minLength: 1, maxLength: 4 }), fc.array(jobArb, { minLength: 2, maxLength: 12 }), (peerSpecs, jobSpecs) => {
        const cluster = ClusterState.fromSnapshot({ peers: buildPeers(peerSpecs), allocations: [], tenants: [], now: 0 });
        const scheduler = new Scheduler({ preemption: false });
        // Plan every job against the same (stale) state, then commit them in order: the leader's
        // check must refuse exactly those that no longer fit.
        const planned = jobSpecs.map((job, i) => {
          const request = requestFromSpec(specOf(job), `s${i}`);
          return { request, plan: scheduler.schedule(cluster, request).plan };
        });
        for (const { request, plan } of planned) {
          if (plan === null) continue;
          const verdict = verifyPlan(cluster, plan, request);
          const fits = plan.members.every((m) => cluster.peerById.get(m.peerId)!.fitProblem(m.devices, m.cpuMilli, m.memoryMiB) === null);
          expect(verdict.ok).toBe(fits);
          if (!verdict.ok) continue;
          cluster.place(
            { jobId: request.jobId, epoch: 1, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: 0 },
            plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
          );
        }
        for (const peer of cluster.peers) for (const free of peer.free) expect(free).toBeGreaterThanOrEqual(0);
      }),
      { numRuns: 100 },
    );
  });
});
