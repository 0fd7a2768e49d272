/**
 * The daemon: the composition root. Builds everything in order (lock, config, keys, discovery,
 * libp2p, gossip, API) and closes it in reverse.
 */
import { createServer, type Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import { publicKeyFromProtobuf } from '@libp2p/crypto/keys';
import { FabricError, errorMessage, type Logger } from '../core/index.ts';
import type { Inventory } from '../devices/model.ts';
import { discoverInventory, type DiscoverOptions } from '../devices/probe/discover.ts';
import { readHostInfo } from '../devices/probe/host.ts';
import { simulatedTools } from '../devices/fake/profiles.ts';
import { GossipService } from '../gossip/service.ts';
import type { NodeState } from '../gossip/state.ts';
import type { Verify } from '../gossip/ports.ts';
import type { GossipOptions, MembershipListener } from '../gossip/membership.ts';
import { createApiHandler } from '../api/routes.ts';
import type { CheckpointCommitRequest, CheckpointCommitResponse, ExplainResponse, Job, JobCancelRequest, JobDetail, JobLogsQuery, JobLogsResponse, JobSubmitRequest, JobSubmitResponse, LabelsChange, NodeView, RaftPeersResponse, StatusResponse } from '../api/schemas.ts';
import type { RaftHint } from '../gossip/state.ts';
import type { ApplyResult, JsonObject } from '../placement/fsm/index.ts';
import { DEFAULT_TENANT } from '../placement/spec.ts';
import { ControlPlane, type ControlPlaneOptions, type ControlPlanePeer } from './control-plane.ts';
import { JobRunner } from '../runner/index.ts';
import { JobLauncher } from './job-launcher.ts';
import { killOrphanJobs } from './job-procs.ts';
import { DEFAULT_LEASE_MS, JobAgent } from './job-agent.ts';
import { PlacementService } from './placement-service.ts';
import { CheckpointService } from './checkpoints.ts';
import { RestoreCache } from './restore-cache.ts';
import { restoreOrder } from '../checkpoint/index.ts';
import { fetchJobLog, readJobLog, serveLogs } from './logs-protocol.ts';
import { DaemonConfigSchema, DaemonStateSchema, bulkListenOf, type DaemonConfig, type DaemonState } from './config.ts';
import { readJsonFile, writeJsonFile, fileExists } from './files.ts';
import { loadIdentityKey, loadSwarmKey } from './identity.ts';
import { acquireLock, type DataDirLock } from './lock.ts';
import { dataDirPaths, type DataDirPaths } from './paths.ts';
import { createHost, type FabricHost } from './host.ts';
import { createGossipTransport, gossipTopic, serveGossipProtocols } from './gossip-transport.ts';
import { runTool } from './run-tool.ts';
import { systemClock, systemRng, tuneGarbageCollector } from './system.ts';
import { encodeJoinToken } from './token.ts';
import { nodeView } from './views.ts';

export const FABRIC_VERSION = '0.1.0';

export interface DaemonOptions {
  dataDir: string;
  log: Logger;
  /** How often GPUs are re-discovered (ms); a change is gossiped at once. */
  rediscoverMs?: number;
  /** Raft timing overrides (tests, benchmarks). */
  raft?: ControlPlaneOptions['raft'];
  /** Gossip timing overrides (tests, benchmarks). */
  gossip?: Partial<GossipOptions>;
  /** Called when the daemon had to stop on an error it cannot recover from (its disk failed); the default only logs. */
  onFatal?: (err: Error) => void;
}

/** Ed25519 peer ids embed their public key, so any peer's signature is checked from its id alone. */
export const verifyByPeerId: Verify = async (peerId, data, sig) => {
  try {
    const id = peerIdFromString(peerId);
    const key = id.publicKey ?? (id.toMultihash().code === 0 ? publicKeyFromProtobuf(id.toMultihash().digest) : undefined);
    return key === undefined ? false : await key.verify(data, sig);
  } catch {
    return false;
  }
};

export class Daemon {
  readonly paths: DataDirPaths;
  readonly config: DaemonConfig;
  readonly peerId: string;
  readonly #log: Logger;
  readonly #host: FabricHost;
  readonly #gossip: GossipService;
  readonly #control: ControlPlane;
  readonly #lock: DataDirLock;
  readonly #state: DaemonState;
  readonly #startedAt = Date.now();
  #api: Server | undefined;
  #apiUrl = '';
  #timers: NodeJS.Timeout[] = [];
  #stopping = false;
  readonly #launcher: JobLauncher;
  readonly #runner: JobRunner;
  readonly #agent: JobAgent;
  readonly #placement: PlacementService;
  readonly #checkpoints: CheckpointService;
  readonly #restores: RestoreCache;
  #persistTimer: NodeJS.Timeout | undefined;
  readonly #rediscoverMs: number;
  /** The addresses last learnt from each peer's gossiped state (see #learnAddresses). */
  readonly #knownAddrs = new Map<string, string>();

  private constructor(init: {
    paths: DataDirPaths; config: DaemonConfig; state: DaemonState; log: Logger; host: FabricHost; gossip: GossipService; lock: DataDirLock; rediscoverMs: number;
    raft: ControlPlaneOptions['raft']; onFatal: ((err: Error) => void) | undefined; raftLog: Logger; jobLog: Logger;
  }) {
    this.paths = init.paths;
    this.config = init.config;
    this.#state = init.state;
    this.#log = init.log;
    this.#host = init.host;
    this.#gossip = init.gossip;
    this.#lock = init.lock;
    this.peerId = init.host.peerId.toString();
    this.#rediscoverMs = init.rediscoverMs;
    this.#control = new ControlPlane({
      host: init.host,
      dir: init.paths.raft,
      log: init.raftLog,
      bootstrap: init.config.raft.bootstrap,
      deadVoterGraceMs: init.config.raft.deadVoterGraceMs,
      peers: () => this.#controlPeers(),
      publishHint: (hint) => this.#publishRaftHint(hint),
      wallNow: () => Date.now(),
      ...(init.raft !== undefined ? { raft: init.raft } : {}),
    });
    // Jobs of an earlier run of this daemon that outlived it (they should not: see job-shim.ts).
    const orphans = killOrphanJobs(this.peerId);
    if (orphans > 0) this.#log.warn({ orphans }, 'killed job processes left over from an earlier run');
    const bulk = bulkListenOf(init.config);
    this.#checkpoints = new CheckpointService({
      host: init.host,
      dir: init.paths.checkpoints,
      log: init.log,
      ...(bulk !== undefined ? { bulk } : {}),
      // Fencing: a replica of a checkpoint written under an epoch the job has left is refused.
      admitOffer: (_peer, manifest) => {
        const job = this.#control.state.job(manifest.jobId);
        return job !== undefined && manifest.epoch < job.epoch ? `job ${manifest.jobId} is at epoch ${job.epoch}; this checkpoint is from epoch ${manifest.epoch}` : undefined;
      },
    });
    this.#restores = new RestoreCache({
      jobsDir: init.paths.jobs,
      // A scratch copy for the job (see MaterializeOptions.durable): the chunks are the durable copy.
      materialize: async (checkpoint, dir) => {
        await this.#checkpoints.restore(checkpoint.manifestId, checkpoint.holders.filter((h) => h !== this.peerId), dir, { durable: false });
      },
      log: init.jobLog,
      now: () => systemClock.now(),
    });
    this.#launcher = new JobLauncher({ owner: this.peerId, log: init.jobLog, leaseMs: DEFAULT_LEASE_MS });
    const rng = systemRng();
    this.#runner = new JobRunner({ launcher: this.#launcher, clock: systemClock, rng, log: init.jobLog, onEvent: (e) => this.#agent.onRunEvent(e) });
    this.#agent = new JobAgent({
      peerId: this.peerId,
      control: this.#control,
      runner: this.#runner,
      devices: () => this.#gossip.selfState().inventory.devices,
      jobsDir: init.paths.jobs,
      baseEnv: process.env,
      checkpointCommit: `${shellQuote(process.execPath)} ${shellQuote(CLI_ENTRY)} checkpoint commit`,
      extraEnv: { FABRIC_DATA_DIR: init.paths.dir },
      renewLeases: (validForMs) => this.#launcher.renewLeases(validForMs),
      restore: (job, checkpoint) => this.#restores.take(job.id, checkpoint),
      gangAddress: (peer) => hostAddress(this.#gossip.membership.get(peer)?.state?.addrs ?? []),
      rng,
      log: init.jobLog,
    });
    this.#placement = new PlacementService({
      control: this.#control,
      peers: () => this.#gossip.membership.list().map((e) => ({ peerId: e.peerId, health: e.peerId === this.peerId ? 'alive' : e.status, state: e.state })),
      log: init.log.child({ module: 'placement' }),
      wallNow: () => Date.now(),
    });
    this.#control.setExplainer((jobId) => this.#placement.explain(jobId));
    this.#control.onFatal((err) => {
      this.#log.error({ err: errorMessage(err) }, 'the raft node failed; the daemon stops');
      void this.stop().finally(() => init.onFatal?.(err));
    });
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    tuneGarbageCollector();
    const paths = dataDirPaths(opts.dataDir);
    if (!fileExists(paths.config)) {
      throw new FabricError('DATA_DIR_MISSING', `${opts.dataDir} holds no fabric (no config.json): run \`fabric init\` or \`fabric join TOKEN\` first`);
    }
    const lock = acquireLock(paths.lock, opts.dataDir);
    try {
      return await Daemon.#build(opts, paths, lock);
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  static async #build(opts: DaemonOptions, paths: DataDirPaths, lock: DataDirLock): Promise<Daemon> {
    const config = readJsonFile(paths.config, DaemonConfigSchema);
    const previous = fileExists(paths.state) ? readJsonFile(paths.state, DaemonStateSchema) : { incarnation: 0, knownPeers: {}, selfAddrs: [] };
    // The incarnation is made durable before anyone can hear of this run.
    const state: DaemonState = { ...previous, incarnation: previous.incarnation + 1 };
    writeJsonFile(paths.state, state);

    const privateKey = loadIdentityKey(paths.identityKey);
    const swarmKey = loadSwarmKey(paths.swarmKey);
    const log = opts.log.child({ module: 'node' });

    const host = await createHost({ privateKey, swarmKey, listen: config.listen });
    const peerId = host.peerId.toString();
    const inventory = await discover(config, peerId, opts.log.child({ module: 'devices' }));
    for (const w of inventory.warnings) log.warn({ warning: w }, 'device discovery');

    const initialState: NodeState = {
      v: 1,
      peerId,
      fabricId: config.fabricId,
      incarnation: state.incarnation,
      seq: 0,
      addrs: [],
      apiVersion: FABRIC_VERSION,
      labels: config.labels,
      inventory,
      load: { allocatedDevices: [] },
      updatedAtMs: Date.now(),
    };
    const transport = createGossipTransport(host, config.fabricId, opts.log.child({ module: 'gossip' }));
    const gossip = new GossipService({
      self: { peerId, fabricId: config.fabricId },
      initialState,
      clock: systemClock,
      wallNow: () => Date.now(),
      rng: systemRng(),
      transport,
      sign: async (data) => await privateKey.sign(data),
      verify: verifyByPeerId,
      log: opts.log.child({ module: 'gossip' }),
      ...(opts.gossip !== undefined ? { options: opts.gossip } : {}),
    });
    const daemon = new Daemon({ paths, config, state, log, host, gossip, lock, rediscoverMs: opts.rediscoverMs ?? 30_000, raft: opts.raft, onFatal: opts.onFatal, raftLog: opts.log.child({ module: 'raft' }), jobLog: opts.log.child({ module: 'jobs' }) });
    try {
      await daemon.#run();
    } catch (err) {
      await daemon.stop().catch(() => undefined);
      throw err;
    }
    return daemon;
  }

  async #run(): Promise<void> {
    const host = this.#host;
    const topic = gossipTopic(this.config.fabricId);
    await serveGossipProtocols(
      host,
      { pullFrames: (have) => this.#gossip.handlePullRequest(have), probeFor: (target, signal) => this.#gossip.handleProbeVia(target, signal) },
      this.#log,
      this.#gossip.options.probeTimeoutMs,
    );
    host.services.pubsub.subscribe(topic);
    host.services.pubsub.addEventListener('gossipsub:message', (evt) => {
      const { msg, propagationSource } = evt.detail;
      if (msg.topic !== topic) return;
      void this.#gossip.handleBroadcast(msg.data, propagationSource.toString()).catch((err: unknown) => {
        this.#log.warn({ err: errorMessage(err) }, 'gossip broadcast handling failed');
      });
    });
    host.addEventListener('peer:connect', (evt) => this.#gossip.peerConnected(evt.detail.toString()));
    host.addEventListener('peer:disconnect', (evt) => this.#gossip.peerDisconnected(evt.detail.toString()));
    this.#gossip.subscribe(() => this.#schedulePersist());
    this.#gossip.subscribe((evt) => this.#learnAddresses(evt));
    this.#gossip.subscribe((evt) => {
      // From the first suspicion: the restore (seconds for a large checkpoint) then overlaps the
      // detection as well as the lease. A peer that answers after all leaves a copy no job claims,
      // which the restore cache sweeps.
      if (evt.type === 'status' && (evt.status === 'suspect' || evt.status === 'dead')) this.#restoreAheadOfNeed(evt.peerId);
    });

    await host.start();
    await this.#gossip.updateSelf((s) => ({ ...s, addrs: this.#selfAddrs() }));
    await this.#gossip.start();
    await this.#control.start();
    await serveLogs(host, this.#log, (id) => this.#agent.logDir(id));
    await this.#checkpoints.start();
    this.#timers.push(setInterval(() => void this.#collectCheckpoints(), 30_000));
    this.#agent.start();
    this.#placement.start();
    if (this.config.raft.bootstrap) {
      // The group exists on disk now: never bootstrap a second one (say, if the raft dir were lost).
      this.config.raft.bootstrap = false;
      writeJsonFile(this.paths.config, this.config);
    }
    await this.#startApi();
    this.#persistNow();

    for (const addr of [...this.config.bootstrap, ...Object.values(this.#state.knownPeers).flat()]) this.#dial([addr]);
    this.#timers.push(setInterval(() => this.#connectToKnownPeers(), 2_000));
    this.#timers.push(setInterval(() => void this.#rediscover(), this.#rediscoverMs));
    this.#log.info({ peerId: this.peerId, fabricId: this.config.fabricId, addrs: this.#selfAddrs(), api: this.#apiUrl }, 'daemon started');
  }

  #selfAddrs(): string[] {
    return this.#host.getMultiaddrs().map((m) => m.toString());
  }

  #dial(addrs: string[]): void {
    const parsed = addrs.flatMap((a) => {
      try {
        return [multiaddr(a)];
      } catch {
        return [];
      }
    }).filter((m) => m.getComponents().find((c) => c.name === 'p2p')?.value !== this.peerId);
    if (parsed.length === 0 || this.#stopping) return;
    this.#host.dial(parsed, { signal: AbortSignal.timeout(5_000) }).catch((err: unknown) => {
      this.#log.debug({ addrs, err: errorMessage(err) }, 'dial failed');
    });
  }

  /**
   * A peer's signed state names the addresses it listens on now: they replace what libp2p's
   * address book holds (a restarted peer may listen on another port), so that every dial by peer
   * id (Raft, RPC, logs, checkpoints) reaches it, and a peer not connected yet is dialled at once
   * rather than at the next round of #connectToKnownPeers: after a leader's death the survivors
   * must reach each other within the election, not seconds later.
   */
  #learnAddresses(evt: Parameters<MembershipListener>[0]): void {
    const addrs = evt.state?.addrs;
    if (evt.peerId === this.peerId || addrs === undefined || addrs.length === 0 || this.#stopping) return;
    const key = addrs.join(' ');
    if (this.#knownAddrs.get(evt.peerId) === key) return;
    this.#knownAddrs.set(evt.peerId, key);
    const multiaddrs = addrs.flatMap((a) => {
      try {
        return [multiaddr(a)];
      } catch {
        return [];
      }
    });
    let peer;
    try {
      peer = peerIdFromString(evt.peerId);
    } catch {
      return;
    }
    this.#host.peerStore.patch(peer, { multiaddrs }).catch((err: unknown) => this.#log.debug({ peer: evt.peerId, err: errorMessage(err) }, 'address book update failed'));
    if (evt.status !== 'dead' && this.#host.getConnections(peer).length === 0) this.#dial(addrs);
  }

  /** Keeps a connection to every live peer: the fabric is small enough for a full mesh. */
  #connectToKnownPeers(): void {
    const connected = new Set(this.#host.getPeers().map((p) => p.toString()));
    for (const entry of this.#gossip.membership.list()) {
      if (entry.peerId === this.peerId || entry.status === 'dead' || connected.has(entry.peerId)) continue;
      const addrs = entry.state?.addrs ?? this.#state.knownPeers[entry.peerId] ?? [];
      this.#dial(addrs);
    }
    if (connected.size === 0) for (const addr of this.config.bootstrap) this.#dial([addr]);
  }

  async #rediscover(): Promise<void> {
    try {
      const inventory = await discover(this.config, this.peerId, this.#log);
      const current = this.#gossip.selfState().inventory;
      if (JSON.stringify(current) !== JSON.stringify(inventory)) {
        this.#log.info({ devices: inventory.devices.length }, 'inventory changed');
        await this.#gossip.updateSelf((s) => ({ ...s, inventory }));
      }
      const addrs = this.#selfAddrs();
      if (JSON.stringify(addrs) !== JSON.stringify(this.#gossip.selfState().addrs)) await this.#gossip.updateSelf((s) => ({ ...s, addrs }));
    } catch (err) {
      this.#log.warn({ err: errorMessage(err) }, 'rediscovery failed');
    }
  }

  async #startApi(): Promise<void> {
    const token = randomBytes(24).toString('hex');
    const handler = createApiHandler(
      {
        status: () => this.statusWithRaft(),
        nodes: () => this.nodes(),
        token: () => ({ token: this.joinToken() }),
        changeLabels: (c) => this.changeLabels(c),
        raftPeers: () => this.raftPeers(),
        submitJob: (r) => this.submitJob(r),
        jobs: (all) => this.jobs(all),
        job: (id) => this.job(id),
        cancelJob: (id, r) => this.cancelJob(id, r),
        jobLogs: (id, q) => this.jobLogs(id, q),
        explainJob: (id) => this.explainJob(id),
        commitCheckpoint: (id, r) => this.commitCheckpoint(id, r),
      },
      { token, log: this.#log.child({ module: 'api' }) },
    );
    const server = createServer(handler);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.config.apiPort, '127.0.0.1', () => resolve());
    }).catch((err: unknown) => {
      throw new FabricError('BAD_INPUT', `cannot listen on 127.0.0.1:${this.config.apiPort} for the API: ${errorMessage(err)}`);
    });
    this.#api = server;
    this.#apiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    writeJsonFile(this.paths.api, { url: this.#apiUrl, token, pid: process.pid });
  }

  #schedulePersist(): void {
    if (this.#persistTimer !== undefined || this.#stopping) return;
    this.#persistTimer = setTimeout(() => {
      this.#persistTimer = undefined;
      this.#persistNow();
    }, 2_000);
  }

  #persistNow(): void {
    const knownPeers: Record<string, string[]> = {};
    for (const e of this.#gossip.membership.list()) {
      if (e.peerId !== this.peerId && e.status !== 'dead' && e.state !== undefined) knownPeers[e.peerId] = e.state.addrs;
    }
    this.#state.knownPeers = { ...this.#state.knownPeers, ...knownPeers };
    this.#state.selfAddrs = this.#selfAddrs();
    try {
      writeJsonFile(this.paths.state, this.#state);
    } catch (err) {
      this.#log.warn({ err: errorMessage(err) }, 'cannot persist daemon state');
    }
  }

  /** Changes free-form labels, persists them in config.json and gossips the new state at once. */
  async changeLabels(change: LabelsChange): Promise<NodeView> {
    const extra = { ...this.config.labels.extra, ...change.set };
    for (const k of change.remove) delete extra[k];
    if (Object.keys(extra).length > 64) throw new FabricError('BAD_INPUT', 'a node carries at most 64 labels');
    this.config.labels.extra = extra;
    writeJsonFile(this.paths.config, this.config);
    await this.#gossip.updateSelf((s) => ({ ...s, labels: { ...s.labels, extra } }));
    return nodeView(this.#gossip.membership.get(this.peerId)!, this.peerId, systemClock.now());
  }

  /** Runs GPU discovery again now (SIGHUP does the same). */
  rediscoverNow(): Promise<void> {
    return this.#rediscover();
  }

  /** Membership events of this daemon's view (a peer's state changed, or its alive/suspect/dead status); returns the unsubscribe. */
  onMembership(listener: MembershipListener): () => void {
    return this.#gossip.subscribe(listener);
  }

  joinToken(): string {
    const bootstrap = this.#selfAddrs();
    return encodeJoinToken({ fabricId: this.config.fabricId, swarmKey: loadSwarmKey(this.paths.swarmKey), bootstrap });
  }

  nodes(): NodeView[] {
    const now = systemClock.now();
    return this.#gossip.membership.list().map((e) => nodeView(e, this.peerId, now));
  }

  // ---- the replicated state (through the Raft leader) ----

  raftPeers(): Promise<RaftPeersResponse> {
    return this.#control.raftPeers();
  }

  /** The control plane: Raft node, forwarding and the replicated state (for tests and the runtime). */
  get control(): ControlPlane {
    return this.#control;
  }

  /**
   * `fabric checkpoint commit`, as a job on this host asks it: the checkpoint directory is cut
   * into chunks and stored, replicated to R peers in other zones (only chunks they lack travel),
   * and recorded in Raft with its holders; the state machine refuses it if the job has moved on
   * to a later epoch. Older checkpoints beyond the last CHECKPOINTS_KEPT are then collected.
   */
  async commitCheckpoint(jobId: string, req: CheckpointCommitRequest): Promise<CheckpointCommitResponse> {
    const started = Date.now();
    const state = this.#control.state;
    const job = state.job(jobId);
    if (job === undefined) throw new FabricError('NOT_FOUND', `no job ${jobId} in this peer's replica`);
    const here = this.#agent.running().find((r) => r.jobId === jobId);
    if (here === undefined || here.epoch !== req.epoch || job.epoch !== req.epoch) {
      throw new FabricError('REJECTED', `job ${jobId} does not run here at epoch ${req.epoch} (it is ${job.state} at epoch ${job.epoch}): checkpoint refused`, { details: { reject: 'STALE_EPOCH' } });
    }
    const step = req.step ?? (state.checkpoints(jobId).at(-1)?.step ?? -1) + 1;
    const zoneOf = (e: { state?: NodeState | undefined }) => e.state?.labels.zone;
    const raft = this.#control.localStatus();
    const members = new Set([...raft.voters, ...raft.learners]);
    const candidates = this.#gossip.membership
      .list()
      .filter((e) => e.peerId !== this.peerId && e.status === 'alive' && members.has(e.peerId))
      .map((e) => ({ peerId: e.peerId, zone: zoneOf(e) }));
    const wanted = Math.min(CHECKPOINT_REPLICAS, candidates.length);
    const outcome = await this.#checkpoints.checkpoint({
      dir: req.dir ?? this.#agent.checkpointDir(jobId),
      jobId,
      step,
      epoch: req.epoch,
      writer: { peerId: this.peerId, zone: this.config.labels.zone },
      candidates,
      replicas: wanted,
    });
    if (outcome.holders.length < wanted + 1) {
      throw new FabricError('REJECTED', `checkpoint ${step} of ${jobId} reached ${outcome.holders.length - 1} of ${wanted} replicas; not recorded`);
    }
    const { index, result } = await this.#control.submit({
      type: 'checkpoint.commit',
      requestId: `${jobId}:ckpt:${req.epoch}:${step}:${outcome.commit.manifestId}`,
      actor: this.peerId,
      jobId,
      epoch: req.epoch,
      step,
      manifestId: outcome.commit.manifestId,
      sizeBytes: outcome.sizeBytes,
      holders: outcome.holders,
    });
    if (!result.ok) throw new FabricError('REJECTED', `checkpoint ${step} of ${jobId} refused: ${result.message} (${result.code})`, { details: { reject: result.code } });
    void this.#control
      .submit({ type: 'checkpoint.gc', requestId: `${jobId}:ckpt-gc:${index}`, actor: this.peerId, jobId, keep: CHECKPOINTS_KEPT })
      .catch((err: unknown) => this.#log.debug({ err: errorMessage(err) }, 'checkpoint gc not committed'));
    const sentBytes = outcome.replication.peers.reduce((n, p) => n + p.sentBytes, 0);
    return { jobId, step, manifestId: outcome.commit.manifestId, sizeBytes: outcome.sizeBytes, newBytes: outcome.commit.newBytes, holders: outcome.holders, sentBytes, ms: Date.now() - started, index };
  }

  /**
   * A peer is suspected or dead: for each of its jobs whose latest checkpoint this peer is the
   * first live holder of (restoreOrder), restore it now, while the leader waits out the lost
   * host's lease before placing the job again (on that holder first).
   */
  #restoreAheadOfNeed(deadPeer: string): void {
    const state = this.#control.state;
    const jobs = new Set(state.allocations().filter((a) => a.peerId === deadPeer).map((a) => a.jobId));
    const alive = new Set(this.#gossip.membership.list().flatMap((e) => (e.status === 'alive' ? [e.peerId] : [])));
    alive.add(this.peerId);
    for (const jobId of jobs) {
      const latest = state.checkpoints(jobId).at(-1);
      if (latest === undefined || !latest.holders.includes(this.peerId)) continue;
      // Only the holder the leader will try first (placement-service.ts #plan) does the work.
      const first = restoreOrder(jobId, latest.holders).find((p) => p !== deadPeer && alive.has(p));
      if (first === this.peerId) this.#restores.prepare(jobId, latest);
    }
  }

  /** Drops local checkpoint data that no committed checkpoint of any job names any more. */
  async #collectCheckpoints(): Promise<void> {
    this.#restores.sweep();
    try {
      const state = this.#control.state;
      const keep = state.jobs().flatMap((j) => state.checkpoints(j.id).map((c) => c.manifestId));
      await this.#checkpoints.gc(keep);
    } catch (err) {
      this.#log.warn({ err: errorMessage(err) }, 'checkpoint collection failed');
    }
  }

  async explainJob(jobId: string): Promise<ExplainResponse> {
    await this.job(jobId); // NOT_FOUND for a job that does not exist
    return (await this.#control.query({ q: 'explain', jobId })) as ExplainResponse;
  }

  async submitJob(req: JobSubmitRequest): Promise<JobSubmitResponse> {
    const spec = req.spec;
    if (spec.command === undefined || spec.command.length === 0) throw new FabricError('BAD_INPUT', 'invalid job spec: command: a job needs a command to run');
    if (spec.waitForCapacity !== true) {
      // Refuse at once what no peer of the fabric could ever run, rather than queue it forever.
      const verdict = this.#placement.feasibleEver(spec, 'new-job');
      if (!verdict.ok) throw new FabricError('BAD_INPUT', `no peer of this fabric could ever run this job: ${verdict.why} (submit with waitForCapacity / --wait-for-capacity to queue it for peers yet to join)`);
    }
    const { index, result } = await this.#control.submit({
      type: 'job.submit',
      requestId: req.requestId ?? randomBytes(16).toString('hex'),
      actor: `api@${this.peerId}`,
      jobId: `j-${randomBytes(6).toString('hex')}`,
      tenant: spec.tenant ?? DEFAULT_TENANT,
      name: spec.name ?? defaultJobName(spec.command),
      priority: spec.priority ?? 0,
      preemptible: spec.preemptible ?? false,
      spec: JSON.parse(JSON.stringify(spec)) as JsonObject,
    });
    return jobOutcome(result, index);
  }

  async cancelJob(jobId: string, req: JobCancelRequest): Promise<JobSubmitResponse> {
    const { index, result } = await this.#control.submit({
      type: 'job.cancel',
      requestId: req.requestId ?? randomBytes(16).toString('hex'),
      actor: `api@${this.peerId}`,
      jobId,
      ...(req.reason !== undefined ? { reason: req.reason } : {}),
    });
    return jobOutcome(result, index);
  }

  async jobs(all: boolean): Promise<Job[]> {
    return (await this.#control.query({ q: 'jobs', all })) as Job[];
  }

  /** Output of a job's latest attempt, from whichever peer runs it (over /fabric/logs/1). */
  async jobLogs(jobId: string, q: JobLogsQuery): Promise<JobLogsResponse> {
    const job = await this.job(jobId);
    const last = job.attempts.at(-1);
    if (last === undefined) throw new FabricError('NOT_FOUND', `job ${jobId} has not started anywhere yet (${job.state})`);
    const peerId = last.peerIds[0]!;
    // A finished job's output grows no more: no point holding the answer.
    const waitMs = ['placed', 'running', 'restarting'].includes(job.state) ? q.wait : 0;
    const req = { jobId, stream: q.stream, from: q.from ?? null, tailBytes: q.tail, waitMs };
    const chunk =
      peerId === this.peerId
        ? await readJobLog((id) => this.#agent.logDir(id), req)
        : await fetchJobLog(this.#host, peerId, req, AbortSignal.timeout(q.wait + 10_000)).catch((err: unknown) => {
            if (err instanceof FabricError) throw err;
            // The job's host is down (it may be restarting elsewhere): the caller retries.
            throw new FabricError('DAEMON_UNREACHABLE', `the peer that ran job ${jobId} (${peerId}) does not answer: ${errorMessage(err)}`);
          });
    return { jobId, peerId, attempt: last.attempt, state: job.state, start: chunk.start, end: chunk.end, dropped: chunk.dropped, size: chunk.size, data: Buffer.from(chunk.data).toString('base64') };
  }

  async job(jobId: string): Promise<JobDetail> {
    return (await this.#control.query({ q: 'job', jobId })) as JobDetail;
  }

  #controlPeers(): ControlPlanePeer[] {
    const now = systemClock.now();
    return this.#gossip.membership.list().map((e) => ({
      peerId: e.peerId,
      health: e.peerId === this.peerId ? 'alive' : e.status,
      healthForMs: Math.max(0, now - e.statusSinceMs),
      zone: e.state?.labels.zone,
      hint: e.state?.raft,
    }));
  }

  #publishRaftHint(hint: RaftHint | undefined): void {
    if (this.#stopping) return;
    void this.#gossip
      .updateSelf((s) => {
        const { raft: _previous, ...rest } = s;
        return hint === undefined ? rest : { ...rest, raft: hint };
      })
      .catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'cannot publish the raft hint'));
  }

  /** Everything `fabric status` shows; the Raft part may ask the leader. */
  async statusWithRaft(): Promise<StatusResponse> {
    return { ...this.status(), raft: await this.#control.raftStatus() };
  }

  /** The local part of the status (no Raft figures: see statusWithRaft). */
  status(): Omit<StatusResponse, 'raft'> {
    const nodes = this.#gossip.membership.list();
    const count = (s: string) => nodes.filter((n) => n.peerId !== this.peerId && n.status === s).length;
    const self = this.#gossip.selfState();
    return {
      peerId: this.peerId,
      fabricId: this.config.fabricId,
      dataDir: this.paths.dir,
      addrs: this.#selfAddrs(),
      apiUrl: this.#apiUrl,
      version: FABRIC_VERSION,
      incarnation: self.incarnation,
      uptimeMs: Date.now() - this.#startedAt,
      peers: { alive: count('alive'), suspect: count('suspect'), dead: count('dead'), connected: this.#host.getPeers().length },
      devices: self.inventory.devices.length,
      warnings: self.inventory.warnings,
      gossip: { ...this.#gossip.stats() },
    };
  }

  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#log.info({}, 'daemon stopping');
    for (const t of this.#timers) clearInterval(t);
    if (this.#persistTimer) clearTimeout(this.#persistTimer);
    this.#persistNow();
    await new Promise<void>((resolve) => (this.#api ? this.#api.close(() => resolve()) : resolve()));
    this.#api?.closeAllConnections();
    try {
      unlinkSync(this.paths.api);
    } catch {
      // already gone
    }
    this.#placement.stop();
    await this.#agent.stop().catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'stopping jobs failed'));
    await this.#checkpoints.stop().catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'stopping the checkpoint service failed'));
    await this.#launcher.close().catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'closing the job launcher failed'));
    await this.#control.stop().catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'raft stop failed'));
    this.#gossip.stop();
    await Promise.resolve(this.#host.stop()).catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, 'libp2p stop failed'));
    this.#lock.release();
  }
}

/** Replicas of each checkpoint besides the writer's own copy, and checkpoints kept per job. */
const CHECKPOINT_REPLICAS = 2;
const CHECKPOINTS_KEPT = 3;

/** Where this daemon's CLI lives: what a job runs to commit a checkpoint. */
const CLI_ENTRY = fileURLToPath(new URL('./main.ts', import.meta.url));

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

/** The IP a peer is reached at, from its multiaddrs (IPv4 first; wildcard addresses skipped). */
export function hostAddress(addrs: readonly string[]): string | undefined {
  for (const proto of ['ip4', 'ip6']) {
    for (const a of addrs) {
      const m = new RegExp(`^/${proto}/([^/]+)/tcp/`).exec(a);
      if (m !== null && m[1] !== '0.0.0.0' && m[1] !== '::') return m[1];
    }
  }
  return undefined;
}

/** A job without a name is called after its program, as `ps` would show it. */
function defaultJobName(command: readonly string[] | undefined): string {
  const program = command?.[0];
  return program === undefined ? 'job' : (program.split('/').pop() ?? program).slice(0, 256) || 'job';
}

/** A job command's answer as the API gives it; a refusal of the state machine becomes an error. */
function jobOutcome(result: ApplyResult, index: number): JobSubmitResponse {
  if (!result.ok) {
    throw new FabricError(result.code === 'NOT_FOUND' ? 'NOT_FOUND' : 'REJECTED', `${result.message} (${result.code})`, { details: { reject: result.code } });
  }
  const value = result.value as { jobId: string; state: string };
  return { jobId: value.jobId, state: value.state, index };
}

/** Runs GPU discovery with the tools this daemon is configured for (real, another path, or simulated). */
export async function discover(config: DaemonConfig, peerId: string, log: Logger): Promise<Inventory> {
  let tools: Pick<DiscoverOptions, 'nvidiaSmi' | 'rocmSmi' | 'rocminfo'> = {};
  if (config.simulateGpus !== undefined) {
    tools = simulatedTools(config.simulateGpus, peerId);
  } else {
    const nv = config.nvidiaSmi ?? process.env['FABRIC_NVIDIA_SMI'];
    if (nv !== undefined) tools.nvidiaSmi = { file: nv, prefixArgs: [] };
    if (config.rocmSmi !== undefined) tools.rocmSmi = { file: config.rocmSmi, prefixArgs: [] };
  }
  return discoverInventory({ run: runTool, host: readHostInfo(), log, ...tools });
}
