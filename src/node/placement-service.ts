/**
 * The leader's placement loop (Nomad's plan applier, in our shape). While this node leads:
 *
 *  1. Lost hosts: a job whose host the mesh holds dead, and whose lease has not been renewed for
 *     longer than the lease plus the stop grace (so the old run has surely ended, see
 *     job-agent.ts), is moved to `restarting`: its devices are released and it waits to be placed.
 *  2. Placement, pipelined: each pass plans waiting jobs (queued, restarting) in queue order —
 *     priority, then the tenant holding the smallest share of the fabric's GPUs (dominant-resource
 *     fair share), then age — with the pure scheduler over ONE working cluster state: the
 *     committed allocations plus the gossiped view, plus every placement this leader has proposed
 *     and not yet heard back about. Each plan is verified, applied to the working state at once (so
 *     the next plan of the pass sees those devices taken) and proposed as one `alloc.place` (a gang
 *     whole or not at all) without waiting for the commit: the proposals of a pass go to Raft
 *     together, which appends and fsyncs them as one batch (group commit), and the next pass plans
 *     while they commit. A job stays out of planning while its proposal is in flight. The state
 *     machine re-checks every device against committed allocations, so a stale plan is refused
 *     and simply planned again. A restarting job tries the peers that already hold its latest
 *     checkpoint first.
 *  3. Preemption: a plan naming victims releases them first (their hosts stop them with SIGTERM,
 *     which lets a job checkpoint, then SIGKILL after the grace period), and holds the job back
 *     for that grace period before it takes their devices. Meanwhile the working state keeps
 *     the plan's devices for it, so that no other job (the released victim least of all) takes
 *     them first. A pass ends at a preemption.
 *
 * The working state is not rebuilt per pass (building one from a snapshot of 10,000 GPUs and
 * their allocations takes tens of milliseconds): each pass brings it in step with committed state
 * by difference (#reconcile: jobs that ended or whose proposal was refused are released, newly
 * committed ones added) and rebuilds it from a snapshot only when a peer changed in what placement
 * reads of it, a peer came or went, or a committed allocation does not fit it.
 *
 * A job that does not fit is remembered with the capacity generation it did not fit (#capacity,
 * bumped whenever capacity may have grown: a release, a peer change, a quota change, a new
 * preemptible job); it is planned again only at a later generation. Jobs of one shape fit or not
 * together, so one scheduling cycle answers for a whole queue of like jobs.
 *
 * Explanations (`fabric explain`) are computed here, on the leader, over committed state.
 */
import { errorMessage, type Logger } from '../core/index.ts';
import type { NodeState } from '../gossip/state.ts';
import type { Allocation, Job, TenantView } from '../placement/fsm/index.ts';
import {
  ClusterState,
  DEFAULT_RESERVE_AFTER_MS,
  JobSpecSchema,
  Scheduler,
  checkFeasibleEver,
  reservationFor,
  peerViewOf,
  resolveRequest,
  snapshotOf,
  toAllocPlaceCommand,
  toReleaseCommands,
  verifyPlan,
  type Explanation,
  type JobMeta,
  type PeerView,
  type PlacedMember,
  type PlacementRequest,
  type Plan,
  type ScheduleResult,
} from '../placement/index.ts';
import { DEFAULT_STOP_GRACE_MS } from '../runner/index.ts';
import type { ControlPlane } from './control-plane.ts';
import { DEFAULT_LEASE_MS, FENCE_STOP_GRACE_MS } from './job-agent.ts';
import { restoreOrder } from '../checkpoint/index.ts';

export interface PlacementPeer {
  peerId: string;
  health: 'alive' | 'suspect' | 'dead';
  state: NodeState | undefined;
}

/** What the placement loop needs of the control plane (a narrow seam, so tests can drive it). */
export type PlacementControl = Pick<ControlPlane, 'id' | 'state' | 'localStatus' | 'onApplied' | 'submit' | 'leaseSilenceOf' | 'withLeasesRefused'>;

export interface PlacementServiceOptions {
  control: PlacementControl;
  /** The gossiped view, this peer included. */
  peers(): PlacementPeer[];
  log: Logger;
  wallNow(): number;
  /** The hosts' lease (job-agent.ts): a host silent this long (plus grace) has stopped its jobs. */
  leaseMs?: number;
  /** The scheduler (default: one without rng, see the constructor). */
  scheduler?: Scheduler;
  /** How long a job that does not fit waits before peers are reserved for it (default 5 min). */
  reserveAfterMs?: number;
}

const TICK_MS = 50;
/** Without news, a pass every second anyway (leases expire, holds end). */
const IDLE_PASS_EVERY = 20;
/** Planning time per pass before the loop yields (ms). */
const PASS_BUDGET_MS = 10;
/** Margin over lease + stop grace for clock-rate drift and a slow kill. */
const LOST_MARGIN_MS = 500;
/** Placements proposed and not yet answered, at most: planning waits for commits beyond this. */
const MAX_IN_FLIGHT = 2048;
const WAITING: ReadonlySet<string> = new Set(['queued', 'restarting']);
/** Distinct job specs whose parse is kept (see #known). */
const SPEC_CACHE_ENTRIES = 4096;

/** A placement proposed to Raft and not yet answered: what it holds in the working state. */
interface InFlight {
  meta: JobMeta;
  members: PlacedMember[];
}

/** A plan of this pass, ready to propose. */
interface Proposal {
  job: Readonly<Job>;
  epoch: number;
  plan: Plan;
  explain: Explanation;
  meta: JobMeta;
  members: PlacedMember[];
}

/** What a planning pass decided. */
interface PassOutcome {
  proposals: Proposal[];
  /** A plan that needs victims released first (the pass stopped there). */
  preemption?: { job: Readonly<Job>; plan: Plan };
  /** Work was left for lack of time: plan again as soon as the event loop has had its turn. */
  more: boolean;
}

/** What placement reads of a gossiped peer, as a string (a peer's state changes often; this rarely). */
function viewKey(view: PeerView): string {
  return JSON.stringify(view);
}

/** The members of a plan as the cluster state records them. */
function membersOf(plan: Plan): PlacedMember[] {
  return plan.members.map((m) => ({ peerId: m.peerId, grants: m.devices, cpuMilli: m.cpuMilli, memoryMiB: m.memoryMiB }));
}

/** Whether every member fits the cluster as it is (peers known, devices and host capacity free). */
function fits(cluster: ClusterState, members: readonly PlacedMember[]): boolean {
  return members.every((m) => cluster.peerById.get(m.peerId)?.fitProblem(m.grants, m.cpuMilli, m.memoryMiB) === null);
}

/** Takes `items` out in the order of `compare` (a binary heap: O(n) to build, O(log n) a job taken). */
function* inOrder<T>(items: T[], compare: (a: T, b: T) => number): Generator<T> {
  const heap = items;
  const down = (start: number, size: number): void => {
    let i = start;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < size && compare(heap[l]!, heap[best]!) < 0) best = l;
      if (r < size && compare(heap[r]!, heap[best]!) < 0) best = r;
      if (best === i) return;
      [heap[i], heap[best]] = [heap[best]!, heap[i]!];
      i = best;
    }
  };
  for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i, heap.length);
  for (let size = heap.length; size > 0; size--) {
    const top = heap[0]!;
    heap[0] = heap[size - 1]!;
    down(0, size - 1);
    yield top;
  }
}

export class PlacementService {
  readonly #o: PlacementServiceOptions;
  readonly #log: Logger;
  readonly #scheduler: Scheduler;
  readonly #lostAfterMs: number;
  readonly #reserveAfterMs: number;
  /** Why each job placed by this leader went where it did, for `fabric explain`. */
  readonly #placedBecause = new Map<string, { epoch: number; explain: Explanation }>();
  /** Waiting jobs that did not fit, with the capacity generation they did not fit. */
  readonly #unfit = new Map<string, number>();
  /** Shapes (see #shapeOf) that did not fit, with the capacity generation they did not fit. */
  readonly #unfitShapes = new Map<string, number>();
  /** Each waiting job's placement request and shape, computed once (a job's spec never changes); null: the spec does not parse. */
  readonly #requests = new Map<string, { request: PlacementRequest; shape: string } | null>();
  /**
   * The peers held for a large job that has waited `reserveAfterMs` without fitting, so that a
   * stream of smaller jobs of no higher priority cannot starve it (backfill may use every other
   * peer). One at a time, like scheduleQueue's (src/placement/scheduler/queue.ts).
   */
  #reservation: { jobId: string; priority: number; peers: Map<string, string> } | null = null;
  /** Parsed specs by their JSON text (see #known). */
  readonly #bySpec = new Map<string, { request: PlacementRequest; shape: string } | null>();
  /** Preemptors waiting for their victims to stop: job id → not before (wall ms). */
  readonly #holdUntil = new Map<string, number>();
  /**
   * Refused proposals per waiting job and epoch. The state machine answers a request id it has
   * seen with the answer it gave then, refusals included, so a new plan after a refusal needs a
   * new id: `${job}:place:${epoch}`, then `${job}:place:${epoch}/1`, `/2`, …
   */
  readonly #refusals = new Map<string, { epoch: number; count: number }>();
  /** Placements proposed and not answered yet, by job id: such a job is not planned again. */
  readonly #inFlight = new Map<string, InFlight>();
  /**
   * Held preemptors' plans, by job id: the working state keeps their devices for them while the
   * victims stop, so that no other job (a victim placed again, above all) takes them meanwhile.
   */
  readonly #reserved = new Map<string, InFlight>();
  /** The working state: committed allocations + gossiped peers + #inFlight + #reserved (undefined: build anew). */
  #working: ClusterState | undefined;
  /** Per peer of #working: the gossiped state last seen, whether it was schedulable, its viewKey (computed when first needed). */
  readonly #peerSeen = new Map<string, { state: NodeState; schedulable: boolean; key: string | undefined }>();
  /** The replica and applied index #working was last brought in step with. */
  #stateSeen: object | undefined;
  #appliedSeen = -1;
  /** Proposals answered since #working was last brought in step (a refused one frees its devices). */
  #settled = 0;
  #tenantsSeen: TenantView[] = [];
  #quotaKey = '';
  /** Capacity generation: bumped whenever capacity may have grown (see the header). */
  #capacity = 0;
  /**
   * The last pass that looked at every job it had to: its replica, capacity generation and the
   * replica's waiting-entry sequence then. At the same replica and capacity every waiting job it
   * saw is unfit, in flight, or in #recheck, so the next pass looks only at the jobs that entered
   * the queue since and at #recheck: a 50k-job queue that cannot run costs nothing per pass.
   */
  #looked: { state: object; capacity: number; seq: number } | undefined;
  /** Waiting jobs a pass set aside without deciding (held preemptors, answered proposals, a lagging working state). */
  readonly #recheck = new Set<string>();
  /** Planning stopped for commits to come back (in-flight limit, a victim in flight). */
  #waitingOnCommits = false;
  #soonScheduled = false;
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  #busy = false;
  #dirty = false;
  #again = false;
  #stopped = false;

  constructor(opts: PlacementServiceOptions) {
    this.#o = opts;
    this.#log = opts.log;
    // No rng: exact ties go to the first peer in snapshot order, which packs best (see packing.ts).
    this.#scheduler = opts.scheduler ?? new Scheduler();
    this.#reserveAfterMs = opts.reserveAfterMs ?? DEFAULT_RESERVE_AFTER_MS;
    this.#lostAfterMs = (opts.leaseMs ?? DEFAULT_LEASE_MS) + FENCE_STOP_GRACE_MS + LOST_MARGIN_MS;
  }

  start(): void {
    // Under a stream of commits a pass per applied burst would starve the node: mark and batch.
    this.#unsubscribe = this.#o.control.onApplied(() => {
      this.#dirty = true;
    });
    let ticks = 0;
    this.#timer = setInterval(() => {
      if (this.#dirty || ++ticks % IDLE_PASS_EVERY === 0 || this.#leaseJustRanOut()) {
        this.#dirty = false;
        this.#kick();
      }
    }, TICK_MS);
  }

  /**
   * A dead peer's lease has just run out: its jobs are to be placed again now, not at the next
   * idle pass up to a second later (restart time is what a user waits for after a host dies).
   */
  #leaseJustRanOut(): boolean {
    const control = this.#o.control;
    if (control.localStatus().role !== 'leader') return false;
    return this.#o.peers().some((p) => {
      if (p.health !== 'dead') return false;
      const silence = control.leaseSilenceOf(p.peerId);
      return silence >= this.#lostAfterMs && silence < this.#lostAfterMs + IDLE_PASS_EVERY * TICK_MS;
    });
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#unsubscribe?.();
  }

  #kick(): void {
    if (this.#stopped) return;
    if (this.#o.control.localStatus().role !== 'leader') {
      // Should this node lead again, it starts from a fresh snapshot of committed state.
      this.#working = undefined;
      return;
    }
    if (this.#busy) {
      this.#again = true;
      return;
    }
    this.#busy = true;
    void this.#pass()
      .catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'placement pass failed'))
      .finally(() => {
        this.#busy = false;
        if (this.#again) {
          this.#again = false;
          this.#soon();
        }
      });
  }

  /** A pass as soon as the event loop has had its turn (I/O, Raft's timers), once however often asked. */
  #soon(): void {
    if (this.#soonScheduled || this.#stopped) return;
    this.#soonScheduled = true;
    setImmediate(() => {
      this.#soonScheduled = false;
      this.#kick();
    });
  }

  /** The peers the scheduler may use: alive members of the Raft group (they hold the replica that tells them what to run). */
  #peerViews(): PeerView[] {
    const s = this.#o.control.localStatus();
    const members = new Set([...s.voters, ...s.learners]);
    return this.#o
      .peers()
      .filter((p) => p.state !== undefined && p.health !== 'dead')
      .map((p) => peerViewOf(p.state!, { schedulable: p.health === 'alive' && members.has(p.peerId) }));
  }

  /** A cluster state from a snapshot of committed state and the gossiped view. */
  #cluster(tenants: TenantView[] = this.#o.control.state.tenants()): ClusterState {
    const state = this.#o.control.state;
    return ClusterState.fromSnapshot(snapshotOf({ peers: this.#peerViews(), jobs: this.#holdingJobs(), allocations: state.allocations(), tenants, now: this.#o.wallNow() }));
  }

  /** The jobs that hold allocations: what a snapshot needs of jobs (not the whole queue). */
  #holdingJobs(): Readonly<Job>[] {
    const state = this.#o.control.state;
    const ids = new Set(state.allocations().map((a) => a.jobId));
    return [...ids].flatMap((id) => {
      const job = state.job(id);
      return job === undefined ? [] : [job];
    });
  }

  async #pass(): Promise<void> {
    await this.#releaseLostHosts();
    if (this.#stopped || this.#o.control.localStatus().role !== 'leader') return;
    const cluster = this.#reconcile();
    const outcome = this.#planPass(cluster);
    for (const proposal of outcome.proposals) this.#propose(proposal);
    if (outcome.preemption !== undefined) await this.#preempt(outcome.preemption.job, outcome.preemption.plan);
    if (outcome.more) this.#again = true;
  }

  async #releaseLostHosts(): Promise<void> {
    const control = this.#o.control;
    const health = new Map(this.#o.peers().map((p) => [p.peerId, p.health]));
    const seen = new Set<string>();
    for (const alloc of this.#allocationsOnLostPeers(health)) {
      if (seen.has(alloc.jobId)) continue;
      const h = health.get(alloc.peerId) ?? 'dead';
      if (h !== 'dead' || control.leaseSilenceOf(alloc.peerId) < this.#lostAfterMs) continue;
      const job = control.state.job(alloc.jobId);
      if (job === undefined || job.epoch !== alloc.epoch) continue;
      seen.add(alloc.jobId);
      const { result } = await control.withLeasesRefused(alloc.peerId, () =>
        control.submit({
          type: 'job.transition',
          requestId: `${job.id}:${job.attempt}:lost-host`,
          actor: control.id,
          jobId: job.id,
          attempt: job.attempt,
          to: 'restarting',
          reason: `host ${alloc.peerId} was lost`,
        }),
      );
      if (result.ok) this.#log.info({ jobId: job.id, host: alloc.peerId, attempt: job.attempt }, 'host lost: the job will be placed again');
    }
  }

  /**
   * Committed allocations on peers the mesh holds dead or does not know. The working state (one
   * pass behind at most) says which jobs hold devices where, without sorting every allocation of
   * the fabric each pass; before there is one, committed state is read whole.
   */
  #allocationsOnLostPeers(health: ReadonlyMap<string, PlacementPeer['health']>): Readonly<Allocation>[] {
    const lost = (peerId: string): boolean => (health.get(peerId) ?? 'dead') === 'dead';
    const state = this.#o.control.state;
    const cluster = this.#working;
    if (cluster === undefined || this.#stateSeen !== state) return state.allocations().filter((a) => lost(a.peerId));
    const found: Readonly<Allocation>[] = [];
    for (const [jobId, held] of cluster.jobs) {
      if (!held.peerIds.some(lost)) continue;
      for (const id of state.job(jobId)?.allocationIds ?? []) {
        const allocation = state.allocation(id);
        if (allocation !== undefined && lost(allocation.peerId)) found.push(allocation);
      }
    }
    return found;
  }

  // ---- the working state -----------------------------------------------------------------------

  /**
   * Brings the working state in step with committed state and the gossiped view, by difference;
   * rebuilds it from a snapshot when a peer changed in what placement reads, or a committed
   * allocation does not fit it.
   */
  #reconcile(): ClusterState {
    const state = this.#o.control.state;
    const cluster = this.#working;
    if (cluster === undefined || state !== this.#stateSeen || this.#peersChanged(cluster)) return this.#rebuild();
    cluster.now = this.#o.wallNow();
    if (state.appliedIndex === this.#appliedSeen && this.#settled === 0) return cluster;
    this.#appliedSeen = state.appliedIndex;
    this.#settled = 0;
    this.#syncTenants(cluster, state.tenants());

    const committed = new Map<string, Readonly<Allocation>[]>();
    for (const allocation of state.allocations()) {
      const list = committed.get(allocation.jobId);
      if (list === undefined) committed.set(allocation.jobId, [allocation]);
      else list.push(allocation);
    }
    // Held here but not (or no longer, or at another epoch) committed, and not in flight: ended,
    // released, or a refused proposal. Its devices are free again.
    for (const [jobId, held] of cluster.jobs) {
      const list = committed.get(jobId);
      if (list !== undefined ? list[0]!.epoch === held.epoch : this.#pendingEpoch(jobId) === held.epoch) continue;
      cluster.release(jobId);
      this.#capacity++;
    }
    // Committed and not held here yet: placements this leader did not propose, or whose answer
    // came after the commit (a refused proposal that another placement beat).
    const added: Readonly<Allocation>[] = [];
    for (const [jobId, list] of committed) if (!cluster.jobs.has(jobId)) added.push(...list);
    if (added.length > 0 && !this.#addCommitted(cluster, added)) return this.#rebuild();
    // Reservations wait for their victims' release to commit before they hold anything here.
    this.#placeReservations(cluster);
    return cluster;
  }

  /** A job's proposed or reserved epoch (held in the working state without being committed). */
  #pendingEpoch(jobId: string): number | undefined {
    return (this.#inFlight.get(jobId) ?? this.#reserved.get(jobId))?.meta.epoch;
  }

  #placeReservations(cluster: ClusterState): void {
    for (const reserved of this.#reserved.values()) {
      if (!cluster.jobs.has(reserved.meta.jobId) && fits(cluster, reserved.members)) cluster.place(reserved.meta, reserved.members);
    }
  }

  /** Adds committed allocations to the working state; false when one does not fit it. */
  #addCommitted(cluster: ClusterState, added: readonly Readonly<Allocation>[]): boolean {
    const state = this.#o.control.state;
    const jobs = [...new Set(added.map((a) => a.jobId))].flatMap((id) => state.job(id) ?? []);
    const views = snapshotOf({ peers: [], jobs, allocations: added, tenants: [], now: cluster.now }).allocations;
    const byJob = new Map<string, { meta: JobMeta; members: PlacedMember[] }>();
    for (const v of views) {
      let entry = byJob.get(v.jobId);
      if (entry === undefined) {
        entry = { meta: { jobId: v.jobId, epoch: v.epoch, tenant: v.tenant, priority: v.priority, preemptible: v.preemptible, placedAt: v.placedAt }, members: [] };
        byJob.set(v.jobId, entry);
      }
      entry.members.push({ peerId: v.peerId, grants: [...v.devices], cpuMilli: v.cpuMilli, memoryMiB: v.memoryMiB });
    }
    for (const { meta, members } of byJob.values()) {
      // On a peer gone from the view, or over devices a proposal in flight holds here: start over.
      if (!fits(cluster, members)) return false;
      cluster.place(meta, members);
      if (meta.preemptible) this.#capacity++;
    }
    return true;
  }

  /** Builds the working state anew: a snapshot of committed state, plus the proposals in flight that still fit. */
  #rebuild(): ClusterState {
    const state = this.#o.control.state;
    this.#stateSeen = state;
    this.#appliedSeen = state.appliedIndex;
    this.#settled = 0;
    this.#peerSeen.clear();
    this.#peersChanged(undefined);
    const tenants = state.tenants();
    const cluster = this.#cluster(tenants);
    this.#syncTenants(cluster, tenants);
    for (const orphan of cluster.orphans.slice(0, 5)) this.#log.debug({ orphan }, 'committed allocation outside the gossiped view');
    for (const flight of this.#inFlight.values()) {
      if (!cluster.jobs.has(flight.meta.jobId) && fits(cluster, flight.members)) cluster.place(flight.meta, flight.members);
    }
    this.#placeReservations(cluster);
    this.#working = cluster;
    this.#capacity++;
    return cluster;
  }

  /**
   * Whether the set of peers or what placement reads of one (devices, links, labels, host size,
   * schedulable) changed since #working was built; records what it saw. Only a peer whose gossiped
   * state object changed costs more than a map lookup.
   */
  #peersChanged(cluster: ClusterState | undefined): boolean {
    const s = this.#o.control.localStatus();
    const members = new Set([...s.voters, ...s.learners]);
    let changed = false;
    let count = 0;
    for (const p of this.#o.peers()) {
      if (p.state === undefined || p.health === 'dead') continue;
      count++;
      const schedulable = p.health === 'alive' && members.has(p.peerId);
      const seen = this.#peerSeen.get(p.peerId);
      if (cluster !== undefined && !cluster.peerById.has(p.peerId)) changed = true;
      if (seen === undefined) {
        this.#peerSeen.set(p.peerId, { state: p.state, schedulable, key: undefined });
        changed ||= cluster !== undefined;
        continue;
      }
      if (seen.state === p.state && seen.schedulable === schedulable) continue;
      // A new state object (gossip versions every load change): compare what placement reads.
      seen.key ??= viewKey(peerViewOf(seen.state, { schedulable: seen.schedulable }));
      const key = viewKey(peerViewOf(p.state, { schedulable }));
      if (seen.key !== key) changed = true;
      this.#peerSeen.set(p.peerId, { state: p.state, schedulable, key });
    }
    return changed || (cluster !== undefined && count !== cluster.peers.length);
  }

  /** Quotas and GPU-hours used, from committed state (what the cluster holds it counts itself). */
  #syncTenants(cluster: ClusterState, tenants: TenantView[]): void {
    this.#tenantsSeen = tenants;
    for (const view of tenants) {
      const tenant = cluster.tenant(view.name);
      tenant.maxGpus = view.maxGpus;
      tenant.maxGpuHours = view.maxGpuHours;
      tenant.gpuHoursUsed = view.gpuHoursUsed;
    }
    const quotaKey = tenants.map((t) => `${t.name}:${t.maxGpus}:${t.maxGpuHours}`).join(',');
    if (quotaKey !== this.#quotaKey) {
      this.#quotaKey = quotaKey;
      this.#capacity++;
    }
  }

  // ---- planning ----------------------------------------------------------------------------------

  /**
   * Plans waiting jobs in queue order on `cluster` until the time budget is spent, applying each
   * plan to it; returns the plans to propose. Synchronous: nothing else changes the working state
   * meanwhile.
   */
  #planPass(cluster: ClusterState): PassOutcome {
    const now = this.#o.wallNow();
    const capacity = this.#capacity;
    const state = this.#o.control.state;
    const { jobs: all, looking } = this.#jobsToLookAt(state, capacity);
    this.#forgetGone(state.waitingCount());
    // Jobs of one shape (the same placement request but for the job id) fit or not together: a
    // shape that did not fit at this capacity is not planned again, and a long queue of like jobs
    // that cannot run costs a map lookup each, not a scheduling cycle each.
    const candidates: Readonly<Job>[] = [];
    let parseMs = 0;
    for (const job of all) {
      // Cheapest test first: in a long queue most jobs are known not to fit at this capacity.
      if (this.#unfit.get(job.id) === capacity || this.#inFlight.has(job.id)) {
        this.#recheck.delete(job.id);
        continue;
      }
      if ((this.#holdUntil.get(job.id) ?? 0) > now) {
        this.#recheck.add(job.id);
        continue;
      }
      // A new leader knows no shapes yet (a spec parse each): a long queue takes a few passes,
      // each parsing for up to the budget, counted apart from the scan so that each pass makes
      // the same progress however long the scan (counted from the pass's start, a long scan left
      // 64 parses per pass, which fell behind a fast queue for seconds). The pass then ends
      // without planning: the next one scans the same jobs again, more of them known.
      let shape: string | null;
      if (this.#requests.has(job.id)) shape = this.#shapeOf(job);
      else {
        if (parseMs > PASS_BUDGET_MS) return { proposals: [], more: true };
        const t = performance.now();
        shape = this.#shapeOf(job);
        parseMs += performance.now() - t;
      }
      if (shape === null || this.#unfitShapes.get(shape) === capacity) {
        this.#unfit.set(job.id, capacity);
        this.#recheck.delete(job.id);
        continue;
      }
      candidates.push(job);
    }
    const proposals: Proposal[] = [];
    let preemptiblePlaced = false;
    const done = (outcome: Omit<PassOutcome, 'proposals'>): PassOutcome => {
      // A new preemptible job is a victim that was not there: a preemptor that found none may now.
      if (preemptiblePlaced) this.#capacity++;
      return { proposals, ...outcome };
    };
    let planned = 0;
    const planStarted = performance.now();
    for (const job of inOrder(candidates, this.#queueOrder())) {
      // Planning is synchronous: a long queue must not hold the event loop (and with it the Raft
      // heartbeats: a leader busy for an election timeout is deposed). The rest waits a turn: the
      // pass is not complete, the next one looks at the same jobs again. The budget counts
      // planning only, so a pass after a long scan still plans its share.
      if (planned > 0 && performance.now() - planStarted > PASS_BUDGET_MS) return done({ more: true });
      if (this.#inFlight.size + proposals.length >= MAX_IN_FLIGHT) {
        this.#waitingOnCommits = true;
        return done({ more: false });
      }
      const shape = this.#shapeOf(job)!;
      if (this.#unfitShapes.get(shape) === capacity) {
        this.#unfit.set(job.id, capacity);
        this.#recheck.delete(job.id);
        continue;
      }
      // A preemptor whose hold ended plans again, first giving back what was kept for it.
      if (this.#reserved.delete(job.id)) cluster.release(job.id);
      if (cluster.jobs.has(job.id)) {
        this.#recheck.add(job.id); // committed state says waiting, the working state lags: next pass
        continue;
      }
      const result = this.#plan(cluster, job, this.#reservedFor(job));
      planned++;
      if (result === undefined || result.plan === null) {
        this.#unfitShapes.set(shape, capacity);
        this.#unfit.set(job.id, capacity);
        this.#recheck.delete(job.id);
        if (result !== undefined) this.#maybeReserve(cluster, job, result, now);
        continue;
      }
      if (this.#reservation?.jobId === job.id) this.#endReservation();
      const plan = result.plan;
      if (plan.preemptions.length > 0) {
        // A victim that holds no committed placement (devices kept for another preemptor) is not one.
        if (plan.preemptions.some((v) => this.#reserved.has(v.jobId))) {
          this.#recheck.add(job.id);
          continue;
        }
        // Victims whose own placement is not committed yet cannot be released yet: plan again once it is.
        const pending = new Set([...this.#inFlight.keys(), ...proposals.map((p) => p.job.id)]);
        if (plan.preemptions.some((v) => pending.has(v.jobId))) {
          this.#waitingOnCommits = true;
          return done({ more: false });
        }
        return done({ preemption: { job, plan }, more: false });
      }
      // Re-check against the working state (committed state plus what is in flight) right before
      // proposing; the state machine checks again against committed state.
      const verdict = verifyPlan(cluster, plan, this.#requestOf(job)!);
      if (!verdict.ok) {
        this.#log.warn({ jobId: job.id, problems: verdict.problems }, 'plan failed verification; planning again on a fresh state');
        this.#working = undefined;
        this.#dirty = true;
        return done({ more: false });
      }
      const epoch = job.epoch + 1;
      const meta: JobMeta = { jobId: job.id, epoch, tenant: job.tenant, priority: job.priority, preemptible: job.preemptible, placedAt: now };
      const members = membersOf(plan);
      cluster.place(meta, members);
      if (job.preemptible) preemptiblePlaced = true;
      this.#recheck.delete(job.id);
      proposals.push({ job, epoch, plan, explain: result.explain, meta, members });
    }
    // Every job looked at is decided or set aside: the next pass at this capacity starts from here.
    this.#looked = looking;
    return done({ more: false });
  }

  /**
   * The waiting jobs a pass looks at, and what to remember of it once it has looked at them all:
   * every waiting job on a new replica or capacity generation (or before any pass completed);
   * otherwise only those that entered the queue since #looked, and #recheck.
   */
  #jobsToLookAt(state: PlacementControl['state'], capacity: number): { jobs: Readonly<Job>[]; looking: { state: object; capacity: number; seq: number } } {
    const last = this.#looked;
    if (last === undefined || last.state !== state || last.capacity !== capacity) {
      this.#recheck.clear();
      const { jobs, seq } = state.waitingAddedAfter(0);
      return { jobs, looking: { state, capacity, seq } };
    }
    const { jobs, seq } = state.waitingAddedAfter(last.seq);
    if (this.#recheck.size > 0) {
      const listed = new Set(jobs.map((j) => j.id));
      for (const id of this.#recheck) {
        const job = state.job(id);
        if (job === undefined || !WAITING.has(job.state)) this.#recheck.delete(id);
        else if (!listed.has(id)) jobs.push(job);
      }
    }
    return { jobs, looking: { state, capacity, seq } };
  }

  /** Proposes a planned placement; the job stays out of planning until the answer comes. */
  #propose(p: Proposal): void {
    const control = this.#o.control;
    const jobId = p.job.id;
    this.#inFlight.set(jobId, { meta: p.meta, members: p.members });
    const tries = this.#refusals.get(jobId);
    const retry = tries !== undefined && tries.epoch === p.epoch ? tries.count : 0;
    const requestId = retry === 0 ? `${jobId}:place:${p.epoch}` : `${jobId}:place:${p.epoch}/${retry}`;
    const { at: _at, ...request } = toAllocPlaceCommand(p.plan, { requestId, actor: control.id, at: p.meta.placedAt, epoch: p.epoch });
    let refused = true;
    control
      .submit(request)
      .then(
        ({ result }) => {
          if (result.ok) {
            refused = false;
            this.#refusals.delete(jobId);
            this.#holdUntil.delete(jobId);
            this.#placedBecause.set(jobId, { epoch: p.epoch, explain: p.explain });
            if (this.#placedBecause.size > 10_000) this.#placedBecause.delete(this.#placedBecause.keys().next().value!);
            this.#log.info({ jobId, epoch: p.epoch, peers: p.plan.members.map((m) => m.peerId) }, 'job placed');
            return;
          }
          // A stale plan (the state moved under it): the job waits and is planned again.
          this.#refusals.set(jobId, { epoch: p.epoch, count: retry + 1 });
          this.#log.debug({ jobId, requestId, code: result.code, message: result.message }, 'plan refused');
        },
        // Outcome unknown (no leader answered in time): a retry under the same id is answered
        // with the outcome, whichever it was.
        (err: unknown) => this.#log.warn({ jobId, requestId, err: errorMessage(err) }, 'proposing a placement failed; planning it again'),
      )
      .finally(() => {
        this.#inFlight.delete(jobId);
        this.#settled++;
        // Still waiting (refused, or the answer never came): the next pass looks at it again.
        this.#recheck.add(jobId);
        if (this.#waitingOnCommits) {
          this.#waitingOnCommits = false;
          this.#soon();
        }
        // A refused job is planned again on the next tick (not at once: a plan the state machine
        // keeps refusing must not spin the loop).
        if (refused) this.#dirty = true;
      });
  }

  /** Releases a plan's victims and holds the preemptor back while they stop. */
  async #preempt(job: Readonly<Job>, plan: Plan): Promise<void> {
    const control = this.#o.control;
    const now = this.#o.wallNow();
    for (const release of toReleaseCommands(plan, { requestIdPrefix: `${job.id}:preempt:${job.epoch}`, actor: control.id, at: now })) {
      const { at: _at, ...request } = release;
      await control.submit(request);
    }
    this.#holdUntil.set(job.id, now + DEFAULT_STOP_GRACE_MS + LOST_MARGIN_MS);
    const meta: JobMeta = { jobId: job.id, epoch: job.epoch + 1, tenant: job.tenant, priority: job.priority, preemptible: job.preemptible, placedAt: now };
    this.#reserved.set(job.id, { meta, members: membersOf(plan) });
    this.#log.info({ jobId: job.id, victims: plan.preemptions.map((v) => v.jobId) }, 'preempting lower-priority jobs');
  }

  /** A job's placement request (undefined when its spec does not parse), parsed once while it waits. */
  #requestOf(job: Readonly<Job>): PlacementRequest | undefined {
    const known = this.#known(job);
    return known === null ? undefined : { ...known.request, jobId: job.id };
  }

  #known(job: Readonly<Job>): { request: PlacementRequest; shape: string } | null {
    const known = this.#requests.get(job.id);
    if (known !== undefined) return known;
    // A queue holds many jobs of one spec (an array of runs, a sweep): each spec is parsed once.
    // A new leader meets its whole queue at once, and a spec parse costs ~0.1 ms.
    const text = JSON.stringify(job.spec);
    let parsed = this.#bySpec.get(text);
    if (parsed === undefined) {
      const spec = JobSpecSchema.safeParse(job.spec);
      const request = spec.success ? resolveRequest(spec.data, '') : undefined;
      parsed = request === undefined ? null : { request, shape: JSON.stringify({ ...request, jobId: null, device: { ...request.device, selector: null } }) };
      if (this.#bySpec.size >= SPEC_CACHE_ENTRIES) this.#bySpec.clear();
      this.#bySpec.set(text, parsed);
    }
    // Shared by every job of the spec (the job id goes in at #requestOf): a long queue costs the
    // garbage collector no objects of its own here.
    this.#requests.set(job.id, parsed);
    return parsed;
  }

  /**
   * Schedules `job` on `cluster` (read only). A job with a checkpoint tries its holders first, one
   * at a time in restore order (the first live one has been restoring it since its host was lost,
   * see daemon.ts), then any of them (a gang), then every peer.
   */
  #plan(cluster: ClusterState, job: Readonly<Job>, reserved: ReadonlyMap<string, string> | null = null): ScheduleResult | undefined {
    const request = this.#requestOf(job);
    if (request === undefined) return undefined;
    const latest = this.#o.control.state.checkpoints(job.id).at(-1);
    if (latest !== undefined) {
      for (const holder of restoreOrder(job.id, latest.holders)) {
        const near = this.#scheduler.schedule(cluster, request, { only: new Set([holder]), preemption: false, reserved });
        if (near.plan !== null) return near;
      }
      const near = this.#scheduler.schedule(cluster, request, { only: new Set(latest.holders), preemption: false, reserved });
      if (near.plan !== null) return near;
    }
    return this.#scheduler.schedule(cluster, request, { reserved });
  }

  /** The reservation `job` must respect: one held for a job of at least its priority. */
  #reservedFor(job: Readonly<Job>): ReadonlyMap<string, string> | null {
    const r = this.#reservation;
    if (r === null || r.jobId === job.id) return null;
    if (job.priority > r.priority || !WAITING.has(this.#o.control.state.job(r.jobId)?.state ?? 'gone')) return null;
    return r.peers;
  }

  /** A job that waited long enough without fitting anywhere reserves the peers closest to fitting it. */
  #maybeReserve(cluster: ClusterState, job: Readonly<Job>, result: ScheduleResult, now: number): void {
    const current = this.#reservation;
    if (current !== null && current.jobId !== job.id && WAITING.has(this.#o.control.state.job(current.jobId)?.state ?? 'gone')) return;
    if (result.status.code !== 'Unschedulable' || now - job.submittedAt < this.#reserveAfterMs) return;
    const request = this.#requestOf(job);
    if (request === undefined) return;
    const peers = reservationFor(cluster, request, this.#scheduler);
    if (peers.length === 0) return;
    const before = current === null ? '' : [...current.peers.keys()].join(',');
    this.#reservation = { jobId: job.id, priority: job.priority, peers: new Map(peers.map((p) => [p.id, job.id])) };
    if (before !== peers.map((p) => p.id).join(',')) {
      // Jobs judged unfit under another reservation (or none) are judged again.
      this.#capacity++;
      this.#log.info({ jobId: job.id, peers: peers.map((p) => p.id) }, 'peers reserved for a job that has waited long');
    }
  }

  #endReservation(): void {
    this.#reservation = null;
    this.#capacity++; // what was held for it is free for the others again
  }

  /** Waiting jobs in the order they are considered: priority, fair share of the tenant, age. */
  queue(): Readonly<Job>[] {
    return this.#o.control.state.waitingJobs().sort(this.#queueOrder(this.#o.control.state.tenants()));
  }

  /** The queue's comparator over the tenants' committed shares. */
  #queueOrder(tenants: readonly TenantView[] = this.#tenantsSeen): (a: Readonly<Job>, b: Readonly<Job>) => number {
    const share = new Map(tenants.map((t) => [t.name, t.gpusHeld]));
    return (a, b) => b.priority - a.priority || (share.get(a.tenant) ?? 0) - (share.get(b.tenant) ?? 0) || a.submittedAt - b.submittedAt || (a.id < b.id ? -1 : 1);
  }

  /**
   * What the scheduler sees of a job: its placement request without the job id (null when the
   * spec no longer parses). Two jobs of one shape are interchangeable for fit; which peers the
   * plan prefers (a restarting job's checkpoint holders) does not change whether it fits.
   */
  #shapeOf(job: Readonly<Job>): string | null {
    return this.#known(job)?.shape ?? null;
  }

  /** Drops what is remembered of jobs that no longer wait, once there is more of it than waiting jobs (`waiting`). */
  #forgetGone(waiting: number): void {
    const state = this.#o.control.state;
    const gone = (id: string) => !WAITING.has(state.job(id)?.state ?? 'gone');
    if (this.#reservation !== null && gone(this.#reservation.jobId)) this.#endReservation();
    for (const id of this.#reserved.keys()) if (gone(id)) this.#reserved.delete(id);
    // Twice the queue: the walk below then runs once per queue's worth of jobs gone, not each pass.
    const n = 2 * waiting + 64;
    if (this.#unfit.size <= n && this.#requests.size <= n && this.#refusals.size <= n && this.#holdUntil.size <= n && this.#unfitShapes.size <= 1024) return;
    for (const map of [this.#unfit, this.#requests, this.#refusals, this.#holdUntil]) for (const id of map.keys()) if (gone(id)) map.delete(id);
    if (this.#unfitShapes.size > 1024) this.#unfitShapes.clear();
  }

  /** Why a job waits (or, for one this leader placed, why it went where it did). */
  explain(jobId: string): { state: string; explanation: Explanation | null; note: string | null } {
    const job = this.#o.control.state.job(jobId);
    if (job === undefined) return { state: 'unknown', explanation: null, note: null };
    if (WAITING.has(job.state)) {
      const result = this.#plan(this.#cluster(), job, this.#reservedFor(job));
      const hold = this.#holdUntil.get(jobId);
      const note = hold !== undefined && hold > this.#o.wallNow() ? 'waiting for preempted jobs to stop' : null;
      return { state: job.state, explanation: result?.explain ?? null, note: result === undefined ? 'the job spec no longer parses' : note };
    }
    const placed = this.#placedBecause.get(jobId);
    if (placed !== undefined && placed.epoch === job.epoch) return { state: job.state, explanation: placed.explain, note: null };
    return { state: job.state, explanation: null, note: `placed at epoch ${job.epoch} by an earlier leader; its scores were not kept` };
  }

  /** Whether a job could run on this fabric at all, were every peer empty (checked at submit). */
  feasibleEver(spec: unknown, jobId: string): { ok: true } | { ok: false; why: string } {
    const parsed = JobSpecSchema.safeParse(spec);
    if (!parsed.success) return { ok: false, why: 'invalid spec' };
    const peers = this.#o.peers().filter((p) => p.state !== undefined && p.health !== 'dead').map((p) => peerViewOf(p.state!, { schedulable: true }));
    const empty = ClusterState.fromSnapshot({ peers, allocations: [], tenants: [], now: this.#o.wallNow() });
    const verdict = checkFeasibleEver(empty, resolveRequest(parsed.data, jobId), this.#scheduler);
    return verdict.feasible ? { ok: true } : { ok: false, why: verdict.reason };
  }
}
