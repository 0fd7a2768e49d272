/**
 * An in-memory network of GossipService instances on one ManualClock, for deterministic tests:
 * every delivery is a clock timer, faults are per link (cut, random loss) or per node (killed,
 * broadcasts muted, deaf to probes). Identities are real ed25519 keys from node:crypto.
 */
import { generateKeyPairSync, sign as ed25519Sign, verify as ed25519Verify, type KeyObject } from 'node:crypto';
import { ManualClock, SeededRng, silentLogger, type Rng } from '../../src/core/index.ts';
import type { GossipOptions } from '../../src/gossip/membership.ts';
import type { GossipTransport, Sign, Verify } from '../../src/gossip/ports.ts';
import { GossipService } from '../../src/gossip/service.ts';
import type { NodeState } from '../../src/gossip/state.ts';

export const FABRIC_ID = 'fab-test';

/** peerId → public key, as libp2p derives it from the peer id itself. */
export class KeyRing {
  readonly #publicKeys = new Map<string, KeyObject>();
  readonly #privateKeys = new Map<string, KeyObject>();

  /** A signer for `peerId`, creating its key pair on first use. */
  signerFor(peerId: string): Sign {
    let privateKey = this.#privateKeys.get(peerId);
    if (privateKey === undefined) {
      const pair = generateKeyPairSync('ed25519');
      privateKey = pair.privateKey;
      this.#privateKeys.set(peerId, pair.privateKey);
      this.#publicKeys.set(peerId, pair.publicKey);
    }
    const key = privateKey;
    return async (data) => new Uint8Array(ed25519Sign(null, data, key));
  }

  /** Signature checks made so far, to see which frames were verified. */
  verifications = 0;

  readonly verify: Verify = async (peerId, data, sig) => {
    this.verifications++;
    const publicKey = this.#publicKeys.get(peerId);
    if (publicKey === undefined) return false;
    try {
      return ed25519Verify(null, data, publicKey, sig);
    } catch {
      return false;
    }
  };
}

export function makeState(peerId: string, overrides: Partial<NodeState> = {}): NodeState {
  return {
    v: 1,
    peerId,
    fabricId: FABRIC_ID,
    incarnation: 1,
    seq: 0,
    addrs: [`/ip4/10.0.0.1/tcp/4001/p2p/${peerId}`],
    apiVersion: '0.1.0',
    labels: { zone: 'eu-1', spot: false, extra: {} },
    inventory: {
      host: { cpuModel: 'test cpu', cpuCores: 32, memoryMiB: 256 * 1024 },
      devices: [
        {
          index: 0,
          uuid: `GPU-${peerId}-0`,
          vendor: 'nvidia',
          model: 'NVIDIA H100 80GB HBM3',
          memoryMiB: 81_559,
          migEnabled: false,
          migInstances: [],
        },
      ],
      links: [],
      warnings: [],
    },
    load: { allocatedDevices: [] },
    updatedAtMs: 1_700_000_000_000,
    ...overrides,
  };
}

/** Settles every pending promise chain (the services' work between clock ticks). */
export function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function linkKey(a: string, b: string): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}

/** Resolves `value` after `ms` on the clock unless `signal` aborts first, then rejects. */
function after<T>(clock: ManualClock, ms: number, signal: AbortSignal, value: () => T): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = clock.setTimer(ms, () => {
      signal.removeEventListener('abort', onAbort);
      try {
        resolve(value());
      } catch (err) {
        reject(err);
      }
    });
    const onAbort = (): void => {
      timer.cancel();
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** A request to an unreachable peer: nothing comes back, the caller's deadline ends it. */
function never<T>(signal: AbortSignal): Promise<T> {
  return new Promise<T>((_resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

export class MemNetwork {
  readonly clock: ManualClock;
  readonly latencyMs: number;
  readonly #lossRng: Rng;
  readonly #services = new Map<string, GossipService>();
  readonly #killed = new Set<string>();
  /** Crashed nodes: their port is closed, so requests to them fail at once instead of hanging. */
  readonly #refusing = new Set<string>();
  readonly #cut = new Set<string>();
  readonly #muted = new Set<string>();
  readonly #deaf = new Set<string>();
  readonly #loss = new Map<string, number>();
  broadcastsDelivered = 0;
  /** Direct probes started by every node together. */
  probesSent = 0;
  /** State frames carried by pull answers, all nodes together. */
  framesPulled = 0;
  readonly #pulls = new Map<string, number>();

  constructor(clock: ManualClock, options: { latencyMs?: number; seed?: number } = {}) {
    this.clock = clock;
    this.latencyMs = options.latencyMs ?? 5;
    this.#lossRng = new SeededRng(options.seed ?? 1);
  }

  attach(peerId: string, service: GossipService): void {
    this.#services.set(peerId, service);
    this.#killed.delete(peerId);
    this.#refusing.delete(peerId);
  }

  /** `peerId` crashed: as `kill`, but its closed port refuses probes at once. */
  crash(peerId: string): void {
    this.kill(peerId);
    this.#refusing.add(peerId);
  }

  /** The node vanishes: nothing reaches it, nothing leaves it, no probe is answered. */
  kill(peerId: string): void {
    this.#killed.add(peerId);
    this.#services.get(peerId)?.stop();
    this.#services.delete(peerId);
  }

  cut(a: string, b: string): void {
    this.#cut.add(linkKey(a, b));
  }

  heal(a: string, b: string): void {
    this.#cut.delete(linkKey(a, b));
  }

  partition(sideA: readonly string[], sideB: readonly string[]): void {
    for (const a of sideA) for (const b of sideB) this.cut(a, b);
  }

  healAll(): void {
    this.#cut.clear();
  }

  /** Everything `peerId` broadcasts is lost (a node whose state updates never arrive). */
  muteBroadcasts(peerId: string, muted = true): void {
    if (muted) this.#muted.add(peerId);
    else this.#muted.delete(peerId);
  }

  /** `peerId` does not answer direct probes (it still serves pulls and ping-req for others). */
  ignoreProbes(peerId: string, deaf = true): void {
    if (deaf) this.#deaf.add(peerId);
    else this.#deaf.delete(peerId);
  }

  /** Random loss of broadcasts and direct probes on the directed link from → to. */
  setLoss(from: string, to: string, rate: number): void {
    this.#loss.set(`${from}>${to}`, rate);
  }

  setLossEverywhere(rate: number): void {
    for (const from of this.#services.keys()) {
      for (const to of this.#services.keys()) if (from !== to) this.setLoss(from, to, rate);
    }
  }

  /** How many anti-entropy pulls `peerId` has started. */
  pullsBy(peerId: string): number {
    return this.#pulls.get(peerId) ?? 0;
  }

  reachable(from: string, to: string): boolean {
    return (
      from !== to &&
      this.#services.has(from) &&
      this.#services.has(to) &&
      !this.#killed.has(from) &&
      !this.#killed.has(to) &&
      !this.#cut.has(linkKey(from, to))
    );
  }

  transportFor(self: string): GossipTransport {
    const clock = this.clock;
    const latency = this.latencyMs;
    return {
      broadcast: async (frame) => {
        if (this.#muted.has(self)) return;
        for (const [peerId, service] of this.#services) {
          if (!this.reachable(self, peerId)) continue;
          if (this.#lossRng.next() < (this.#loss.get(`${self}>${peerId}`) ?? 0)) continue;
          clock.setTimer(latency, () => {
            if (!this.reachable(self, peerId)) return;
            this.broadcastsDelivered++;
            void service.handleBroadcast(frame, self);
          });
        }
      },
      pull: async (peerId, have, signal) => {
        this.#pulls.set(self, this.pullsBy(self) + 1);
        const target = this.#services.get(peerId);
        if (target === undefined || !this.reachable(self, peerId)) return never(signal);
        const frames = await after(clock, latency, signal, () => target.handlePullRequest(have));
        this.framesPulled += frames.length;
        return after(clock, latency, signal, () => {
          if (!this.reachable(self, peerId)) throw new Error('connection lost');
          return frames;
        });
      },
      probe: async (target, signal) => {
        this.probesSent++;
        if (this.#refusing.has(target) && !this.#cut.has(linkKey(self, target))) {
          return after(clock, 2 * latency, signal, () => {
            throw new Error('connection refused');
          });
        }
        if (!this.reachable(self, target) || this.#deaf.has(target)) return never(signal);
        if (this.#lossRng.next() < (this.#loss.get(`${self}>${target}`) ?? 0)) return never(signal);
        return after(clock, 2 * latency, signal, () => this.reachable(self, target));
      },
      probeVia: async (helperId, target, signal) => {
        const helper = this.#services.get(helperId);
        if (helper === undefined || !this.reachable(self, helperId)) return never(signal);
        const answered = await after(clock, latency, signal, () => helper.handleProbeVia(target, signal));
        return after(clock, latency, signal, () => answered);
      },
    };
  }
}

export interface FabricOptions {
  seed?: number;
  latencyMs?: number;
  options?: Partial<GossipOptions>;
}

/** Several daemons on one in-memory network and one manual clock. */
export class TestFabric {
  readonly clock = new ManualClock(0);
  readonly keys = new KeyRing();
  readonly net: MemNetwork;
  readonly services = new Map<string, GossipService>();
  readonly #seed: number;
  readonly #options: Partial<GossipOptions>;

  constructor(options: FabricOptions = {}) {
    this.#seed = options.seed ?? 7;
    this.#options = options.options ?? {};
    this.net = new MemNetwork(this.clock, { latencyMs: options.latencyMs ?? 5, seed: this.#seed });
  }

  /** Creates and starts a daemon; it connects to `connectTo` (both sides see the connection). */
  async addNode(peerId: string, init: { incarnation?: number; connectTo?: readonly string[] } = {}): Promise<GossipService> {
    const service = new GossipService({
      self: { peerId, fabricId: FABRIC_ID },
      initialState: makeState(peerId, { incarnation: init.incarnation ?? 1 }),
      clock: this.clock,
      rng: new SeededRng(this.#seed * 1_000 + this.services.size),
      transport: this.net.transportFor(peerId),
      sign: this.keys.signerFor(peerId),
      verify: this.keys.verify,
      wallNow: () => 1_700_000_000_000 + this.clock.now(),
      log: silentLogger,
      options: this.#options,
    });
    this.services.set(peerId, service);
    this.net.attach(peerId, service);
    await service.start();
    for (const other of init.connectTo ?? []) this.connect(peerId, other);
    await flush();
    return service;
  }

  /**
   * Builds `count` nodes n0..n{count-1}, one after another as daemons join, each connected to
   * n0 and given 20 ms for its first pull, so every node ends up holding every state.
   */
  async addNodes(count: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const id = `n${i}`;
      await this.addNode(id, { connectTo: i === 0 ? [] : ['n0'] });
      await this.run(20);
      ids.push(id);
    }
    return ids;
  }

  connect(a: string, b: string): void {
    void this.services.get(a)?.peerConnected(b);
    void this.services.get(b)?.peerConnected(a);
  }

  node(peerId: string): GossipService {
    const service = this.services.get(peerId);
    if (service === undefined) throw new Error(`no node ${peerId}`);
    return service;
  }

  /** The node vanishes without a trace, as a frozen host or a cut cable: only silence tells. */
  kill(peerId: string): void {
    this.net.kill(peerId);
    this.services.delete(peerId);
  }

  /** The node's process dies: every peer sees its connection close, and its port refuses. */
  crash(peerId: string): void {
    this.net.crash(peerId);
    this.services.delete(peerId);
    for (const service of this.services.values()) service.peerDisconnected(peerId);
  }

  /** Advances the clock in small steps, letting async work settle between them. */
  async run(ms: number, stepMs = 10): Promise<void> {
    for (let elapsed = 0; elapsed < ms; elapsed += stepMs) {
      this.clock.advance(Math.min(stepMs, ms - elapsed));
      await flush();
    }
  }

  /** Runs until `done()` holds (checked every step) or `limitMs` passes; returns the time taken. */
  async runUntil(done: () => boolean, limitMs: number, stepMs = 10): Promise<number> {
    const start = this.clock.now();
    while (!done()) {
      if (this.clock.now() - start >= limitMs) throw new Error(`condition not met within ${limitMs} ms`);
      this.clock.advance(stepMs);
      await flush();
    }
    return this.clock.now() - start;
  }

  statusSeenBy(observer: string, target: string): string | undefined {
    return this.node(observer).membership.get(target)?.status;
  }
}
