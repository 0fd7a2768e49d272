/**
 * The leader's placement loop (Nomad's plan applier, in our shape). While this node leads:
 *
 *  1. Lost hosts: a job whose host the mesh holds dead, and whose lease has not been renewed for
 *     longer than the lease plus the stop grace (so the old run has surely ended, see
 *     job-agent.ts), is moved to `restarting`: its devices are released and it waits to be placed.
 *  2. Placement: waiting jobs (queued, restarting) in queue order — priority, then the tenant
 *     holding the smallest share of the fabric's GPUs (dominant-resource fair share), then age —
 *     are planned by the pure scheduler over a snapshot of committed state plus the gossiped view.
 *     A plan is committed through Raft as one `alloc.place` (a gang whole or not at all); the
 *     state machine re-checks every device against committed allocations, so a stale plan is
 *     refused and simply planned again on the next pass. A restarting job tries the peers that
 *     already hold its latest checkpoint first.
 *  3. Preemption: a plan naming victims releases them first (their hosts stop them with SIGTERM,
 *     which lets a job checkpoint, then SIGKILL after the grace period), and holds the job back
 *     for that grace period before it takes their devices.
 *
 * Explanations (`fabric explain`) are computed here, on the leader, over the same snapshot.
 */
import { errorMessage, type Logger } from '../core/index.ts';
import type { NodeState } from '../gossip/state.ts';
import type { Job } from '../placement/fsm/index.ts';
import {
  ClusterState,
  JobSpecSchema,
  Scheduler,
  checkFeasibleEver,
  peerViewOf,
  resolveRequest,
  snapshotOf,
  toAllocPlaceCommand,
  toReleaseCommands,
  verifyPlan,
  type Explanation,
  type PeerView,
  type ScheduleResult,
} from '../placement/index.ts';
import { DEFAULT_STOP_GRACE_MS } from '../runner/index.ts';
import type { ControlPlane } from './control-plane.ts';
import { DEFAULT_LEASE_MS, FENCE_STOP_GRACE_MS } from './job-agent.ts';

export interface PlacementPeer {
  peerId: string;
  health: 'alive' | 'suspect' | 'dead';
  state: NodeState | undefined;
}

/** What the placement loop needs of the control plane (a narrow seam, so tests can drive it). */
export type PlacementControl = Pick<ControlPlane, 'id' | 'state' | 'localStatus' | 'onApplied' | 'submit' | 'leaseSilenceOf'>;

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
}

const TICK_MS = 50;
/** Without news, a pass every second anyway (leases expire, holds end). */
const IDLE_PASS_EVERY = 20;
/** Planning time per pass before the loop yields (ms). */
const PASS_BUDGET_MS = 10;
/** Margin over lease + stop grace for clock-rate drift and a slow kill. */
const LOST_MARGIN_MS = 500;
const WAITING: ReadonlySet<string> = new Set(['queued', 'restarting']);

export class PlacementService {
  readonly #o: PlacementServiceOptions;
  readonly #log: Logger;
  readonly #scheduler: Scheduler;
  readonly #lostAfterMs: number;
  /** Why each job placed by this leader went where it did, for `fabric explain`. */
  readonly #placedBecause = new Map<string, { epoch: number; explain: Explanation }>();
  /** Waiting jobs that did not fit, with the capacity they did not fit (see #capacityKey). */
  readonly #unfit = new Map<string, string>();
  /** Shapes (see #shapeOf) that did not fit, with the capacity they did not fit. */
  readonly #unfitShapes = new Map<string, string>();
  /** Each waiting job's shape, computed once (a job's spec never changes). */
  readonly #shapes = new Map<string, string | null>();
  /** Preemptors waiting for their victims to stop: job id → not before (wall ms). */
  readonly #holdUntil = new Map<string, number>();
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
    this.#lostAfterMs = (opts.leaseMs ?? DEFAULT_LEASE_MS) + FENCE_STOP_GRACE_MS + LOST_MARGIN_MS;
  }

  start(): void {
    // Under a stream of commits a pass per applied burst would starve the node: mark and batch.
    this.#unsubscribe = this.#o.control.onApplied(() => {
      this.#dirty = true;
    });
    let ticks = 0;
    this.#timer = setInterval(() => {
      if (this.#dirty || ++ticks % IDLE_PASS_EVERY === 0) {
        this.#dirty = false;
        this.#kick();
      }
    }, TICK_MS);
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#unsubscribe?.();
  }

  #kick(): void {
    if (this.#stopped || this.#o.control.localStatus().role !== 'leader') return;
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
          setImmediate(() => this.#kick());
        }
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

  #cluster(): ClusterState {
    const state = this.#o.control.state;
    return ClusterState.fromSnapshot(
      snapshotOf({ peers: this.#peerViews(), jobs: this.#holdingJobs(), allocations: state.allocations(), tenants: state.tenants(), now: this.#o.wallNow() }),
    );
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
    // One placement per iteration, each on a fresh snapshot: committed state is the truth.
    for (let placed = 0; placed < 64 && !this.#stopped; placed++) {
      if (!(await this.#placeOne())) return;
    }
  }

  async #releaseLostHosts(): Promise<void> {
    const control = this.#o.control;
    const health = new Map(this.#o.peers().map((p) => [p.peerId, p.health]));
    const seen = new Set<string>();
    for (const alloc of control.state.allocations()) {
      if (seen.has(alloc.jobId)) continue;
      const h = health.get(alloc.peerId) ?? 'dead';
      if (h !== 'dead' || control.leaseSilenceOf(alloc.peerId) < this.#lostAfterMs) continue;
      const job = control.state.job(alloc.jobId);
      if (job === undefined || job.epoch !== alloc.epoch) continue;
      seen.add(alloc.jobId);
      const { result } = await control.submit({
        type: 'job.transition',
        requestId: `${job.id}:${job.attempt}:lost-host`,
        actor: control.id,
        jobId: job.id,
        attempt: job.attempt,
        to: 'restarting',
        reason: `host ${alloc.peerId} was lost`,
      });
      if (result.ok) this.#log.info({ jobId: job.id, host: alloc.peerId, attempt: job.attempt }, 'host lost: the job will be placed again');
    }
  }

  /** Plans and commits the first waiting job that fits; false when none did. */
  async #placeOne(): Promise<boolean> {
    const control = this.#o.control;
    const now = this.#o.wallNow();
    const capacity = this.#capacityKey();
    const all = this.#o.control.state.waitingJobs();
    this.#forgetGone(all);
    // Jobs of one shape (the same placement request but for the job id) fit or not together: the
    // queue is grouped by shape and only the first job of each group, in queue order, is planned.
    // A long queue of like jobs that cannot run costs a map lookup each, not a scheduling cycle
    // each, and is planned again only once capacity has changed.
    const heads = new Map<string, Readonly<Job>>();
    const order = this.#queueOrder();
    const started = performance.now();
    let scanned = 0;
    for (const job of all) {
      // A new leader knows no shapes yet (a spec parse each): a long queue takes a few passes.
      if (++scanned % 256 === 0 && performance.now() - started > PASS_BUDGET_MS) {
        this.#dirty = true;
        return false;
      }
      if (this.#unfit.get(job.id) === capacity || (this.#holdUntil.get(job.id) ?? 0) > now) continue;
      const shape = this.#shapeOf(job);
      if (shape === null || this.#unfitShapes.get(shape) === capacity) {
        this.#unfit.set(job.id, capacity);
        continue;
      }
      const head = heads.get(shape);
      if (head === undefined || order(job, head) < 0) heads.set(shape, job);
    }
    if (heads.size === 0) return false;
    const cluster = this.#cluster();
    for (const [shape, job] of [...heads].sort((a, b) => order(a[1], b[1]))) {
      // Planning is synchronous: a long queue must not hold the event loop (and with it the Raft
      // heartbeats: a leader busy for an election timeout is deposed). The rest waits a tick.
      if (performance.now() - started > PASS_BUDGET_MS) {
        this.#dirty = true;
        return false;
      }
      const result = this.#plan(cluster, job);
      if (result === undefined || result.plan === null) {
        this.#unfitShapes.set(shape, capacity);
        this.#unfit.set(job.id, capacity);
        continue;
      }
      const plan = result.plan;
      if (plan.preemptions.length > 0) {
        for (const release of toReleaseCommands(plan, { requestIdPrefix: `${job.id}:preempt:${job.epoch}`, actor: control.id, at: now })) {
          const { at: _at, ...request } = release;
          await control.submit(request);
        }
        this.#holdUntil.set(job.id, now + DEFAULT_STOP_GRACE_MS + LOST_MARGIN_MS);
        this.#log.info({ jobId: job.id, victims: plan.preemptions.map((v) => v.jobId) }, 'preempting lower-priority jobs');
        return true;
      }
      // Re-check against committed state right before proposing (the state machine checks again).
      const verdict = verifyPlan(cluster, plan, this.#requestOf(job)!);
      if (!verdict.ok) {
        this.#log.warn({ jobId: job.id, problems: verdict.problems }, 'plan failed verification; planning again');
        return true;
      }
      const epoch = job.epoch + 1;
      const { at: _at, ...request } = toAllocPlaceCommand(plan, { requestId: `${job.id}:place:${epoch}`, actor: control.id, at: now, epoch });
      const { result: applied } = await control.submit(request);
      if (applied.ok) {
        this.#holdUntil.delete(job.id);
        this.#placedBecause.set(job.id, { epoch, explain: result.explain });
        if (this.#placedBecause.size > 10_000) this.#placedBecause.delete(this.#placedBecause.keys().next().value!);
        this.#log.info({ jobId: job.id, epoch, peers: plan.members.map((m) => m.peerId) }, 'job placed');
        return true;
      }
      // A stale plan (the state moved under it): plan again on a fresh snapshot.
      this.#log.debug({ jobId: job.id, code: applied.code, message: applied.message }, 'plan refused');
      return true;
    }
    return false;
  }

  /**
   * What a waiting job's fit depends on, short of the job itself: the schedulable peers with their
   * state versions, and the committed allocations. Submissions and reports do not change it.
   */
  #capacityKey(): string {
    const s = this.#o.control.localStatus();
    const peers = this.#o
      .peers()
      .filter((p) => p.state !== undefined && p.health === 'alive')
      .map((p) => `${p.peerId}:${p.state!.incarnation}.${p.state!.seq}`)
      .sort()
      .join(',');
    const allocations = this.#o.control.state
      .allocations()
      .map((a) => `${a.jobId}@${a.epoch}`)
      .sort()
      .join(',');
    return `${s.voters.length + s.learners.length}|${peers}|${allocations}`;
  }

  /** Schedules `job` on `cluster` (read only). A restarting job tries the holders of its latest checkpoint first. */
  #requestOf(job: Readonly<Job>): ReturnType<typeof resolveRequest> | undefined {
    const spec = JobSpecSchema.safeParse(job.spec);
    return spec.success ? resolveRequest(spec.data, job.id) : undefined;
  }

  #plan(cluster: ClusterState, job: Readonly<Job>): ScheduleResult | undefined {
    const request = this.#requestOf(job);
    if (request === undefined) return undefined;
    const latest = this.#o.control.state.checkpoints(job.id).at(-1);
    if (latest !== undefined) {
      const near = this.#scheduler.schedule(cluster, request, { only: new Set(latest.holders), preemption: false });
      if (near.plan !== null) return near;
    }
    return this.#scheduler.schedule(cluster, request);
  }

  /** Waiting jobs in the order they are considered: priority, fair share of the tenant, age. */
  queue(): Readonly<Job>[] {
    return this.#o.control.state.waitingJobs().sort(this.#queueOrder());
  }

  /** The queue's comparator over the tenants' current shares. */
  #queueOrder(): (a: Readonly<Job>, b: Readonly<Job>) => number {
    const share = new Map(this.#o.control.state.tenants().map((t) => [t.name, t.gpusHeld]));
    return (a, b) => b.priority - a.priority || (share.get(a.tenant) ?? 0) - (share.get(b.tenant) ?? 0) || a.submittedAt - b.submittedAt || (a.id < b.id ? -1 : 1);
  }

  /**
   * What the scheduler sees of a job: its placement request without the job id (null when the
   * spec no longer parses). Two jobs of one shape are interchangeable for fit; which peers the
   * plan prefers (a restarting job's checkpoint holders) does not change whether it fits.
   */
  #shapeOf(job: Readonly<Job>): string | null {
    const known = this.#shapes.get(job.id);
    if (known !== undefined) return known;
    const request = this.#requestOf(job);
    const shape = request === undefined ? null : JSON.stringify({ ...request, jobId: null, device: { ...request.device, selector: null } });
    this.#shapes.set(job.id, shape);
    return shape;
  }

  /** Drops what is remembered of jobs that no longer wait. */
  #forgetGone(waiting: readonly Readonly<Job>[]): void {
    if (this.#unfit.size <= waiting.length && this.#shapes.size <= waiting.length && this.#unfitShapes.size <= 1024) return;
    const ids = new Set(waiting.map((j) => j.id));
    for (const id of this.#unfit.keys()) if (!ids.has(id)) this.#unfit.delete(id);
    for (const id of this.#shapes.keys()) if (!ids.has(id)) this.#shapes.delete(id);
    if (this.#unfitShapes.size > 1024) this.#unfitShapes.clear();
  }

  /** Why a job waits (or, for one this leader placed, why it went where it did). */
  explain(jobId: string): { state: string; explanation: Explanation | null; note: string | null } {
    const job = this.#o.control.state.job(jobId);
    if (job === undefined) return { state: 'unknown', explanation: null, note: null };
    if (WAITING.has(job.state)) {
      const result = this.#plan(this.#cluster(), job);
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
