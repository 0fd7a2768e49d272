/**
 * GossipService: one daemon's side of the shared view. It signs and broadcasts its own state
 * (on change, and again now and then as repair), takes in what peers broadcast, repairs gaps by
 * anti-entropy pulls that ask only for what the puller lacks, runs the failure detector
 * (Membership), and announces the suspicions its own probes reach.
 *
 * The transport calls the `handle*` and `peer*` methods; none of them ever throws or rejects
 * on anything a peer sends. Every background promise is caught where it is started.
 */
import { FabricError, errorMessage, silentLogger, type Clock, type Logger, type Rng, type Timer } from '../core/index.ts';
import { decodeFrame, encodeState, encodeSuspicion, peekClaim, stampForBroadcast, type DropReason } from './codec.ts';
import {
  Membership,
  resolveGossipOptions,
  withDeadline,
  type Evidence,
  type GossipOptions,
  type MembershipListener,
} from './membership.ts';
import type { GossipTransport, PullDigest, Sign, Verify } from './ports.ts';
import { compareVersion, type NodeState } from './state.ts';

/** A pull answer longer than this is cut: no fabric is that large, a hostile peer might be. */
export const MAX_FRAMES_PER_PULL = 10_000;

/** Refusals of the same reason are logged at warn at most this often; the rest at debug. */
const WARN_EVERY_MS = 10_000;

export interface GossipServiceDeps {
  self: { peerId: string; fabricId: string };
  /** This daemon's state; the caller sets `incarnation` (grows every start) and `seq`. */
  initialState: NodeState;
  clock: Clock;
  rng: Rng;
  transport: GossipTransport;
  sign: Sign;
  verify: Verify;
  /** Wall clock (ms since the epoch), only for the display-only `updatedAtMs` of our own state. */
  wallNow: () => number;
  log?: Logger;
  options?: Partial<GossipOptions>;
}

export interface GossipStats {
  /** Frames refused (bad size, encoding, schema, fabric or signature). */
  droppedFrames: number;
  falseSuspicions: number;
  suspicions: number;
}

/** Changes a copy of the own state: mutate `draft` in place, or return a replacement. */
export type SelfMutator = (draft: NodeState) => NodeState | void;

type Arrival = 'broadcast' | 'pull';

export class GossipService {
  readonly membership: Membership;
  readonly peerId: string;
  readonly fabricId: string;
  readonly options: GossipOptions;
  readonly #clock: Clock;
  readonly #rng: Rng;
  readonly #transport: GossipTransport;
  readonly #sign: Sign;
  readonly #verify: Verify;
  readonly #wallNow: () => number;
  readonly #log: Logger;

  #state: NodeState;
  #stateFrame: Uint8Array | undefined;
  /** Own-state changes run one after another, so seq grows in the order frames are signed. */
  #selfUpdates: Promise<unknown> = Promise.resolve();
  readonly #pulls = new Map<string, Promise<boolean>>();
  readonly #cancels = new Set<() => void>();
  #rebroadcastTimer: Timer | undefined;
  #antiEntropyTimer: Timer | undefined;
  #lastFullStateMs = Number.NEGATIVE_INFINITY;
  #started = false;
  #stopped = false;
  #droppedFrames = 0;
  /** Numbers our broadcasts so that none repeats another byte for byte (see codec.ts). */
  #broadcastCount = 0;
  readonly #lastWarnMs = new Map<string, number>();

  constructor(deps: GossipServiceDeps) {
    const { self, initialState } = deps;
    if (initialState.peerId !== self.peerId || initialState.fabricId !== self.fabricId) {
      throw new FabricError('BAD_INPUT', 'initialState must carry this daemon\'s own peerId and fabricId', {
        details: { peerId: self.peerId, fabricId: self.fabricId },
      });
    }
    this.peerId = self.peerId;
    this.fabricId = self.fabricId;
    this.options = resolveGossipOptions(deps.options);
    this.#clock = deps.clock;
    this.#rng = deps.rng;
    this.#transport = deps.transport;
    this.#sign = deps.sign;
    this.#verify = deps.verify;
    this.#wallNow = deps.wallNow;
    this.#log = deps.log ?? silentLogger;
    this.#state = structuredClone(initialState);
    this.membership = new Membership({
      selfPeerId: self.peerId,
      clock: deps.clock,
      rng: deps.rng,
      prober: deps.transport,
      log: this.#log,
      options: this.options,
      onSuspect: (target, incarnation) => void this.#announceSuspicion(target, incarnation),
    });
  }

  /**
   * Signs the initial state, announces it, and starts rebroadcasts, anti-entropy and the failure
   * detector. Rejects (FabricError BAD_INPUT) only if the initial state itself is invalid.
   */
  start(): Promise<void> {
    return this.#reportedButHandled(this.#start(), 'gossip failed to start');
  }

  async #start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    try {
      await this.#enqueueSelfUpdate(async () => {
        const frame = await encodeState(this.#state, this.#sign);
        this.#commitSelf(this.#state, frame);
      });
    } catch (err) {
      this.#started = false;
      throw err;
    }
    if (this.#stopped) return;
    this.membership.start();
    this.#broadcastFullState();
    this.#scheduleRebroadcast();
    this.#scheduleAntiEntropy();
  }

  /** Stops every timer and abandons pulls and probes in flight. Frames arriving later are ignored. */
  stop(): void {
    this.#stopped = true;
    this.#rebroadcastTimer?.cancel();
    this.#antiEntropyTimer?.cancel();
    this.membership.stop();
    for (const cancel of [...this.#cancels]) cancel();
  }

  /** A copy of this daemon's current state. */
  selfState(): NodeState {
    return structuredClone(this.#state);
  }

  /**
   * Changes the own state: bumps seq, stamps updatedAtMs, re-signs and broadcasts at once.
   * Resolves to the new state; rejects (FabricError BAD_INPUT) and keeps the old state when the
   * result would be refused by peers.
   */
  updateSelf(mutator: SelfMutator): Promise<NodeState> {
    const update = this.#enqueueSelfUpdate(async () => {
      const previous = this.#state;
      const draft = structuredClone(previous);
      const replaced = mutator(draft);
      const next: NodeState = {
        ...(replaced ?? draft),
        peerId: this.peerId,
        fabricId: this.fabricId,
        incarnation: previous.incarnation,
        seq: previous.seq + 1,
        updatedAtMs: Math.max(0, Math.floor(this.#wallNow())),
      };
      const frame = await encodeState(next, this.#sign);
      this.#commitSelf(next, frame);
      if (this.#started && !this.#stopped) this.#broadcastFullState();
      return structuredClone(next);
    });
    return this.#reportedButHandled(update, 'own state update refused');
  }

  /**
   * Callers may fire and forget: a failure is logged here and the promise marked handled, so it
   * can never surface as an unhandled rejection; a caller that awaits still sees it reject.
   */
  #reportedButHandled<T>(promise: Promise<T>, message: string): Promise<T> {
    promise.catch((err: unknown) => this.#log.warn({ err: errorMessage(err) }, message));
    return promise;
  }

  subscribe(listener: MembershipListener): () => void {
    return this.membership.subscribe(listener);
  }

  stats(): GossipStats {
    return {
      droppedFrames: this.#droppedFrames,
      falseSuspicions: this.membership.falseSuspicions,
      suspicions: this.membership.suspicions,
    };
  }

  /** A frame from the broadcast channel. Never rejects; bad frames are counted and logged. */
  async handleBroadcast(bytes: Uint8Array, fromPeerId: string): Promise<void> {
    try {
      await this.#ingest(bytes, fromPeerId, 'broadcast');
    } catch (err) {
      this.#log.error({ err: errorMessage(err), fromPeerId }, 'gossip frame handling failed');
    }
  }

  /**
   * Anti-entropy answer: the signed state frames held (own and others', byte for byte) that
   * are newer than what the puller says it has, or of peers it does not list.
   */
  handlePullRequest(have: PullDigest = []): Uint8Array[] {
    return this.membership.signedFrames(have);
  }

  /** Serves a peer's ping-req: probe `target` on its behalf. */
  handleProbeVia(target: string, signal: AbortSignal): Promise<boolean> {
    if (this.#stopped) return Promise.resolve(false);
    return withDeadline(
      this.#clock,
      this.options.probeTimeoutMs,
      (own) => this.#transport.probe(target, AbortSignal.any([signal, own])),
      false,
      this.#cancels,
    ).then((answered) => answered === true);
  }

  /** A connection to `peerId` opened: pull its whole view now, so a newcomer is current at once. */
  async peerConnected(peerId: string): Promise<void> {
    if (this.#stopped) return;
    this.membership.hintConnected(peerId);
    await this.#pullFrom(peerId);
  }

  /** A connection to `peerId` closed: probe it now rather than at its turn. */
  peerDisconnected(peerId: string): void {
    if (this.#stopped) return;
    this.membership.hintDisconnected(peerId);
  }

  #enqueueSelfUpdate<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#selfUpdates.then(work);
    this.#selfUpdates = run.catch(() => undefined); // one failed update must not block the next
    return run;
  }

  #commitSelf(state: NodeState, frame: Uint8Array): void {
    this.#state = state;
    this.#stateFrame = frame;
    this.membership.setSelf(state, frame);
  }

  #broadcast(frame: Uint8Array, what: string): void {
    let sending: Promise<void>;
    try {
      sending = Promise.resolve(this.#transport.broadcast(stampForBroadcast(frame, ++this.#broadcastCount)));
    } catch (err) {
      sending = Promise.reject(err);
    }
    sending.catch((err: unknown) => this.#log.debug({ err: errorMessage(err), what }, 'gossip broadcast failed'));
  }

  #broadcastFullState(): void {
    if (this.#stateFrame === undefined) return;
    this.#lastFullStateMs = this.#clock.now();
    this.#broadcast(this.#stateFrame, 'state');
  }

  /** Rebroadcasts the state when it has not been broadcast for fullStateEveryMs. */
  #scheduleRebroadcast(): void {
    const dueInMs = Math.max(1, this.#lastFullStateMs + this.options.fullStateEveryMs - this.#clock.now());
    this.#rebroadcastTimer = this.#clock.setTimer(dueInMs, () => {
      if (this.#stopped) return;
      if (this.#clock.now() - this.#lastFullStateMs >= this.options.fullStateEveryMs) this.#broadcastFullState();
      this.#scheduleRebroadcast();
    });
  }

  /** Tells every peer that our probes of `target` failed, so they probe it now (codec.ts). */
  async #announceSuspicion(target: string, incarnation: number): Promise<void> {
    try {
      const frame = await encodeSuspicion({ peerId: this.peerId, fabricId: this.fabricId, target, incarnation }, this.#sign);
      if (!this.#stopped) this.#broadcast(frame, 'suspicion');
    } catch (err) {
      this.#log.warn({ err: errorMessage(err), target }, 'could not announce a suspicion');
    }
  }

  #scheduleAntiEntropy(): void {
    this.#antiEntropyTimer = this.#clock.setTimer(this.options.antiEntropyMs, () => {
      if (this.#stopped) return;
      const alive = this.membership.alivePeerIds();
      if (alive.length > 0) void this.#pullFrom(alive[this.#rng.int(alive.length)]!);
      this.#scheduleAntiEntropy();
    });
  }

  /**
   * Pulls every state `peerId` holds. Concurrent pulls from one peer share one request.
   * Resolves whether the peer answered; never rejects.
   */
  #pullFrom(peerId: string): Promise<boolean> {
    if (peerId === this.peerId || this.#stopped) return Promise.resolve(false);
    const inFlight = this.#pulls.get(peerId);
    if (inFlight !== undefined) return inFlight;
    const pull = this.#pull(peerId)
      .catch((err: unknown) => {
        this.#log.error({ err: errorMessage(err), peerId }, 'anti-entropy pull failed');
        return false;
      })
      .finally(() => this.#pulls.delete(peerId));
    this.#pulls.set(peerId, pull);
    return pull;
  }

  async #pull(peerId: string): Promise<boolean> {
    const frames = await withDeadline<unknown>(
      this.#clock,
      this.options.pullTimeoutMs,
      (signal) => this.#transport.pull(peerId, this.membership.digest(), signal),
      undefined,
      this.#cancels,
    );
    if (!Array.isArray(frames)) {
      this.#log.debug({ peerId }, 'anti-entropy pull got no answer');
      return false;
    }
    if (frames.length > MAX_FRAMES_PER_PULL) {
      this.#droppedFrames += frames.length - MAX_FRAMES_PER_PULL;
      this.#warnRateLimited('pull-too-long', { peerId, frames: frames.length }, 'anti-entropy answer cut short');
    }
    this.membership.heardFrom(peerId);
    for (const bytes of frames.slice(0, MAX_FRAMES_PER_PULL)) {
      if (this.#stopped) break;
      await this.#ingest(bytes as Uint8Array, peerId, 'pull');
    }
    return true;
  }

  async #ingest(bytes: Uint8Array, fromPeerId: string, arrival: Arrival): Promise<void> {
    if (this.#stopped) return;
    if (arrival === 'pull' && this.#cannotMatter(bytes, fromPeerId)) return;
    const decoded = await decodeFrame(bytes, this.#verify, this.fabricId);
    if (this.#stopped) return;
    if (!decoded.ok) {
      this.#drop(decoded.reason, decoded.detail, fromPeerId, arrival);
      return;
    }
    if (decoded.kind === 'suspect') {
      const { peerId: announcer, target, incarnation } = decoded.suspicion;
      if (announcer === this.peerId || arrival !== 'broadcast') return;
      if (target === this.peerId) {
        // We answer probes, so the announcer's next round will find us; nothing to refute.
        this.#log.debug({ announcer }, 'a peer suspects us');
        return;
      }
      this.membership.hintSuspected(target, incarnation);
      return;
    }
    const origin = decoded.state;
    if (origin.peerId === this.peerId) {
      if (compareVersion(origin, this.#state) > 0) {
        this.#warnRateLimited(
          'own-identity',
          { fromPeerId, incarnation: origin.incarnation, seq: origin.seq },
          'a newer state signed with our own identity is circulating: is this identity running twice?',
        );
      }
      return;
    }
    // A broadcast comes from its author; in a pull, only the answering peer's own frame does.
    const evidence: Evidence = arrival === 'broadcast' || origin.peerId === fromPeerId ? 'direct' : 'relayed';
    this.membership.observeState(decoded.state, decoded.frame, evidence);
  }

  /**
   * A relayed frame claiming a version no newer than the state we hold of its author would
   * change nothing even if authentic (relayed frames prove life only when newer), so its signature need not be checked. This keeps a
   * newcomer's first pulls from every peer (each answering with the whole fabric) cheap. A lie
   * in the claim only gets a frame skipped that would have been refused or ignored anyway.
   */
  #cannotMatter(bytes: Uint8Array, fromPeerId: string): boolean {
    const claim = peekClaim(bytes);
    if (claim === undefined || claim.peerId === fromPeerId) return false;
    if (claim.peerId === this.peerId) return true;
    const known = this.membership.get(claim.peerId);
    return known?.state !== undefined && compareVersion(claim, known.state) <= 0;
  }

  #drop(reason: DropReason, detail: string | undefined, fromPeerId: string, arrival: Arrival): void {
    this.#droppedFrames++;
    const fields = { reason, detail, fromPeerId, arrival };
    // Size and encoding faults are noise; a foreign fabric or a forged signature deserves a look.
    if (reason === 'wrong-fabric' || reason === 'bad-signature') {
      this.#warnRateLimited(reason, fields, 'gossip frame refused');
    } else {
      this.#log.debug(fields, 'gossip frame refused');
    }
  }

  #warnRateLimited(key: string, fields: Record<string, unknown>, message: string): void {
    const now = this.#clock.now();
    const last = this.#lastWarnMs.get(key);
    if (last === undefined || now - last >= WARN_EVERY_MS) {
      this.#lastWarnMs.set(key, now);
      this.#log.warn(fields, message);
    } else {
      this.#log.debug(fields, message);
    }
  }
}
