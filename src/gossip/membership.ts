/**
 * The membership table: who is in the fabric, the newest verified NodeState of each, and
 * whether each is alive, suspect or dead — SWIM failure detection driven by the Clock.
 *
 * Liveness is checked by probing, never by counting broadcasts: every probe period this daemon
 * probes ONE alive peer, in a shuffled round-robin order (SWIM's target selection, so every peer
 * is probed by every other within n periods, and by someone within a period or two). Total
 * traffic grows as n, not n² as with every peer heartbeating to every other: 64 daemons on 2
 * cores were drowned by 8,000 heartbeat deliveries a second.
 *
 * A probe round is a direct probe, then, unanswered, probes through `indirectProbes` random
 * helpers (SWIM's ping-req). Failed rounds of OUR probes add up to a verdict: a round whose
 * direct probe was refused (nothing listens: a crashed daemon's port) weighs twice one that only
 * timed out (a busy peer, a busy network): suspect after one refused or two silent rounds, dead
 * after two refused or four silent ones and `suspicionTimeoutMs` of suspicion. Any answer
 * clears it. Besides the round robin, rounds start at once when the transport sees our
 * connection to the peer close (a crashed host's kernel closes its sockets), or when another
 * peer announces a suspicion its own rounds reached (counted as one silent round of ours);
 * neither makes the peer suspect without failed rounds of our own.
 *
 * Other evidence of life: a frame the peer broadcast itself ('direct'), an anti-entropy pull it
 * answered, and its state relayed by a third party ('relayed') only when newer than anything
 * heard before (an old copy served by anti-entropy proves nothing).
 *
 * A dead peer stays dead for its incarnation: frames of that incarnation (stale copies still
 * relayed by others) never revive it. Only a strictly higher incarnation (the daemon
 * restarted) or the peer itself answering one of our occasional re-probes brings it back;
 * the latter is how both sides of a healed partition find each other again.
 */
import { FabricError, errorMessage, silentLogger, type Clock, type Logger, type Rng, type Timer } from '../core/index.ts';
import type { GossipTransport, PullDigest } from './ports.ts';
import { compareVersion, type NodeState, type StateVersion } from './state.ts';

/**
 * Timing of the gossip layer. All durations in milliseconds of the Clock.
 *
 * Why the defaults detect a crashed peer within ~1 s, a hung one within ~5 s at 64 peers, and
 * suspect no live one that stalls for less than 1.6 s:
 * - A crashed daemon's connections close and its port refuses: every peer connected to it (with
 *   round-robin probing, every peer) probes it at once, the round is refused within
 *   milliseconds (suspect), the next 400 ms later too, and at 800 ms, suspect for 600 ms
 *   across three refused rounds, it is dead.
 * - A hung daemon (frozen, or its cable cut) closes nothing. Some peer probes it within
 *   ln(100) × 250 ms ≈ 1.2 s (p99: each period each of n-1 peers has it next with chance
 *   ~1/(n-1)); two silent rounds of 800 ms (direct 400, helpers 400) make it suspect there and
 *   the suspicion is announced; every peer then needs three silent rounds of its own: dead
 *   everywhere ~1.2 + 1.6 + 2.4 ≈ 5.2 s after it hung.
 * - A live peer is suspected only when its direct probe and every helper's probe time out in
 *   two rounds in a row: four independent network paths, twice, 1.6 s of not answering.
 */
export interface GossipOptions {
  /** Period of the round-robin probe (one alive peer per period) and of the dead peers' upkeep. */
  probeIntervalMs: number;
  /** Deadline of a direct probe, and separately of the round of indirect probes. */
  probeTimeoutMs: number;
  /** How many random alive peers are asked to probe a peer that missed a direct probe. */
  indirectProbes: number;
  /** Least time a peer stays suspect, with failing probes, before it is declared dead. */
  suspicionTimeoutMs: number;
  /** How long a dead peer stays listed (status dead) before it is forgotten. */
  deadRetentionMs: number;
  /**
   * First delay before a dead peer is probed again (a direct probe only); the delay doubles
   * after each unanswered re-probe up to `deadReprobeMaxMs`. An answer revives the peer, which
   * is what reunites the two sides of a healed partition. 0 disables re-probing.
   */
  deadReprobeMs: number;
  deadReprobeMaxMs: number;
  /** The full signed state is rebroadcast this often when it has not changed (cheap repair). */
  fullStateEveryMs: number;
  /** Period of the anti-entropy pull from one random alive peer. */
  antiEntropyMs: number;
  /** Deadline of one anti-entropy pull. */
  pullTimeoutMs: number;
}

export const DEFAULT_GOSSIP_OPTIONS: Readonly<GossipOptions> = Object.freeze({
  probeIntervalMs: 250,
  probeTimeoutMs: 400,
  indirectProbes: 3,
  suspicionTimeoutMs: 600,
  deadRetentionMs: 24 * 60 * 60 * 1_000,
  deadReprobeMs: 10_000,
  deadReprobeMaxMs: 5 * 60 * 1_000,
  fullStateEveryMs: 30_000,
  antiEntropyMs: 5_000,
  pullTimeoutMs: 5_000,
});

/** Fills in defaults and refuses settings that would break the detector (or spin a timer at 0 ms). */
export function resolveGossipOptions(overrides: Partial<GossipOptions> = {}): GossipOptions {
  const options: GossipOptions = { ...DEFAULT_GOSSIP_OPTIONS };
  for (const [key, value] of Object.entries(overrides) as [keyof GossipOptions, number | undefined][]) {
    if (!Object.hasOwn(DEFAULT_GOSSIP_OPTIONS, key)) {
      throw new FabricError('BAD_INPUT', `unknown gossip option ${key}`); // a typo would silently keep the default
    }
    if (value !== undefined) options[key] = value;
  }
  const positive: (keyof GossipOptions)[] = [
    'probeIntervalMs',
    'probeTimeoutMs',
    'suspicionTimeoutMs',
    'deadRetentionMs',
    'fullStateEveryMs',
    'antiEntropyMs',
    'pullTimeoutMs',
  ];
  for (const key of positive) {
    if (!Number.isFinite(options[key]) || options[key] <= 0) {
      throw new FabricError('BAD_INPUT', `gossip option ${key} must be a positive number, got ${options[key]}`);
    }
  }
  if (!Number.isInteger(options.indirectProbes) || options.indirectProbes < 0) {
    throw new FabricError('BAD_INPUT', `gossip option indirectProbes must be a whole number, got ${options.indirectProbes}`);
  }
  if (!(options.deadReprobeMs >= 0) || !(options.deadReprobeMaxMs >= options.deadReprobeMs)) {
    throw new FabricError('BAD_INPUT', 'gossip options need 0 <= deadReprobeMs <= deadReprobeMaxMs');
  }
  return options;
}

export type MemberStatus = 'alive' | 'suspect' | 'dead';

/** What one member looks like from here: a snapshot, safe to keep. */
export interface MembershipEntry {
  peerId: string;
  /** True for this daemon's own entry, which is always alive. */
  self: boolean;
  /** Newest verified state; absent only for our own entry before its first state is set. */
  state: NodeState | undefined;
  /** Highest version heard from the peer; may run ahead of `state` (a newer relayed claim). */
  version: StateVersion;
  status: MemberStatus;
  /** Local clock time of the last evidence that the peer was alive. */
  lastHeardMs: number;
  statusSinceMs: number;
}

/**
 * `changed`: the stored state of `peerId` changed (new peer, or newer version).
 * `status`: `peerId` appeared or moved between alive, suspect and dead.
 * `removed`: a dead peer was forgotten after the retention period.
 */
export interface MembershipEvent {
  type: 'changed' | 'status' | 'removed';
  peerId: string;
  status: MemberStatus;
  state?: NodeState;
}
export type MembershipListener = (event: MembershipEvent) => void;

/** Who vouches for a frame: the peer itself ('direct') or a third party relaying it ('relayed'). */
export type Evidence = 'direct' | 'relayed';

export type Prober = Pick<GossipTransport, 'probe' | 'probeVia'>;

export interface MembershipDeps {
  selfPeerId: string;
  clock: Clock;
  rng: Rng;
  prober: Prober;
  log?: Logger;
  options?: Partial<GossipOptions>;
  /**
   * Called when a round-robin probe round of ours failed and made a peer suspect, so the
   * caller can announce it: the others then probe that peer at once instead of waiting for
   * their own turn. Suspicions started by a hint or an announcement are not announced again.
   */
  onSuspect?: (peerId: string, incarnation: number) => void;
}

interface Entry {
  peerId: string;
  state: NodeState | undefined;
  /** The signed frame `state` arrived in, relayed verbatim to peers that pull. */
  signedFrame: Uint8Array | undefined;
  version: StateVersion;
  status: MemberStatus;
  lastHeardMs: number;
  statusSinceMs: number;
  /** A probe round (or a dead peer's re-probe) is in flight: never two at once. */
  probing: boolean;
  /** A suspicion announced by another peer while our rounds were running: counted at their next failure. */
  announcedFailure: boolean;
  nextReprobeMs: number;
  reprobeDelayMs: number;
}

/**
 * Runs `run` with an AbortSignal that fires after `ms` on `clock`. Resolves to its result, or
 * to `fallback` on timeout, rejection or synchronous throw — it never rejects, even when the
 * callee ignores the signal. `cancels` (optional) collects a canceller so `stop()` can end it.
 */
export function withDeadline<T>(
  clock: Clock,
  ms: number,
  run: (signal: AbortSignal) => Promise<T>,
  fallback: T,
  cancels?: Set<() => void>,
): Promise<T> {
  const controller = new AbortController();
  return new Promise<T>((resolve) => {
    let settled = false;
    let timer: Timer | undefined;
    const settle = (value: T): void => {
      if (settled) return;
      settled = true;
      timer?.cancel();
      cancels?.delete(giveUp);
      controller.abort(); // tells the callee to drop whatever it still has in flight
      resolve(value);
    };
    const giveUp = (): void => settle(fallback);
    timer = clock.setTimer(ms, giveUp);
    cancels?.add(giveUp);
    let pending: Promise<T>;
    try {
      pending = Promise.resolve(run(controller.signal));
    } catch {
      giveUp();
      return;
    }
    pending.then(settle, giveUp);
  });
}

/**
 * Starts every attempt; true as soon as one resolves true, false once all resolved otherwise,
 * rejected or threw. One broken attempt never keeps the others from running.
 */
function anyTrue(attempts: (() => Promise<boolean>)[]): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    let remaining = attempts.length;
    if (remaining === 0) resolve(false);
    for (const start of attempts) {
      let attempt: Promise<boolean>;
      try {
        attempt = Promise.resolve(start());
      } catch (err) {
        attempt = Promise.reject(err);
      }
      attempt.then(
        (answered) => {
          if (answered === true) resolve(true);
          else if (--remaining === 0) resolve(false);
        },
        () => {
          if (--remaining === 0) resolve(false);
        },
      );
    }
  });
}

/** How a probe round ended: see #probeRound. */
type RoundOutcome = 'answered' | 'refused' | 'silent';

/**
 * Failed rounds add up to a verdict. A silent round (a timeout) may be a busy peer or a busy
 * network; a refused one (nothing listens) is what a crashed daemon's closed port does.
 */
const SILENT_ROUND = 1;
const REFUSED_ROUND = 2;
/** Suspect after one refused round or two silent ones. */
const SUSPECT_AFTER = 2;
/** Dead after two refused rounds or four silent ones (and suspicionTimeoutMs of suspicion). */
const DEAD_AFTER = 4;

function versionOf(v: StateVersion): StateVersion {
  return { incarnation: v.incarnation, seq: v.seq };
}

export class Membership {
  readonly selfPeerId: string;
  readonly options: GossipOptions;
  readonly #clock: Clock;
  readonly #rng: Rng;
  readonly #prober: Prober;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  readonly #listeners = new Set<MembershipListener>();
  readonly #cancels = new Set<() => void>();
  readonly #onSuspect: ((peerId: string, incarnation: number) => void) | undefined;
  /** Round-robin probe order (SWIM): a shuffle of the alive peers, walked one per period. */
  #probeOrder: string[] = [];
  #probeCursor = 0;
  #tickTimer: Timer | undefined;
  #running = false;
  #suspicions = 0;
  #falseSuspicions = 0;

  constructor(deps: MembershipDeps) {
    this.selfPeerId = deps.selfPeerId;
    this.options = resolveGossipOptions(deps.options);
    this.#clock = deps.clock;
    this.#rng = deps.rng;
    this.#prober = deps.prober;
    this.#log = deps.log ?? silentLogger;
    this.#onSuspect = deps.onSuspect;
    const now = this.#clock.now();
    this.#entries.set(this.selfPeerId, this.#newEntry(this.selfPeerId, { incarnation: 0, seq: 0 }, now));
  }

  /** Peers suspected so far (each alive → suspect transition counts once). */
  get suspicions(): number {
    return this.#suspicions;
  }

  /** Suspicions that ended with the peer proving alive (answered a probe, or was heard again). */
  get falseSuspicions(): number {
    return this.#falseSuspicions;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#scheduleTick();
  }

  /** Stops the detector and ends probes in flight; their outcomes are then ignored. */
  stop(): void {
    this.#running = false;
    this.#tickTimer?.cancel();
    this.#tickTimer = undefined;
    for (const cancel of [...this.#cancels]) cancel();
  }

  subscribe(listener: MembershipListener): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** Records this daemon's own (already signed) state. */
  setSelf(state: NodeState, signedFrame?: Uint8Array): void {
    const entry = this.#entries.get(this.selfPeerId)!;
    entry.state = state;
    entry.signedFrame = signedFrame;
    entry.version = versionOf(state);
    this.#emit({ type: 'changed', peerId: this.selfPeerId, status: 'alive', state });
  }

  /**
   * Takes a verified state. Keeps it only when newer than the one held; counts as hearing from
   * the peer under the rules at the top of this file. Returns whether the stored state changed.
   */
  observeState(state: NodeState, signedFrame?: Uint8Array, evidence: Evidence = 'direct'): boolean {
    if (state.peerId === this.selfPeerId) return false; // we alone speak for ourselves
    const incoming = versionOf(state);
    const now = this.#clock.now();
    const known = this.#entries.get(state.peerId);
    if (known === undefined) {
      const entry = this.#newEntry(state.peerId, incoming, now);
      entry.state = state;
      entry.signedFrame = signedFrame;
      this.#entries.set(state.peerId, entry);
      this.#emit({ type: 'status', peerId: entry.peerId, status: 'alive', state });
      this.#emit({ type: 'changed', peerId: entry.peerId, status: 'alive', state });
      return true;
    }
    this.#noteHeard(known, incoming, evidence, now);
    const newer = known.state === undefined || compareVersion(incoming, known.state) > 0;
    if (!newer) return false;
    known.state = state;
    known.signedFrame = signedFrame;
    this.#emit({ type: 'changed', peerId: known.peerId, status: known.status, state });
    return true;
  }

  /**
   * A transport connection to `peerId` closed: probe it now instead of waiting for its turn.
   * Only a failed round makes it suspect: connections also close for reasons of their own.
   */
  hintDisconnected(peerId: string): void {
    const entry = this.#entries.get(peerId);
    if (entry === undefined || peerId === this.selfPeerId || !this.#running || entry.status === 'dead') return;
    this.#startProbeRounds(entry, { announce: false, headStart: 0 });
  }

  /**
   * Another peer announced that its probes of `peerId` (at `incarnation`) failed: probe it now
   * ourselves. The announcement alone changes nothing, so a forged or mistaken one costs a probe.
   */
  hintSuspected(peerId: string, incarnation: number): void {
    const entry = this.#entries.get(peerId);
    if (entry === undefined || peerId === this.selfPeerId || !this.#running || entry.status === 'dead') return;
    if (incarnation < entry.version.incarnation) return; // about a previous life
    // The announcer's failed rounds count as one silent round of ours: our own must do the rest.
    if (entry.probing) entry.announcedFailure = true;
    else this.#startProbeRounds(entry, { announce: false, headStart: SILENT_ROUND });
  }

  /** A transport connection to `peerId` opened: a peer we hold dead may be back, so re-probe it now. */
  hintConnected(peerId: string): void {
    const entry = this.#entries.get(peerId);
    if (entry === undefined || entry.status !== 'dead' || !this.#running) return;
    entry.reprobeDelayMs = this.options.deadReprobeMs;
    this.#reprobeDead(entry);
  }

  /**
   * `peerId` answered a request of ours (an anti-entropy pull): it is up now, as if it had
   * answered a probe. A dead peer is left to its re-probes, which decide on their own.
   */
  heardFrom(peerId: string): void {
    const entry = this.#entries.get(peerId);
    if (entry === undefined || peerId === this.selfPeerId || entry.status === 'dead') return;
    this.#answered(entry, this.#clock.now());
  }

  get(peerId: string): MembershipEntry | undefined {
    const entry = this.#entries.get(peerId);
    return entry === undefined ? undefined : this.#snapshot(entry);
  }

  /** Every member, self included (always alive), dead ones until forgotten; sorted by peer id. */
  list(): MembershipEntry[] {
    return [...this.#entries.values()]
      .map((entry) => this.#snapshot(entry))
      .sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0));
  }

  /** Peers other than self currently believed alive. */
  alivePeerIds(): string[] {
    const ids: string[] = [];
    for (const entry of this.#entries.values()) {
      if (entry.status === 'alive' && entry.peerId !== this.selfPeerId) ids.push(entry.peerId);
    }
    return ids;
  }

  /**
   * The signed state frames to hand a peer that pulls with digest `have`: our own and those of
   * every peer not held dead (handing out a dead peer's last state would make the puller
   * believe it alive), unless the puller holds that version or a newer one.
   */
  signedFrames(have: PullDigest = []): Uint8Array[] {
    const held = new Map<string, StateVersion>();
    for (const [peerId, incarnation, seq] of have) held.set(peerId, { incarnation, seq });
    const frames: Uint8Array[] = [];
    for (const entry of this.#entries.values()) {
      if (entry.status === 'dead' || entry.signedFrame === undefined || entry.state === undefined) continue;
      const theirs = held.get(entry.peerId);
      if (theirs === undefined || compareVersion(entry.state, theirs) > 0) frames.push(entry.signedFrame);
    }
    return frames;
  }

  /** What we hold, for a pull: the version of every state held, dead peers' included. */
  digest(): PullDigest {
    const have: [string, number, number][] = [];
    for (const entry of this.#entries.values()) {
      if (entry.state !== undefined) have.push([entry.peerId, entry.state.incarnation, entry.state.seq]);
    }
    return have;
  }

  #newEntry(peerId: string, version: StateVersion, now: number): Entry {
    return {
      peerId,
      state: undefined,
      signedFrame: undefined,
      version,
      status: 'alive',
      lastHeardMs: now,
      statusSinceMs: now,
      probing: false,
      announcedFailure: false,
      nextReprobeMs: 0,
      reprobeDelayMs: this.options.deadReprobeMs,
    };
  }

  #snapshot(entry: Entry): MembershipEntry {
    const isSelf = entry.peerId === this.selfPeerId;
    return {
      peerId: entry.peerId,
      self: isSelf,
      state: entry.state,
      version: versionOf(entry.version),
      status: entry.status,
      lastHeardMs: isSelf ? this.#clock.now() : entry.lastHeardMs,
      statusSinceMs: entry.statusSinceMs,
    };
  }

  /** Applies one frame's worth of liveness evidence, then raises the highest version heard. */
  #noteHeard(entry: Entry, incoming: StateVersion, evidence: Evidence, now: number): void {
    const heard = entry.version;
    if (incoming.incarnation < heard.incarnation) return; // a previous life proves nothing
    if (entry.status === 'dead') {
      // Only a restarted daemon revives a dead peer; stale frames of its old life are still relayed around.
      if (incoming.incarnation > heard.incarnation) {
        entry.lastHeardMs = now;
        this.#setStatus(entry, 'alive', now);
      }
    } else if (evidence === 'direct' || compareVersion(incoming, heard) > 0) {
      this.#answered(entry, now);
    }
    if (compareVersion(incoming, heard) > 0) entry.version = incoming;
  }

  #setStatus(entry: Entry, status: MemberStatus, now: number): void {
    if (entry.status === status) return;
    entry.status = status;
    entry.statusSinceMs = now;
    if (status === 'dead') {
      entry.reprobeDelayMs = this.options.deadReprobeMs;
      entry.nextReprobeMs = now + entry.reprobeDelayMs;
    }
    this.#log.debug({ peerId: entry.peerId, status }, 'member status changed');
    this.#emit({ type: 'status', peerId: entry.peerId, status, ...(entry.state ? { state: entry.state } : {}) });
  }

  #emit(event: MembershipEvent): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(event);
      } catch (err) {
        this.#log.warn({ err: errorMessage(err), peerId: event.peerId }, 'membership listener threw');
      }
    }
  }

  #scheduleTick(): void {
    this.#tickTimer = this.#clock.setTimer(this.options.probeIntervalMs, () => {
      if (!this.#running) return;
      try {
        this.#tick();
      } catch (err) {
        this.#log.error({ err: errorMessage(err) }, 'failure detector tick failed');
      }
      this.#scheduleTick();
    });
  }

  #tick(): void {
    const now = this.#clock.now();
    for (const entry of [...this.#entries.values()]) {
      if (entry.status !== 'dead') continue;
      if (now - entry.statusSinceMs >= this.options.deadRetentionMs) {
        this.#entries.delete(entry.peerId);
        this.#emit({ type: 'removed', peerId: entry.peerId, status: 'dead' });
      } else if (this.options.deadReprobeMs > 0 && now >= entry.nextReprobeMs) {
        this.#reprobeDead(entry);
      }
    }
    const target = this.#nextProbeTarget();
    if (target !== undefined) this.#startProbeRounds(target, { announce: true, headStart: 0 });
  }

  /**
   * The next alive peer in the round-robin order, reshuffled after each pass (newcomers join at
   * the next pass). Peers that left, died or are being probed already are skipped.
   */
  #nextProbeTarget(): Entry | undefined {
    for (let reshuffled = false; ; ) {
      while (this.#probeCursor < this.#probeOrder.length) {
        const entry = this.#entries.get(this.#probeOrder[this.#probeCursor++]!);
        if (entry !== undefined && entry.status === 'alive' && !entry.probing) return entry;
      }
      if (reshuffled) return undefined;
      reshuffled = true;
      this.#probeOrder = this.#rng.shuffle(this.alivePeerIds());
      this.#probeCursor = 0;
    }
  }

  #isCurrent(entry: Entry): boolean {
    return this.#running && this.#entries.get(entry.peerId) === entry;
  }

  /** Probing this entry is over: the detector stopped, the peer was forgotten or declared dead. */
  #settled(entry: Entry): boolean {
    return !this.#isCurrent(entry) || entry.status === 'dead';
  }

  /** The peer answered (a probe, or a request of ours): alive now, and a suspicion was false. */
  #answered(entry: Entry, now: number): void {
    entry.lastHeardMs = now;
    if (entry.status === 'suspect') {
      this.#falseSuspicions++;
      this.#setStatus(entry, 'alive', now);
    }
  }

  /**
   * Probes a peer round after round until it answers (alive), was heard from meanwhile, or is
   * declared dead, never two loops on one peer. Failed rounds add up (see the top of this
   * file): SUSPECT_AFTER makes it suspect (announced when `announce`), DEAD_AFTER with
   * suspicionTimeoutMs of suspicion makes it dead. Rounds start at least probeTimeoutMs apart,
   * so that probes failing fast (connection refused) do not spin.
   */
  #startProbeRounds(entry: Entry, how: { announce: boolean; headStart: number }): void {
    if (entry.probing) return;
    entry.probing = true;
    entry.announcedFailure = false;
    void this.#probeUntilDecided(entry, how.announce, how.headStart)
      .catch((err: unknown) => this.#log.error({ err: errorMessage(err), peerId: entry.peerId }, 'probing failed'))
      .finally(() => {
        entry.probing = false;
      });
  }

  async #probeUntilDecided(entry: Entry, announce: boolean, headStart: number): Promise<void> {
    const { probeTimeoutMs, suspicionTimeoutMs } = this.options;
    let suspectedSince = entry.status === 'suspect' ? entry.statusSinceMs : undefined;
    let failed = suspectedSince === undefined ? headStart : Math.max(headStart, SUSPECT_AFTER);
    for (;;) {
      const roundStartedMs = this.#clock.now();
      const outcome = await this.#probeRound(entry, roundStartedMs);
      if (this.#settled(entry)) return;
      const now = this.#clock.now();
      if (outcome === 'answered') {
        this.#answered(entry, now);
        return;
      }
      // Heard from meanwhile (a frame it sent, a pull it answered): that settles this round.
      if (entry.lastHeardMs >= roundStartedMs) return;
      failed += outcome === 'refused' ? REFUSED_ROUND : SILENT_ROUND;
      if (entry.announcedFailure) failed += SILENT_ROUND;
      entry.announcedFailure = false;
      if (suspectedSince === undefined) {
        if (failed >= SUSPECT_AFTER) {
          this.#suspicions++;
          this.#setStatus(entry, 'suspect', now);
          suspectedSince = now;
          if (announce) this.#announceSuspicion(entry);
        }
      } else if (entry.status !== 'suspect' || entry.statusSinceMs !== suspectedSince) {
        return; // cleared and suspected anew meanwhile: not this loop's suspicion any more
      } else if (failed >= DEAD_AFTER && now - suspectedSince >= suspicionTimeoutMs) {
        this.#log.info({ peerId: entry.peerId, silentMs: now - entry.lastHeardMs }, 'peer declared dead');
        this.#setStatus(entry, 'dead', now);
        return;
      }
      const pauseMs = roundStartedMs + probeTimeoutMs - now;
      if (pauseMs > 0) {
        await withDeadline(this.#clock, pauseMs, () => new Promise<void>(() => {}), undefined, this.#cancels);
        if (this.#settled(entry)) return;
      }
    }
  }

  #announceSuspicion(entry: Entry): void {
    try {
      this.#onSuspect?.(entry.peerId, entry.version.incarnation);
    } catch (err) {
      this.#log.warn({ err: errorMessage(err), peerId: entry.peerId }, 'announcing a suspicion failed');
    }
  }

  /**
   * One SWIM round: a direct probe, then, if unanswered, probes through random helpers. The
   * round is 'refused' when the direct probe failed before its deadline (nothing listens, the
   * connection broke) and no helper reached the peer, 'silent' when it timed out.
   */
  async #probeRound(entry: Entry, roundStartedMs: number): Promise<RoundOutcome> {
    const target = entry.peerId;
    const { probeTimeoutMs, indirectProbes } = this.options;
    const direct = await withDeadline<RoundOutcome>(
      this.#clock,
      probeTimeoutMs,
      (signal) => this.#prober.probe(target, signal).then((ok) => (ok === true ? 'answered' : 'refused'), () => 'refused'),
      'silent',
      this.#cancels,
    );
    if (direct === 'answered') return direct;
    if (this.#settled(entry) || entry.lastHeardMs >= roundStartedMs) return direct;
    const helpers = this.#rng.sample(
      this.alivePeerIds().filter((id) => id !== target),
      indirectProbes,
    );
    if (helpers.length === 0) return direct;
    const indirect = await withDeadline(
      this.#clock,
      probeTimeoutMs,
      (signal) => anyTrue(helpers.map((helper) => () => this.#prober.probeVia(helper, target, signal))),
      false,
      this.#cancels,
    );
    return indirect ? 'answered' : direct;
  }

  /** A dead peer gets a rare direct probe; an answer means it is up now, whatever frames say. */
  #reprobeDead(entry: Entry): void {
    if (entry.probing) return;
    entry.probing = true;
    const { probeTimeoutMs, deadReprobeMaxMs } = this.options;
    void withDeadline(this.#clock, probeTimeoutMs, (signal) => this.#prober.probe(entry.peerId, signal), false, this.#cancels)
      .then((answered) => {
        if (!this.#isCurrent(entry) || entry.status !== 'dead') return;
        const now = this.#clock.now();
        if (answered === true) {
          this.#log.info({ peerId: entry.peerId }, 'dead peer answered a probe; alive again');
          entry.lastHeardMs = now;
          this.#setStatus(entry, 'alive', now);
        } else {
          entry.reprobeDelayMs = Math.min(deadReprobeMaxMs, Math.max(1, entry.reprobeDelayMs * 2));
          entry.nextReprobeMs = now + entry.reprobeDelayMs;
        }
      })
      .catch((err: unknown) => this.#log.error({ err: errorMessage(err) }, 're-probe failed'))
      .finally(() => {
        entry.probing = false;
      });
  }
}
