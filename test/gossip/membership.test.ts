import { describe, expect, it } from 'vitest';
import { ManualClock, SeededRng, isFabricError } from '../../src/core/index.ts';
import {
  DEFAULT_GOSSIP_OPTIONS,
  Membership,
  resolveGossipOptions,
  type GossipOptions,
  type MembershipEvent,
  type Prober,
} from '../../src/gossip/membership.ts';
import { flush, makeState } from './mem-transport.ts';

type Answer = 'yes' | 'no' | 'hang';

/** A prober whose answers the test scripts per target (direct) and per helper (indirect). */
class ScriptedProber implements Prober {
  direct = new Map<string, Answer>();
  indirect = new Map<string, Answer>(); // key: helper
  directCalls: string[] = [];
  indirectCalls: { helper: string; target: string }[] = [];
  inFlight = new Map<string, number>();
  maxInFlight = 0;
  readonly #clock: ManualClock;

  constructor(clock: ManualClock) {
    this.#clock = clock;
  }

  probe(target: string, signal: AbortSignal): Promise<boolean> {
    this.directCalls.push(target);
    return this.#answer(target, this.direct.get(target) ?? 'hang', signal);
  }

  probeVia(helper: string, target: string, signal: AbortSignal): Promise<boolean> {
    this.indirectCalls.push({ helper, target });
    return this.#answer(target, this.indirect.get(helper) ?? 'hang', signal);
  }

  #answer(target: string, answer: Answer, signal: AbortSignal): Promise<boolean> {
    const count = (this.inFlight.get(target) ?? 0) + 1;
    this.inFlight.set(target, count);
    this.maxInFlight = Math.max(this.maxInFlight, count);
    const done = () => this.inFlight.set(target, (this.inFlight.get(target) ?? 1) - 1);
    return new Promise<boolean>((resolve, reject) => {
      if (answer !== 'hang') {
        this.#clock.setTimer(10, () => {
          done();
          resolve(answer === 'yes');
        });
      }
      signal.addEventListener(
        'abort',
        () => {
          if (answer === 'hang') done();
          reject(signal.reason);
        },
        { once: true },
      );
    });
  }
}

function setup(options: Partial<GossipOptions> = {}) {
  const clock = new ManualClock(0);
  const prober = new ScriptedProber(clock);
  const announced: { peerId: string; incarnation: number }[] = [];
  const membership = new Membership({
    selfPeerId: 'self',
    clock,
    rng: new SeededRng(3),
    prober,
    options,
    onSuspect: (peerId, incarnation) => announced.push({ peerId, incarnation }),
  });
  const events: MembershipEvent[] = [];
  membership.subscribe((e) => events.push(e));
  membership.start();
  /** Advances in 10 ms steps, letting probe continuations run between steps. */
  const run = async (ms: number) => {
    for (let t = 0; t < ms; t += 10) {
      clock.advance(10);
      await flush();
    }
  };
  /** A peer heard from directly (its own broadcast). */
  const peer = (peerId: string, incarnation = 1, seq = 0) => membership.observeState(makeState(peerId, { incarnation, seq }));
  return { clock, prober, membership, events, run, peer, announced };
}

const statuses = (events: MembershipEvent[], peerId: string) =>
  events.filter((e) => e.type === 'status' && e.peerId === peerId).map((e) => e.status);

describe('membership: versions', () => {
  it('keeps the newest state and ignores stale ones', () => {
    const { membership, events } = setup();
    expect(membership.observeState(makeState('a', { incarnation: 1, seq: 5 }))).toBe(true);
    expect(membership.observeState(makeState('a', { incarnation: 1, seq: 4 }))).toBe(false);
    expect(membership.observeState(makeState('a', { incarnation: 1, seq: 5 }))).toBe(false);
    expect(membership.observeState(makeState('a', { incarnation: 0, seq: 99 }))).toBe(false);
    expect(membership.get('a')?.state?.seq).toBe(5);
    expect(membership.observeState(makeState('a', { incarnation: 2, seq: 0 }))).toBe(true);
    expect(membership.get('a')?.version).toEqual({ incarnation: 2, seq: 0 });
    expect(events.filter((e) => e.type === 'changed').map((e) => e.state?.seq)).toEqual([5, 0]);
    expect(events.filter((e) => e.type === 'status')).toEqual([
      expect.objectContaining({ type: 'status', peerId: 'a', status: 'alive' }),
    ]);
  });

  it('hands a puller only the states newer than its digest, and lists what it holds', () => {
    const { membership, peer } = setup();
    membership.setSelf(makeState('self', { seq: 2 }), new Uint8Array([0]));
    membership.observeState(makeState('a', { seq: 3 }), new Uint8Array([1]));
    membership.observeState(makeState('b', { seq: 1 }), new Uint8Array([2]));
    peer('c'); // a state without its signed frame (never happens on the wire) is not handed out
    expect(membership.digest()).toEqual(
      expect.arrayContaining([
        ['self', 1, 2],
        ['a', 1, 3],
        ['b', 1, 1],
        ['c', 1, 0],
      ]),
    );
    expect(membership.signedFrames().map((f) => f[0])).toEqual([0, 1, 2]);
    const frames = membership.signedFrames([
      ['self', 1, 2], // same version: not sent
      ['a', 1, 2], // older: sent
      ['b', 2, 0], // newer incarnation at the puller: not sent
    ]);
    expect(frames.map((f) => f[0])).toEqual([1]);
  });

  it('never lets the wire overwrite our own entry, which is always alive', () => {
    const { membership } = setup();
    membership.setSelf(makeState('self', { seq: 2 }));
    expect(membership.observeState(makeState('self', { seq: 50 }))).toBe(false);
    expect(membership.get('self')).toMatchObject({ self: true, status: 'alive', version: { incarnation: 1, seq: 2 } });
    expect(membership.list().map((m) => m.peerId)).toEqual(['self']);
  });
});

describe('membership: failure detection', () => {
  it('probes one peer per period, round robin: every peer once per pass, whatever their number', async () => {
    const { membership, run, prober, peer } = setup();
    const ids = ['a', 'b', 'c', 'd', 'e'];
    for (const id of ids) {
      peer(id);
      prober.direct.set(id, 'yes');
    }
    await run(5 * 250);
    expect([...prober.directCalls].sort()).toEqual(ids);
    await run(5 * 250);
    for (const id of ids) expect(prober.directCalls.filter((c) => c === id)).toHaveLength(2);
    expect(prober.indirectCalls).toEqual([]);
    expect(membership.suspicions).toBe(0);
    expect(membership.get('a')?.lastHeardMs).toBeGreaterThan(1_250);
  });

  it('a silent peer is suspected after two silent rounds and dead after four', async () => {
    const { membership, run, events, prober, announced } = setup();
    membership.observeState(makeState('a'));
    await run(1_040); // probed at 250; direct probes time out at 650 and 1050 (no helper alive)
    expect(membership.get('a')?.status).toBe('alive');
    await run(20);
    expect(membership.get('a')).toMatchObject({ status: 'suspect', statusSinceMs: 1_050 });
    expect(announced).toEqual([{ peerId: 'a', incarnation: 1 }]);
    await run(780); // rounds end at 1450 and 1850
    expect(membership.get('a')?.status).toBe('suspect');
    await run(20);
    expect(membership.get('a')).toMatchObject({ status: 'dead', statusSinceMs: 1_850 });
    expect(statuses(events, 'a')).toEqual(['alive', 'suspect', 'dead']);
    expect(membership.suspicions).toBe(1);
    expect(membership.falseSuspicions).toBe(0);
    expect(prober.directCalls).toEqual(['a', 'a', 'a', 'a']);
  });

  it('a peer whose port refuses is suspected at the first round and dead 600 ms later', async () => {
    const { membership, run, prober } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'no');
    await run(270); // probed at 250, refused at 260
    expect(membership.get('a')).toMatchObject({ status: 'suspect', statusSinceMs: 260 });
    await run(780); // refused again at 660 (suspect for 400 ms only) and at 1060
    expect(membership.get('a')?.status).toBe('suspect');
    await run(20);
    expect(membership.get('a')).toMatchObject({ status: 'dead', statusSinceMs: 1_060 });
    expect(prober.directCalls).toEqual(['a', 'a', 'a']);
  });

  it('asks random alive peers to probe a peer that misses the direct probe', async () => {
    const { membership, run, prober, peer } = setup();
    membership.observeState(makeState('a'));
    for (const h of ['h1', 'h2', 'h3', 'h4', 'h5']) {
      peer(h);
      prober.direct.set(h, 'yes');
    }
    await run(6 * 250 + 2_000);
    expect(membership.get('a')?.status).toBe('dead');
    expect(prober.indirectCalls.every((c) => c.target === 'a' && c.helper.startsWith('h'))).toBe(true);
    // Four silent rounds (two to suspect, two more to kill), 3 helpers each.
    expect(prober.indirectCalls).toHaveLength(4 * DEFAULT_GOSSIP_OPTIONS.indirectProbes);
    expect(new Set(prober.indirectCalls.slice(0, 3).map((c) => c.helper)).size).toBe(3);
    expect(membership.suspicions).toBe(1);
  });

  it('a peer that answers its probes is never suspected, and never probed twice at once', async () => {
    const { membership, run, prober } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'yes');
    await run(30_000);
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.suspicions).toBe(0);
    expect(prober.directCalls.length).toBeGreaterThanOrEqual(100);
    expect(prober.maxInFlight).toBe(1);
  });

  it('a peer reachable only through others is never suspected', async () => {
    const { membership, run, prober, peer } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'no');
    for (const h of ['h1', 'h2']) {
      peer(h);
      prober.direct.set(h, 'yes');
    }
    prober.indirect.set('h1', 'no');
    prober.indirect.set('h2', 'yes');
    await run(20_000);
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.suspicions).toBe(0);
    expect(prober.indirectCalls.some((c) => c.helper === 'h2')).toBe(true);
  });

  it('a suspect heard from again is alive, and the suspicion counted as false', async () => {
    const { membership, run, peer } = setup();
    peer('a');
    await run(1_100);
    expect(membership.get('a')?.status).toBe('suspect');
    peer('a', 1, 1); // its own broadcast arrives
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.falseSuspicions).toBe(1);
    await run(200); // the round still in flight fails, but cannot kill a peer heard since
    expect(membership.get('a')?.status).toBe('alive');
  });

  it('a peer that answered a request of ours (heardFrom) is alive again', async () => {
    const { membership, run } = setup();
    membership.observeState(makeState('a'));
    await run(1_100);
    expect(membership.get('a')?.status).toBe('suspect');
    membership.heardFrom('a');
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.falseSuspicions).toBe(1);
    membership.heardFrom('nobody');
    membership.heardFrom('self');
  });

  it('a disconnect hint probes at once: an unreachable peer is dead within a second', async () => {
    const { membership, run, prober, announced } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'no'); // refused at once, as a closed port is
    await run(100);
    expect(prober.directCalls).toEqual([]);
    membership.hintDisconnected('a');
    expect(prober.directCalls).toEqual(['a']);
    await run(20);
    expect(membership.get('a')?.status).toBe('suspect');
    await run(790);
    expect(membership.get('a')?.status).toBe('dead');
    expect(announced).toEqual([]); // every peer saw the same connection close: no announcement
    membership.hintDisconnected('nobody'); // unknown peers are ignored
    membership.hintDisconnected('self');
    expect(membership.get('self')?.status).toBe('alive');
  });

  it('a disconnect hint for a peer that still answers changes nothing', async () => {
    const { membership, run, prober } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'yes');
    membership.hintDisconnected('a');
    await run(50);
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.suspicions).toBe(0);
  });

  it('an announced suspicion makes us probe at once, but only a failed round of ours suspects', async () => {
    const { membership, run, prober, announced } = setup({ probeIntervalMs: 60_000 });
    membership.observeState(makeState('a', { incarnation: 2 }));
    prober.direct.set('a', 'yes');
    membership.hintSuspected('a', 2);
    expect(prober.directCalls).toEqual(['a']);
    await run(50);
    expect(membership.get('a')?.status).toBe('alive');
    membership.hintSuspected('a', 1); // about its previous life
    expect(prober.directCalls).toEqual(['a']);
    prober.direct.set('a', 'hang');
    membership.hintSuspected('a', 2);
    await run(410); // the announcement counts as one silent round: one of ours makes two
    expect(membership.get('a')?.status).toBe('suspect');
    await run(800);
    expect(membership.get('a')?.status).toBe('dead');
    expect(announced).toEqual([]); // not ours to announce again
  });
});

describe('membership: dead peers', () => {
  async function deadPeer() {
    const ctx = setup({ deadRetentionMs: 60_000, deadReprobeMs: 10_000, deadReprobeMaxMs: 40_000 });
    ctx.membership.observeState(makeState('a', { incarnation: 3, seq: 1 }));
    await ctx.run(2_000);
    expect(ctx.membership.get('a')?.status).toBe('dead');
    return ctx;
  }

  it('stale frames of the old incarnation never revive a dead peer', async () => {
    const { membership } = await deadPeer();
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 1 }), undefined, 'direct')).toBe(false);
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 0 }), undefined, 'relayed')).toBe(false);
    // A newer state of the same life is kept (it is data), but proves nothing about now.
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 2 }), undefined, 'relayed')).toBe(true);
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 3 }), undefined, 'direct')).toBe(true);
    expect(membership.get('a')).toMatchObject({ status: 'dead', version: { incarnation: 3, seq: 3 } });
    membership.heardFrom('a');
    membership.hintSuspected('a', 3);
    expect(membership.get('a')?.status).toBe('dead');
  });

  it('a higher incarnation (a restarted daemon) revives it', async () => {
    const { membership, events } = await deadPeer();
    expect(membership.observeState(makeState('a', { incarnation: 4, seq: 0 }), undefined, 'relayed')).toBe(true);
    expect(membership.get('a')?.status).toBe('alive');
    expect(events.filter((e) => e.type === 'status').at(-1)).toMatchObject({ type: 'status', peerId: 'a', status: 'alive' });
    expect(membership.falseSuspicions).toBe(0);
  });

  it('is not handed to pullers, and is forgotten after the retention period', async () => {
    const { membership, run, events } = await deadPeer();
    expect(membership.signedFrames()).toEqual([]);
    await run(57_000);
    expect(membership.get('a')?.status).toBe('dead');
    await run(5_000);
    expect(membership.get('a')).toBeUndefined();
    expect(events.at(-1)).toEqual({ type: 'removed', peerId: 'a', status: 'dead' });
  });

  it('is re-probed rarely, with backoff, and revived when it answers (a healed partition)', async () => {
    const { membership, run, prober } = await deadPeer();
    const probesBefore = prober.directCalls.length;
    await run(10_000);
    expect(prober.directCalls.length).toBe(probesBefore + 1); // after 10 s
    await run(19_000);
    expect(prober.directCalls.length).toBe(probesBefore + 1);
    await run(2_000);
    expect(prober.directCalls.length).toBe(probesBefore + 2); // then 20 s after that one failed
    prober.direct.set('a', 'yes');
    membership.hintConnected('a'); // a new connection re-probes at once
    await run(30);
    expect(membership.get('a')?.status).toBe('alive');
  });
});

describe('membership: relayed evidence and plumbing', () => {
  it('relayed copies of a state already held do not clear a suspicion', async () => {
    const { membership, run } = setup();
    const state = makeState('a', { seq: 1 });
    membership.observeState(state);
    for (let i = 0; i < 10; i++) {
      await run(200);
      membership.observeState(state, undefined, 'relayed');
    }
    expect(membership.get('a')?.status).toBe('dead');
  });

  it('a relayed state newer than anything heard does count as life', async () => {
    const { membership, run } = setup();
    membership.observeState(makeState('a', { seq: 1 }));
    await run(1_100);
    expect(membership.get('a')?.status).toBe('suspect');
    membership.observeState(makeState('a', { seq: 2 }), undefined, 'relayed');
    expect(membership.get('a')).toMatchObject({ status: 'alive', lastHeardMs: 1_100 });
  });

  it('a throwing listener neither breaks the table nor silences other listeners', () => {
    const { membership, events } = setup();
    membership.subscribe(() => {
      throw new Error('listener bug');
    });
    expect(membership.observeState(makeState('a'))).toBe(true);
    expect(events.some((e) => e.type === 'changed' && e.peerId === 'a')).toBe(true);
  });

  it('unsubscribe stops events; stop ends the detector', async () => {
    const { membership, run, prober } = setup();
    const seen: MembershipEvent[] = [];
    const unsubscribe = membership.subscribe((e) => seen.push(e));
    membership.observeState(makeState('a'));
    unsubscribe();
    membership.observeState(makeState('b'));
    expect(seen.map((e) => e.peerId)).toEqual(['a', 'a']);
    membership.stop();
    await run(10_000);
    expect(membership.get('a')?.status).toBe('alive');
    expect(prober.directCalls).toEqual([]);
  });

  it('refuses options that would break the detector', () => {
    const refusal = (overrides: Record<string, number>): unknown => {
      try {
        resolveGossipOptions(overrides);
        return undefined;
      } catch (err) {
        return err;
      }
    };
    const badOptions: Record<string, number>[] = [
      { probeIntervalMs: 0 },
      { indirectProbes: 1.5 },
      { heartbeatMs: 100 }, // no such option (any more): a typo must not pass silently
      { pullTimeoutMs: NaN },
      { deadReprobeMs: 10, deadReprobeMaxMs: 5 },
    ];
    for (const bad of badOptions) {
      expect(isFabricError(refusal(bad), 'BAD_INPUT'), JSON.stringify(bad)).toBe(true);
    }
    expect(resolveGossipOptions({ probeIntervalMs: 200 })).toEqual({ ...DEFAULT_GOSSIP_OPTIONS, probeIntervalMs: 200 });
  });
});
