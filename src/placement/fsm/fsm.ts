/**
 * The replicated fabric state machine: Raft hands it committed entries in log order and every
 * replica computes the same state and the same answers. It is pure — no clock, no randomness, no
 * I/O; time is the leader's clock stamped on each command.
 *
 * Each handler checks everything before it changes anything, so a refused command changes nothing
 * but the audit trail (and the idempotency table, so that its retry is refused the same way).
 */
import { Packr } from 'msgpackr';
import { FabricError, assertNever, errorMessage } from '../../core/index.ts';
import { decodeCommand, type Command, type CommandOf } from './commands.ts';
import { canonical, compareCodeUnits } from './json.ts';
import {
  DEFAULT_FSM_LIMITS,
  FsmLimitsSchema,
  HOLDING_STATES,
  JOB_TRANSITIONS,
  PLACEABLE_STATES,
  SNAPSHOT_VERSION,
  TERMINAL_STATES,
  migrateSnapshot,
  type Allocation,
  type ApplyResult,
  type ApplyValue,
  type AuditEntry,
  type Checkpoint,
  type DeviceGrant,
  type FsmLimits,
  type Job,
  type JobState,
  type RejectCode,
  type RequestRecord,
  type SnapshotV1,
  type Tenant,
} from './state.ts';

const MILLI_PER_GPU = 1000;
const MS_PER_HOUR = 3_600_000;
/** Messages kept in the audit trail are cut to this length. */
const AUDIT_MESSAGE_CHARS = 1024;

const packr = new Packr({ useRecords: false });

export interface JobFilter {
  state?: JobState | readonly JobState[];
  tenant?: string;
}

/** A tenant with what it holds and has consumed, as the quota checks see it. */
export interface TenantView extends Tenant {
  /** GPUs held by live allocations now (fractions count by their share). */
  gpusHeld: number;
  /** GPU-hours consumed, live allocations included up to the state's clock. */
  gpuHoursUsed: number;
}

function reject(code: RejectCode, message: string): ApplyResult {
  return { ok: false, code, message };
}

function accept(value: ApplyValue): ApplyResult {
  return { ok: true, value };
}

function sortedValues<V>(map: ReadonlyMap<string, V>): V[] {
  return [...map.keys()].sort(compareCodeUnits).map((key) => map.get(key) as V);
}

/** What a command is about, for the audit trail. */
function subjectOf(command: Command): string | null {
  switch (command.type) {
    case 'tenant.upsert':
      return command.tenant;
    case 'noop':
      return null;
    default:
      return command.jobId;
  }
}

export class FabricStateMachine {
  readonly #limits: FsmLimits;
  #appliedIndex = 0;
  /** High-water mark of the `at` of applied commands: leaders' clocks may differ, ours never goes back. */
  #clock = 0;
  readonly #jobs = new Map<string, Job>();
  /**
   * Jobs in PLACEABLE_STATES, kept with every state change: id → the sequence number it got when
   * it entered (or re-entered) those states. The leader's placement loop asks for the jobs that
   * entered since its last look (waitingAddedAfter) instead of scanning a long queue each pass.
   */
  readonly #waiting = new Map<string, number>();
  #waitingSeq = 0;
  /** Every entry into #waiting, in sequence order (ids and their seqs side by side); stale ones are skipped on read. */
  #addedIds: string[] = [];
  #addedSeqs: number[] = [];
  readonly #allocations = new Map<string, Allocation>();
  readonly #checkpoints = new Map<string, Checkpoint[]>();
  readonly #tenants = new Map<string, Tenant>();
  /** In the order first applied, which is the order in which it forgets. */
  readonly #requests = new Map<string, RequestRecord>();
  /** Ring: entry `seq` lives at `seq % auditEntries`. */
  #audit: AuditEntry[] = [];
  #auditSeq = 0;

  // Indexes derived from the allocations, rebuilt on restore, never snapshotted.
  readonly #allocationsByPeer = new Map<string, Set<string>>();
  readonly #allocationsByTenant = new Map<string, Set<string>>();
  /** peerId → device uuid → thousandths held by live allocations. */
  readonly #heldMilli = new Map<string, Map<string, number>>();
  /** peerId → parent GPU uuid → live MIG slice grants on it. */
  readonly #migSlicesOut = new Map<string, Map<string, number>>();

  constructor(limits: Partial<FsmLimits> = {}) {
    this.#limits = FsmLimitsSchema.parse({ ...DEFAULT_FSM_LIMITS, ...limits });
  }

  /** Index of the last log entry applied (0 before any). */
  get appliedIndex(): number {
    return this.#appliedIndex;
  }

  get limits(): Readonly<FsmLimits> {
    return this.#limits;
  }

  /**
   * Applies the committed log entry at `index`. Never throws on bad bytes or a command that does
   * not fit the state: those are refused with a code, the same way on every replica.
   */
  apply(index: number, data: Uint8Array): ApplyResult {
    if (!Number.isSafeInteger(index) || index <= this.#appliedIndex) {
      return reject('ALREADY_APPLIED', `log index ${index} is not after the applied index ${this.#appliedIndex}`);
    }
    this.#appliedIndex = index;

    let command: Command;
    try {
      command = decodeCommand(data);
    } catch (err) {
      const result = reject('BAD_COMMAND', errorMessage(err));
      this.#recordAudit(index, null, result, false);
      return result;
    }

    this.#clock = Math.max(this.#clock, command.at);
    this.#forgetOldRequests();

    const previous = this.#requests.get(command.requestId);
    if (previous !== undefined) {
      const result =
        previous.type === command.type
          ? previous.result
          : reject('REQUEST_ID_REUSED', `request id ${command.requestId} was first used for ${previous.type}`);
      this.#recordAudit(index, command, result, true);
      return result;
    }

    const result = this.#execute(command);
    this.#requests.set(command.requestId, { requestId: command.requestId, type: command.type, at: this.#clock, result });
    this.#forgetOldRequests();
    this.#recordAudit(index, command, result, false);
    return result;
  }

  #execute(command: Command): ApplyResult {
    switch (command.type) {
      case 'job.submit':
        return this.#submit(command);
      case 'job.cancel':
        return this.#cancel(command);
      case 'job.transition':
        return this.#transition(command);
      case 'alloc.place':
        return this.#place(command);
      case 'alloc.release':
        return this.#release(command);
      case 'checkpoint.commit':
        return this.#commitCheckpoint(command);
      case 'checkpoint.gc':
        return this.#collectCheckpoints(command);
      case 'tenant.upsert':
        return this.#upsertTenant(command);
      case 'noop':
        return accept({});
      default:
        return assertNever(command, 'command');
    }
  }

  // ---- jobs ----

  #submit(command: CommandOf<'job.submit'>): ApplyResult {
    if (this.#jobs.has(command.jobId)) return reject('ALREADY_EXISTS', `job ${command.jobId} exists`);
    const now = this.#clock;
    // A tenant is created on first use with no limits; quotas come with tenant.upsert.
    if (!this.#tenants.has(command.tenant)) this.#tenants.set(command.tenant, this.#newTenant(command.tenant, null, null));
    this.#enterWaiting(command.jobId);
    this.#jobs.set(command.jobId, {
      id: command.jobId,
      tenant: command.tenant,
      name: command.name,
      priority: command.priority,
      preemptible: command.preemptible,
      spec: canonical(command.spec),
      state: 'queued',
      attempt: 0,
      epoch: 0,
      allocationIds: [],
      submittedAt: now,
      submittedBy: command.actor,
      updatedAt: now,
      reason: null,
      exitCode: null,
      attempts: [],
    });
    return accept({ jobId: command.jobId, state: 'queued', attempt: 0 });
  }

  #cancel(command: CommandOf<'job.cancel'>): ApplyResult {
    const job = this.#jobs.get(command.jobId);
    if (job === undefined) return reject('NOT_FOUND', `no job ${command.jobId}`);
    if (TERMINAL_STATES.has(job.state)) return reject('ILLEGAL_TRANSITION', `job ${job.id} is already ${job.state}`);
    this.#moveJob(job, 'cancelled', command.reason ?? `cancelled by ${command.actor}`, null);
    return accept({ jobId: job.id, state: job.state, attempt: job.attempt });
  }

  #transition(command: CommandOf<'job.transition'>): ApplyResult {
    const job = this.#jobs.get(command.jobId);
    if (job === undefined) return reject('NOT_FOUND', `no job ${command.jobId}`);
    if (command.attempt !== job.attempt) {
      return reject('STALE_ATTEMPT', `job ${job.id} is at attempt ${job.attempt}, the report is about attempt ${command.attempt}`);
    }
    if (!JOB_TRANSITIONS[job.state].includes(command.to)) {
      const how =
        command.to === 'placed' ? ' (placement is alloc.place)' : command.to === 'cancelled' ? ' (cancelling is job.cancel)' : '';
      return reject('ILLEGAL_TRANSITION', `job ${job.id} cannot go from ${job.state} to ${command.to}${how}`);
    }
    this.#moveJob(job, command.to, command.reason ?? null, command.exitCode ?? null);
    return accept({ jobId: job.id, state: job.state, attempt: job.attempt });
  }

  /** Moves a job to a new state; leaving placed/running ends its attempt and releases its devices. */
  #moveJob(job: Job, to: JobState, reason: string | null, exitCode: number | null): void {
    const now = this.#clock;
    const current = job.attempts.at(-1);
    if (current !== undefined && current.attempt === job.attempt && current.outcome === null) {
      if (to === 'running' && current.startedAt === null) current.startedAt = now;
      if (!HOLDING_STATES.has(to)) {
        current.endedAt = now;
        current.outcome = to;
        current.reason = reason;
      }
    }
    if (!HOLDING_STATES.has(to)) this.#releaseAllocations(job);
    job.state = to;
    if (PLACEABLE_STATES.has(to)) this.#enterWaiting(job.id);
    else this.#waiting.delete(job.id);
    job.reason = reason;
    job.exitCode = exitCode;
    job.updatedAt = now;
  }

  // ---- allocations ----

  #place(command: CommandOf<'alloc.place'>): ApplyResult {
    const job = this.#jobs.get(command.jobId);
    if (job === undefined) return reject('NOT_FOUND', `no job ${command.jobId}`);
    if (!PLACEABLE_STATES.has(job.state)) return reject('ILLEGAL_TRANSITION', `job ${job.id} is ${job.state}, not waiting to be placed`);
    if (command.epoch <= job.epoch) {
      return reject('STALE_EPOCH', `job ${job.id} was placed at epoch ${job.epoch}; a new placement needs a greater one, got ${command.epoch}`);
    }

    const grants = command.allocations.map((allocation) => ({
      peerId: allocation.peerId,
      devices: allocation.devices.map(
        (device): DeviceGrant => ({ uuid: device.uuid, milli: device.milli ?? MILLI_PER_GPU, parentUuid: device.parentUuid ?? null }),
      ),
    }));
    for (const grant of grants) {
      const busy = this.#deviceConflict(grant.peerId, grant.devices);
      if (busy !== null) return reject('DEVICE_BUSY', `job ${job.id}: ${busy}`);
    }
    const quota = this.#quotaProblem(job.tenant, grants);
    if (quota !== null) return reject('QUOTA_EXCEEDED', `job ${job.id}: ${quota}`);

    const now = this.#clock;
    const attempt = job.attempt + 1;
    const allocationIds: string[] = [];
    for (const grant of grants) {
      const allocation: Allocation = {
        id: `${job.id}/${command.epoch}/${grant.peerId}`,
        jobId: job.id,
        tenant: job.tenant,
        peerId: grant.peerId,
        epoch: command.epoch,
        attempt,
        devices: grant.devices,
        placedAt: now,
      };
      this.#allocations.set(allocation.id, allocation);
      this.#indexAllocation(allocation);
      allocationIds.push(allocation.id);
    }
    job.attempts.push({
      attempt,
      epoch: command.epoch,
      peerIds: grants.map((grant) => grant.peerId),
      placedAt: now,
      startedAt: null,
      endedAt: null,
      outcome: null,
      reason: null,
    });
    if (job.attempts.length > this.#limits.attemptsKept) job.attempts.splice(0, job.attempts.length - this.#limits.attemptsKept);
    job.attempt = attempt;
    job.epoch = command.epoch;
    job.allocationIds = allocationIds;
    job.state = 'placed';
    this.#waiting.delete(job.id);
    job.reason = null;
    job.exitCode = null;
    job.updatedAt = now;
    return accept({ jobId: job.id, state: job.state, attempt, epoch: command.epoch, allocationIds: [...allocationIds] });
  }

  /** Why these grants cannot be added on `peerId` beside its live allocations; null when they can. */
  #deviceConflict(peerId: string, devices: readonly DeviceGrant[]): string | null {
    const held = this.#heldMilli.get(peerId);
    const slicesOut = this.#migSlicesOut.get(peerId);
    const parentsAsked = new Set(devices.flatMap((device) => (device.parentUuid === null ? [] : [device.parentUuid])));
    for (const device of devices) {
      if (device.parentUuid === null && parentsAsked.has(device.uuid)) {
        return `device ${device.uuid} on peer ${peerId} is asked for both whole and as MIG slices`;
      }
      const heldNow = held?.get(device.uuid) ?? 0;
      if (heldNow + device.milli > MILLI_PER_GPU) {
        return `device ${device.uuid} on peer ${peerId} has ${MILLI_PER_GPU - heldNow}/1000 free, ${device.milli} asked`;
      }
      if (device.parentUuid === null && (slicesOut?.get(device.uuid) ?? 0) > 0) {
        return `device ${device.uuid} on peer ${peerId} has MIG slices allocated`;
      }
      if (device.parentUuid !== null && (held?.get(device.parentUuid) ?? 0) > 0) {
        return `MIG slice ${device.uuid} on peer ${peerId}: its GPU ${device.parentUuid} is allocated as a whole`;
      }
    }
    return null;
  }

  #quotaProblem(tenantName: string, grants: readonly { devices: readonly DeviceGrant[] }[]): string | null {
    const tenant = this.#tenants.get(tenantName);
    // Usage is a walk over the tenant's live allocations: only a tenant with a quota pays for it.
    if (tenant === undefined || (tenant.maxGpus === null && tenant.maxGpuHours === null)) return null;
    const usage = this.#tenantUsage(tenant);
    if (tenant.maxGpus !== null) {
      const asked = grants.reduce((sum, grant) => sum + grant.devices.reduce((s, device) => s + device.milli, 0), 0);
      if (usage.heldMilli + asked > tenant.maxGpus * MILLI_PER_GPU) {
        return `tenant ${tenant.name} holds ${usage.heldMilli / MILLI_PER_GPU} GPUs of its ${tenant.maxGpus}; ${asked / MILLI_PER_GPU} more asked`;
      }
    }
    if (tenant.maxGpuHours !== null && usage.milliGpuMs >= tenant.maxGpuHours * MILLI_PER_GPU * MS_PER_HOUR) {
      return `tenant ${tenant.name} has used its ${tenant.maxGpuHours} GPU-hours`;
    }
    return null;
  }

  #tenantUsage(tenant: Tenant): { heldMilli: number; milliGpuMs: number } {
    let heldMilli = 0;
    let milliGpuMs = tenant.usedMilliGpuMs;
    for (const id of this.#allocationsByTenant.get(tenant.name) ?? []) {
      const allocation = this.#allocations.get(id) as Allocation;
      const milli = allocation.devices.reduce((sum, device) => sum + device.milli, 0);
      heldMilli += milli;
      milliGpuMs += milli * (this.#clock - allocation.placedAt);
    }
    return { heldMilli, milliGpuMs };
  }

  #release(command: CommandOf<'alloc.release'>): ApplyResult {
    const job = this.#jobs.get(command.jobId);
    if (job === undefined) return reject('NOT_FOUND', `no job ${command.jobId}`);
    if (command.epoch !== job.epoch) {
      return reject('STALE_EPOCH', `job ${job.id} is at epoch ${job.epoch}, not ${command.epoch}`);
    }
    if (!HOLDING_STATES.has(job.state)) return reject('ILLEGAL_TRANSITION', `job ${job.id} is ${job.state} and holds no allocation`);
    const released = [...job.allocationIds];
    // Taking a job's devices back (preemption, re-placement) sends it to be placed again.
    this.#moveJob(job, 'restarting', command.reason ?? `released by ${command.actor}`, null);
    return accept({ jobId: job.id, state: job.state, epoch: job.epoch, released });
  }

  #releaseAllocations(job: Job): void {
    const now = this.#clock;
    for (const id of job.allocationIds) {
      const allocation = this.#allocations.get(id);
      if (allocation === undefined) continue;
      const tenant = this.#tenants.get(allocation.tenant);
      if (tenant !== undefined) {
        const milli = allocation.devices.reduce((sum, device) => sum + device.milli, 0);
        tenant.usedMilliGpuMs += milli * (now - allocation.placedAt);
      }
      this.#unindexAllocation(allocation);
      this.#allocations.delete(id);
    }
    job.allocationIds = [];
  }

  #indexAllocation(allocation: Allocation): void {
    addToSet(this.#allocationsByPeer, allocation.peerId, allocation.id);
    addToSet(this.#allocationsByTenant, allocation.tenant, allocation.id);
    for (const device of allocation.devices) {
      addCount(this.#heldMilli, allocation.peerId, device.uuid, device.milli);
      if (device.parentUuid !== null) addCount(this.#migSlicesOut, allocation.peerId, device.parentUuid, 1);
    }
  }

  #unindexAllocation(allocation: Allocation): void {
    removeFromSet(this.#allocationsByPeer, allocation.peerId, allocation.id);
    removeFromSet(this.#allocationsByTenant, allocation.tenant, allocation.id);
    for (const device of allocation.devices) {
      addCount(this.#heldMilli, allocation.peerId, device.uuid, -device.milli);
      if (device.parentUuid !== null) addCount(this.#migSlicesOut, allocation.peerId, device.parentUuid, -1);
    }
  }

  // ---- checkpoints ----

  #commitCheckpoint(command: CommandOf<'checkpoint.commit'>): ApplyResult {
    const job = this.#jobs.get(command.jobId);
    if (job === undefined) return reject('NOT_FOUND', `no job ${command.jobId}`);
    // Fencing: only the job's latest placement may record checkpoints; an older one may still be
    // running on a host cut off from the leader, and its writes must not become the job's state.
    if (command.epoch !== job.epoch) {
      const why = command.epoch < job.epoch ? 'stale' : 'never placed';
      return reject('STALE_EPOCH', `job ${job.id} is at epoch ${job.epoch}; a checkpoint from epoch ${command.epoch} (${why}) is refused`);
    }
    const existing = this.#checkpoints.get(job.id) ?? [];
    if (existing.some((checkpoint) => checkpoint.manifestId === command.manifestId)) {
      return reject('ALREADY_EXISTS', `job ${job.id} already has checkpoint ${command.manifestId}`);
    }
    if (existing.length >= this.#limits.maxCheckpointsPerJob) {
      return reject('LIMIT_REACHED', `job ${job.id} holds ${existing.length} checkpoints, the most allowed; collect old ones first`);
    }
    existing.push({
      jobId: job.id,
      manifestId: command.manifestId,
      step: command.step,
      sizeBytes: command.sizeBytes,
      holders: [...command.holders],
      epoch: command.epoch,
      attempt: job.attempt,
      committedAt: this.#clock,
      committedBy: command.actor,
    });
    this.#checkpoints.set(job.id, existing);
    return accept({ jobId: job.id, manifestId: command.manifestId, step: command.step });
  }

  #collectCheckpoints(command: CommandOf<'checkpoint.gc'>): ApplyResult {
    if (!this.#jobs.has(command.jobId)) return reject('NOT_FOUND', `no job ${command.jobId}`);
    const existing = this.#checkpoints.get(command.jobId) ?? [];
    const removed = existing.splice(0, Math.max(0, existing.length - command.keep));
    if (existing.length === 0) this.#checkpoints.delete(command.jobId);
    return accept({
      jobId: command.jobId,
      removed: removed.map((checkpoint) => ({ manifestId: checkpoint.manifestId, holders: [...checkpoint.holders] })),
    });
  }

  // ---- tenants ----

  #upsertTenant(command: CommandOf<'tenant.upsert'>): ApplyResult {
    const existing = this.#tenants.get(command.tenant);
    if (existing === undefined) {
      this.#tenants.set(command.tenant, this.#newTenant(command.tenant, command.maxGpus, command.maxGpuHours));
      return accept({ tenant: command.tenant, created: true });
    }
    existing.maxGpus = command.maxGpus;
    existing.maxGpuHours = command.maxGpuHours;
    existing.updatedAt = this.#clock;
    return accept({ tenant: command.tenant, created: false });
  }

  #newTenant(name: string, maxGpus: number | null, maxGpuHours: number | null): Tenant {
    return { name, maxGpus, maxGpuHours, usedMilliGpuMs: 0, createdAt: this.#clock, updatedAt: this.#clock };
  }

  // ---- idempotency and audit ----

  /** Forgets request ids beyond the table's size or older than its retention, oldest first. */
  #forgetOldRequests(): void {
    const oldestKept = this.#clock - this.#limits.requestRetentionMs;
    for (const [requestId, record] of this.#requests) {
      if (this.#requests.size <= this.#limits.maxRequests && record.at >= oldestKept) break;
      this.#requests.delete(requestId);
    }
  }

  #recordAudit(index: number, command: Command | null, result: ApplyResult, replay: boolean): void {
    const entry: AuditEntry = {
      seq: this.#auditSeq,
      index,
      at: command?.at ?? null,
      actor: command?.actor ?? null,
      type: command?.type ?? null,
      requestId: command?.requestId ?? null,
      subject: command === null ? null : subjectOf(command),
      ok: result.ok,
      code: result.ok ? null : result.code,
      message: result.ok ? null : result.message.slice(0, AUDIT_MESSAGE_CHARS),
      replay,
    };
    this.#audit[this.#auditSeq % this.#limits.auditEntries] = entry;
    this.#auditSeq++;
  }

  // ---- queries (the returned records belong to the state machine: read, never change them) ----

  job(id: string): Readonly<Job> | undefined {
    return this.#jobs.get(id);
  }

  /** Jobs matching the filter, by id. */
  /** Jobs waiting to be placed (queued or restarting), in no particular order: O(waiting), no sort. */
  waitingJobs(): Readonly<Job>[] {
    return [...this.#waiting.keys()].map((id) => this.#jobs.get(id)!);
  }

  /** How many jobs wait to be placed. */
  waitingCount(): number {
    return this.#waiting.size;
  }

  /**
   * The waiting jobs that entered the waiting states after sequence number `seq` (0: all of
   * them), oldest entry first, and the sequence number to ask from next time. A job that left
   * and came back is reported again. O(entries since seq + log n).
   */
  waitingAddedAfter(seq: number): { jobs: Readonly<Job>[]; seq: number } {
    const seqs = this.#addedSeqs;
    let lo = 0;
    let hi = seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (seqs[mid]! <= seq) lo = mid + 1;
      else hi = mid;
    }
    const jobs: Readonly<Job>[] = [];
    for (let i = lo; i < seqs.length; i++) {
      const id = this.#addedIds[i]!;
      if (this.#waiting.get(id) === seqs[i]) jobs.push(this.#jobs.get(id)!);
    }
    return { jobs, seq: this.#waitingSeq };
  }

  /** Marks a job as (newly) waiting; re-entering moves it to the end of the entry order. */
  #enterWaiting(id: string): void {
    const seq = ++this.#waitingSeq;
    this.#waiting.delete(id);
    this.#waiting.set(id, seq);
    this.#addedIds.push(id);
    this.#addedSeqs.push(seq);
    // Entries of jobs that left are dropped once they outnumber the live ones: the log stays O(waiting).
    if (this.#addedIds.length > 2 * this.#waiting.size + 1024) {
      this.#addedIds = [...this.#waiting.keys()];
      this.#addedSeqs = [...this.#waiting.values()];
    }
  }

  jobs(filter: JobFilter = {}): Readonly<Job>[] {
    const states = filter.state === undefined ? null : new Set(typeof filter.state === 'string' ? [filter.state] : filter.state);
    return sortedValues(this.#jobs).filter(
      (job) => (states === null || states.has(job.state)) && (filter.tenant === undefined || job.tenant === filter.tenant),
    );
  }

  allocation(id: string): Readonly<Allocation> | undefined {
    return this.#allocations.get(id);
  }

  /** Live allocations on a peer, by id: what its runner should be running. */
  allocationsOn(peerId: string): Readonly<Allocation>[] {
    const ids = [...(this.#allocationsByPeer.get(peerId) ?? [])].sort(compareCodeUnits);
    return ids.map((id) => this.#allocations.get(id) as Allocation);
  }

  /** Every live allocation, by id: the committed half of the scheduler's snapshot. */
  allocations(): Readonly<Allocation>[] {
    return sortedValues(this.#allocations);
  }

  /** A job's committed checkpoints in commit order; the last is the one to restore. */
  checkpoints(jobId: string): readonly Readonly<Checkpoint>[] {
    return [...(this.#checkpoints.get(jobId) ?? [])];
  }

  tenant(name: string): TenantView | undefined {
    const tenant = this.#tenants.get(name);
    return tenant === undefined ? undefined : this.#tenantView(tenant);
  }

  /** Tenants by name, with what each holds and has used. */
  tenants(): TenantView[] {
    return sortedValues(this.#tenants).map((tenant) => this.#tenantView(tenant));
  }

  #tenantView(tenant: Tenant): TenantView {
    const usage = this.#tenantUsage(tenant);
    return { ...tenant, gpusHeld: usage.heldMilli / MILLI_PER_GPU, gpuHoursUsed: usage.milliGpuMs / MILLI_PER_GPU / MS_PER_HOUR };
  }

  /** The newest `limit` audit entries, oldest first. */
  audit(limit = this.#limits.auditEntries): readonly Readonly<AuditEntry>[] {
    const available = Math.min(this.#auditSeq, this.#limits.auditEntries);
    const count = Math.max(0, Math.min(limit, available));
    const entries: AuditEntry[] = [];
    for (let seq = this.#auditSeq - count; seq < this.#auditSeq; seq++) {
      entries.push(this.#audit[seq % this.#limits.auditEntries] as AuditEntry);
    }
    return entries;
  }

  /** Whether a request id is still remembered (a retry of it would be answered, not applied). */
  hasRequest(requestId: string): boolean {
    return this.#requests.has(requestId);
  }

  // ---- snapshots ----

  /** The whole state as versioned bytes; equal states give equal bytes on every replica. */
  snapshot(): Uint8Array {
    const snapshot: SnapshotV1 = {
      v: SNAPSHOT_VERSION,
      limits: this.#limits,
      appliedIndex: this.#appliedIndex,
      clock: this.#clock,
      jobs: sortedValues(this.#jobs),
      allocations: sortedValues(this.#allocations),
      checkpoints: [...this.#checkpoints.keys()]
        .sort(compareCodeUnits)
        .map((jobId) => ({ jobId, entries: this.#checkpoints.get(jobId) as Checkpoint[] })),
      tenants: sortedValues(this.#tenants),
      requests: [...this.#requests.values()],
      audit: [...this.audit()],
      auditSeq: this.#auditSeq,
    };
    // No canonical() copy of the whole state here: every record is built by this module with a
    // fixed key order (user JSON, the spec, is canonicalized when it enters), and msgpack keeps
    // that order through a restore, so the bytes are deterministic as they are. On a large state
    // the deep copy was a third of the time the node's event loop stood still for a snapshot.
    return new Uint8Array(packr.pack(snapshot));
  }

  /** A state machine from `snapshot()` bytes (of this or an older version). Throws FabricError BAD_INPUT when they cannot be read. */
  static restore(data: Uint8Array): FabricStateMachine {
    let decoded: unknown;
    try {
      decoded = packr.unpack(data);
    } catch (err) {
      throw new FabricError('BAD_INPUT', `state snapshot is not valid msgpack: ${errorMessage(err)}`, { cause: err });
    }
    const snapshot = migrateSnapshot(decoded);
    const fsm = new FabricStateMachine(snapshot.limits);
    fsm.#appliedIndex = snapshot.appliedIndex;
    fsm.#clock = snapshot.clock;
    for (const job of snapshot.jobs) {
      fsm.#jobs.set(job.id, job);
      if (PLACEABLE_STATES.has(job.state)) fsm.#enterWaiting(job.id);
    }
    for (const allocation of snapshot.allocations) {
      const job = fsm.#jobs.get(allocation.jobId);
      if (job === undefined || !job.allocationIds.includes(allocation.id)) {
        throw new FabricError('BAD_INPUT', `invalid state snapshot: allocation ${allocation.id} belongs to no live job`);
      }
      fsm.#allocations.set(allocation.id, allocation);
      fsm.#indexAllocation(allocation);
    }
    for (const job of fsm.#jobs.values()) {
      if (job.allocationIds.some((id) => !fsm.#allocations.has(id))) {
        throw new FabricError('BAD_INPUT', `invalid state snapshot: job ${job.id} names an allocation the snapshot lacks`);
      }
    }
    for (const { jobId, entries } of snapshot.checkpoints) fsm.#checkpoints.set(jobId, entries);
    for (const tenant of snapshot.tenants) fsm.#tenants.set(tenant.name, tenant);
    for (const record of snapshot.requests) fsm.#requests.set(record.requestId, record);
    for (const entry of snapshot.audit) fsm.#audit[entry.seq % fsm.#limits.auditEntries] = entry;
    fsm.#auditSeq = snapshot.auditSeq;
    return fsm;
  }
}

function addToSet(index: Map<string, Set<string>>, key: string, value: string): void {
  let set = index.get(key);
  if (set === undefined) index.set(key, (set = new Set()));
  set.add(value);
}

function removeFromSet(index: Map<string, Set<string>>, key: string, value: string): void {
  const set = index.get(key);
  if (set === undefined) return;
  set.delete(value);
  if (set.size === 0) index.delete(key);
}

function addCount(index: Map<string, Map<string, number>>, outer: string, inner: string, delta: number): void {
  let counts = index.get(outer);
  if (counts === undefined) index.set(outer, (counts = new Map()));
  const next = (counts.get(inner) ?? 0) + delta;
  if (next === 0) counts.delete(inner);
  else counts.set(inner, next);
  if (counts.size === 0) index.delete(outer);
}
