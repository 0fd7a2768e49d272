/**
 * The command interpreter of the scripted placement scenarios (testdata/*.txt). Commands:
 *
 *   peer NAME profile=P [zone=Z] [price=X] [spot] [draining] [cpu=CORES] [memory=MIB] [label.K=V]…
 *   tenant NAME [maxGpus=N] [maxGpuHours=H] [used=H]
 *   now MS                              set the leader's clock
 *   place JOB SPEC_JSON                 schedule, verify, commit (victims released first)
 *   explain JOB SPEC_JSON               schedule without committing; print the explanation
 *   feasible JOB SPEC_JSON              the submit-time check
 *   release JOB
 *   pending JOB submitted=MS SPEC_JSON  add to the queue
 *   queue [reserveAfter=MS]             plan the queue in one pass, commit its plans
 *   state                               free capacity per peer
 *
 * `profile=two-island` is a synthetic 8-GPU host with two NVLink islands (0–3, 4–7); every other
 * profile is a simulated host replaying captured nvidia-smi / rocm-smi output. Devices print as
 * PEER:gpuINDEX, shares with their thousandths, MIG slices as PEER:gpuINDEX/PROFILE.
 */
import type { Device, Link } from '../../src/devices/model.ts';
import {
  ClusterState,
  Scheduler,
  checkFeasibleEver,
  formatExplanation,
  requestFromSpec,
  scheduleQueue,
  verifyPlan,
  type AllocationView,
  type PeerView,
  type PendingJob,
  type Plan,
  type PlacementRequest,
  type TenantQuota,
} from '../../src/placement/index.ts';
import { peerOf } from './helpers.ts';

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
      const same = a < 4 === b < 4;
      links.push({ a, b, kind: same ? 'nvlink' : Math.floor(a / 2) === Math.floor(b / 2) ? 'pix' : 'sys', width: same ? 12 : 0 });
    }
  }
  return { peerId, labels: { spot: 'false' }, zone: null, region: null, cloud: null, pricePerGpuHour: null, spot: false, cpuMilli: 64_000, memoryMiB: 512 * 1024, devices, links, schedulable: true };
}

function parseArgs(words: readonly string[]): { flags: Set<string>; kv: Map<string, string> } {
  const flags = new Set<string>();
  const kv = new Map<string, string>();
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq === -1) flags.add(word);
    else kv.set(word.slice(0, eq), word.slice(eq + 1));
  }
  return { flags, kv };
}

/** Splits "JOB [k=v…] {json}" into its words and the JSON spec. */
function splitSpec(rest: string): { words: string[]; spec: unknown } {
  const brace = rest.indexOf('{');
  if (brace === -1) throw new Error(`expected a JSON spec in "${rest}"`);
  return { words: rest.slice(0, brace).trim().split(/\s+/).filter(Boolean), spec: JSON.parse(rest.slice(brace)) };
}

export class ScenarioEnv {
  readonly peers: PeerView[] = [];
  readonly tenants = new Map<string, TenantQuota>();
  readonly scheduler = new Scheduler();
  readonly pending: PendingJob[] = [];
  readonly requests = new Map<string, PlacementRequest>();
  cluster: ClusterState = ClusterState.fromSnapshot({ peers: [], allocations: [], tenants: [], now: 0 });
  #epoch = 0;

  async handle(line: string): Promise<string> {
    const [command, ...words] = line.trim().split(/\s+/);
    const rest = line.trim().slice(command!.length).trim();
    switch (command) {
      case 'peer':
        return this.#peer(words);
      case 'tenant':
        return this.#tenant(words);
      case 'now':
        this.cluster.now = Number(words[0]);
        return 'ok';
      case 'place':
        return this.#place(rest, true);
      case 'explain':
        return this.#place(rest, false);
      case 'feasible': {
        const { words: [jobId], spec } = splitSpec(rest);
        const verdict = checkFeasibleEver(this.cluster, requestFromSpec(spec, jobId!), this.scheduler);
        return verdict.feasible ? 'feasible' : `refused: ${verdict.reason}`;
      }
      case 'release': {
        const held = this.cluster.release(words[0]!);
        return held === undefined ? `${words[0]} holds nothing` : `released ${words[0]} (${held.milli / 1000} GPUs on ${held.peerIds.join(', ')})`;
      }
      case 'pending': {
        const { words: [jobId, ...more], spec } = splitSpec(rest);
        const submitted = Number(parseArgs(more).kv.get('submitted') ?? '0');
        const request = requestFromSpec(spec, jobId!);
        this.pending.push({ request, submittedAt: submitted });
        this.requests.set(jobId!, request);
        return 'ok';
      }
      case 'queue':
        return this.#queue(words);
      case 'state':
        return this.#state();
      default:
        throw new Error(`unknown command ${command}`);
    }
  }

  async #peer(words: string[]): Promise<string> {
    const [name, ...more] = words;
    const { flags, kv } = parseArgs(more);
    const profile = kv.get('profile') ?? 'h100-sxm-8';
    const labels: Record<string, string> = {};
    for (const [k, v] of kv) if (k.startsWith('label.')) labels[k.slice(6)] = v;
    let view: PeerView;
    if (profile === 'two-island') {
      view = twoIslandPeer(name!);
    } else {
      view = await peerOf(name!, profile, {
        zone: kv.get('zone'),
        price: kv.has('price') ? Number(kv.get('price')) : undefined,
        spot: flags.has('spot'),
        labels,
        cpuCores: kv.has('cpu') ? Number(kv.get('cpu')) : undefined,
        memoryMiB: kv.has('memory') ? Number(kv.get('memory')) : undefined,
        schedulable: !flags.has('draining'),
      });
    }
    if (profile === 'two-island' && kv.has('zone')) view = { ...view, zone: kv.get('zone')!, labels: { ...view.labels, zone: kv.get('zone')! } };
    this.peers.push(view);
    this.#rebuild();
    const gpus = view.devices.filter((d) => !d.migEnabled);
    const migs = view.devices.flatMap((d) => (d.migEnabled ? d.migInstances.map((m) => m.profile) : []));
    const model = view.devices[0]?.model ?? 'no GPUs';
    return `${name}: ${gpus.length} GPUs${migs.length > 0 ? `, MIG ${migs.join(' ')}` : ''} (${model}), ${view.cpuMilli / 1000} cores`;
  }

  #tenant(words: string[]): string {
    const [name, ...more] = words;
    const { kv } = parseArgs(more);
    const num = (k: string): number | null => (kv.has(k) ? Number(kv.get(k)) : null);
    this.tenants.set(name!, { name: name!, maxGpus: num('maxGpus'), maxGpuHours: num('maxGpuHours'), gpuHoursUsed: num('used') ?? 0 });
    this.#rebuild();
    return 'ok';
  }

  /** A new ClusterState from the peers, tenants and what the current one holds. */
  #rebuild(): void {
    const allocations: AllocationView[] = [];
    for (const job of this.cluster.jobs.values()) {
      for (const peerId of job.peerIds) {
        const holding = this.cluster.peerById.get(peerId)?.holdings.get(job.jobId);
        if (holding === undefined) continue;
        allocations.push({ jobId: job.jobId, epoch: job.epoch, tenant: job.tenant, peerId, priority: job.priority, preemptible: job.preemptible, devices: holding.grants, cpuMilli: holding.cpuMilli, memoryMiB: holding.memoryMiB, placedAt: job.placedAt });
      }
    }
    this.cluster = ClusterState.fromSnapshot({ peers: this.peers, allocations, tenants: [...this.tenants.values()], now: this.cluster.now });
  }

  #device(peerId: string, uuid: string, milli: number, parentUuid: string | null): string {
    const peer = this.peers.find((p) => p.peerId === peerId)!;
    if (parentUuid !== null) {
      const parent = peer.devices.find((d) => d.uuid === parentUuid)!;
      return `${peerId}:gpu${parent.index}/${parent.migInstances.find((m) => m.uuid === uuid)!.profile}`;
    }
    const device = peer.devices.find((d) => d.uuid === uuid)!;
    return `${peerId}:gpu${device.index}${milli === 1000 ? '' : `(${milli})`}`;
  }

  #describePlan(plan: Plan): string[] {
    const lines: string[] = [];
    for (const victim of plan.preemptions) lines.push(`preempt ${victim.jobId} (priority ${victim.priority}, ${victim.gpus} GPUs on ${victim.peerIds.join(', ')})`);
    for (const member of plan.members) {
      const devices = member.devices.map((d) => this.#device(member.peerId, d.uuid, d.milli, d.parentUuid));
      lines.push(`${plan.jobId} on ${member.peerId}: ${devices.join(' ') || 'no devices'}${member.cpuMilli > 0 ? ` cpu=${member.cpuMilli / 1000}` : ''}`);
    }
    return lines;
  }

  #commit(plan: Plan, request: PlacementRequest): string[] {
    const verdict = verifyPlan(this.cluster, plan, request);
    if (!verdict.ok) return [`verify refused: ${verdict.problems.join('; ')}`];
    for (const victim of plan.preemptions) this.cluster.release(victim.jobId);
    this.cluster.place(
      { jobId: plan.jobId, epoch: ++this.#epoch, tenant: request.tenant, priority: request.priority, preemptible: request.preemptible, placedAt: this.cluster.now },
      plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB })),
    );
    return this.#describePlan(plan);
  }

  #place(rest: string, commit: boolean): string {
    const { words: [jobId], spec } = splitSpec(rest);
    const request = requestFromSpec(spec, jobId!);
    this.requests.set(jobId!, request);
    const result = this.scheduler.schedule(this.cluster, request);
    if (!commit) return formatExplanation(result.explain, result.status.code).replace(/GPU-[0-9a-f-]+|MIG-[0-9a-f-]+/g, (uuid) => this.#uuidName(uuid));
    if (result.plan === null) return `${result.status.code}: ${result.explain.summary}`;
    return this.#commit(result.plan, request).join('\n');
  }

  #uuidName(uuid: string): string {
    for (const peer of this.peers) {
      for (const device of peer.devices) {
        if (device.uuid === uuid) return `${peer.peerId}:gpu${device.index}`;
        const slice = device.migInstances.find((m) => m.uuid === uuid);
        if (slice !== undefined) return `${peer.peerId}:gpu${device.index}/${slice.profile}`;
      }
    }
    return uuid;
  }

  #queue(words: string[]): string {
    const { kv } = parseArgs(words);
    const reserveAfter = kv.has('reserveAfter') ? Number(kv.get('reserveAfter')) : undefined;
    const outcome = scheduleQueue(this.cluster, this.pending, this.scheduler, reserveAfter === undefined ? {} : { reserveAfterMs: reserveAfter });
    const lines = [`order: ${outcome.order.join(' ')}`];
    for (const plan of outcome.plans) lines.push(...this.#commit(plan, this.requests.get(plan.jobId)!));
    for (const { jobId, result } of outcome.waiting) lines.push(`${jobId} waits: ${result.status.code}: ${result.explain.summary}`);
    for (const [peerId, jobId] of outcome.reservations) lines.push(`reserved ${peerId} for ${jobId}`);
    const placed = new Set(outcome.plans.map((p) => p.jobId));
    for (let i = this.pending.length - 1; i >= 0; i--) if (placed.has(this.pending[i]!.request.jobId)) this.pending.splice(i, 1);
    return lines.join('\n');
  }

  #state(): string {
    return this.cluster.peers
      .map((peer) => {
        const shares = [...peer.free].map((free, slot) => ({ free, index: peer.gpus[slot]!.deviceIndex })).filter((g) => g.free > 0 && g.free < 1000);
        const migTaken = peer.migs.filter((_, slot) => peer.migFree[slot] === 0).map((m) => m.profile);
        const parts = [`${peer.wholeFree}/${peer.gpus.length} GPUs free`];
        if (shares.length > 0) parts.push(`partial ${shares.map((g) => `gpu${g.index}=${g.free}`).join(' ')}`);
        if (peer.migs.length > 0) parts.push(`MIG taken: ${migTaken.join(' ') || 'none'}`);
        parts.push(`cpu ${peer.cpuFree / 1000}/${peer.cpuTotal / 1000}`);
        const jobs = [...peer.holdings.keys()].sort();
        if (jobs.length > 0) parts.push(`jobs ${jobs.join(' ')}`);
        return `${peer.id}: ${parts.join(', ')}`;
      })
      .join('\n');
  }
}
