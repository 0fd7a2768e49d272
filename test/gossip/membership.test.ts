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
  const membership = new Membership({ selfPeerId: 'self', clock, rng: new SeededRng(3), prober, options });
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
  const heartbeat = (peerId: string, incarnation = 1, seq = 0) =>
    membership.observeHeartbeat({ peerId, fabricId: 'fab-test', incarnation, seq });
  return { clock, prober, membership, events, run, heartbeat };
}

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

  it('a heartbeat asks for a pull only when it announces a newer version than the state held', () => {
    const { membership, heartbeat } = setup();
    expect(heartbeat('a', 1, 0)).toBe(true); // unknown peer: its state is wanted
    expect(membership.get('a')).toMatchObject({ status: 'alive', state: undefined });
    expect(heartbeat('a', 1, 0)).toBe(true); // still no state held
    membership.observeState(makeState('a', { incarnation: 1, seq: 0 }));
    expect(heartbeat('a', 1, 0)).toBe(false);
    expect(heartbeat('a', 1, 1)).toBe(true);
    expect(heartbeat('a', 0, 7)).toBe(false); // a previous life
    expect(membership.get('a')?.version).toEqual({ incarnation: 1, seq: 1 });
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
  it('a silent unreachable peer goes suspect after 1.5 s and dead within 2.6 s', async () => {
    const { membership, run, events, prober } = setup();
    membership.observeState(makeState('a'));
    await run(1_740);
    expect(membership.get('a')?.status).toBe('alive');
    await run(20); // the detector tick at 1750 finds 1750 ms of silence
    expect(membership.get('a')?.status).toBe('suspect');
    await run(780);
    expect(membership.get('a')?.status).toBe('suspect');
    await run(20);
    expect(membership.get('a')).toMatchObject({ status: 'dead', statusSinceMs: 2_550 });
    expect(events.filter((e) => e.type === 'status').map((e) => e.status)).toEqual(['alive', 'suspect', 'dead']);
    expect(membership.suspicions).toBe(1);
    expect(membership.falseSuspicions).toBe(0);
    expect(prober.directCalls).toEqual(['a', 'a']); // no helper alive: two direct probes, back to back
  });

  it('asks random alive peers to probe a suspect that misses the direct probe', async () => {
    const { membership, run, prober, heartbeat } = setup();
    membership.observeState(makeState('a'));
    for (let i = 0; i < 8; i++) {
      for (const h of ['h1', 'h2', 'h3', 'h4', 'h5']) heartbeat(h);
      await run(400);
    }
    expect(membership.get('a')?.status).toBe('dead');
    const helpers = new Set(prober.indirectCalls.map((c) => c.helper));
    expect(prober.indirectCalls.every((c) => c.target === 'a')).toBe(true);
    expect(prober.indirectCalls.length).toBe(DEFAULT_GOSSIP_OPTIONS.indirectProbes);
    expect(helpers.size).toBe(3);
    expect([...helpers].every((h) => h.startsWith('h'))).toBe(true);
  });

  it('a slow peer that misses heartbeats but answers probes is suspected, never declared dead', async () => {
    const { membership, run, prober } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'yes');
    await run(30_000);
    expect(membership.get('a')?.status).not.toBe('dead');
    expect(membership.suspicions).toBeGreaterThan(10);
    expect(membership.falseSuspicions).toBe(membership.suspicions);
    expect(prober.maxInFlight).toBe(1);
  });

  it('a peer reachable only through others is never declared dead', async () => {
    const { membership, run, prober, heartbeat } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'no');
    prober.indirect.set('h1', 'no');
    prober.indirect.set('h2', 'yes');
    let deadSeen = false;
    membership.subscribe((e) => (deadSeen ||= e.peerId === 'a' && e.status === 'dead'));
    for (let i = 0; i < 40; i++) {
      heartbeat('h1');
      heartbeat('h2');
      await run(500);
    }
    expect(deadSeen).toBe(false);
    expect(membership.falseSuspicions).toBeGreaterThan(0);
    expect(prober.indirectCalls.some((c) => c.helper === 'h2')).toBe(true);
  });

  it('a suspect heard from again is alive, and the suspicion counted as false', async () => {
    const { membership, run, heartbeat } = setup();
    heartbeat('a');
    await run(1_800);
    expect(membership.get('a')?.status).toBe('suspect');
    heartbeat('a');
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.falseSuspicions).toBe(1);
    await run(1_000); // the probe round still in flight fails, but cannot kill a peer heard since
    expect(membership.get('a')?.status).toBe('alive');
  });

  it('a disconnect hint starts suspicion at once and an unreachable peer dies quickly', async () => {
    const { membership, run } = setup();
    membership.observeState(makeState('a'));
    await run(100);
    membership.hintDisconnected('a');
    expect(membership.get('a')?.status).toBe('suspect');
    await run(810);
    expect(membership.get('a')?.status).toBe('dead');
    membership.hintDisconnected('nobody'); // unknown peers are ignored
    membership.hintDisconnected('self');
    expect(membership.get('self')?.status).toBe('alive');
  });

  it('a disconnect hint for a peer that still answers ends as a false suspicion', async () => {
    const { membership, run, prober } = setup();
    membership.observeState(makeState('a'));
    prober.direct.set('a', 'yes');
    membership.hintDisconnected('a');
    await run(50);
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.falseSuspicions).toBe(1);
  });
});

describe('membership: dead peers', () => {
  async function deadPeer() {
    const ctx = setup({ deadRetentionMs: 60_000, deadReprobeMs: 10_000, deadReprobeMaxMs: 40_000 });
    ctx.membership.observeState(makeState('a', { incarnation: 3, seq: 1 }));
    await ctx.run(3_000);
    expect(ctx.membership.get('a')?.status).toBe('dead');
    return ctx;
  }

  it('stale frames of the old incarnation never revive a dead peer', async () => {
    const { membership, heartbeat } = await deadPeer();
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 1 }), undefined, 'direct')).toBe(false);
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 0 }), undefined, 'relayed')).toBe(false);
    heartbeat('a', 3, 1);
    // A newer state of the same life is kept (it is data), but proves nothing about now.
    expect(membership.observeState(makeState('a', { incarnation: 3, seq: 2 }), undefined, 'relayed')).toBe(true);
    expect(membership.get('a')).toMatchObject({ status: 'dead', version: { incarnation: 3, seq: 2 } });
  });

  it('a higher incarnation (a restarted daemon) revives it', async () => {
    const { membership, heartbeat, events } = await deadPeer();
    expect(heartbeat('a', 4, 0)).toBe(true); // alive again, and its new state is wanted
    expect(membership.get('a')?.status).toBe('alive');
    expect(events.at(-1)).toMatchObject({ type: 'status', peerId: 'a', status: 'alive' });
    expect(membership.falseSuspicions).toBe(0);
  });

  it('is not handed to pullers, and is forgotten after the retention period', async () => {
    const { membership, run, events } = await deadPeer();
    expect(membership.signedFrames()).toEqual([]);
    await run(55_000);
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
  it('relayed copies of a state already held do not keep a silent peer alive', async () => {
    const { membership, run } = setup();
    const state = makeState('a', { seq: 1 });
    membership.observeState(state);
    for (let i = 0; i < 6; i++) {
      await run(500);
      membership.observeState(state, undefined, 'relayed');
    }
    expect(membership.get('a')?.status).toBe('dead');
  });

  it('a relayed state newer than anything heard does count as life', async () => {
    const { membership, run } = setup();
    membership.observeState(makeState('a', { seq: 1 }));
    await run(1_000);
    membership.observeState(makeState('a', { seq: 2 }), undefined, 'relayed');
    await run(1_000);
    expect(membership.get('a')?.status).toBe('alive');
    expect(membership.get('a')?.lastHeardMs).toBe(1_000);
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
    const { membership, run } = setup();
    const seen: MembershipEvent[] = [];
    const unsubscribe = membership.subscribe((e) => seen.push(e));
    membership.observeState(makeState('a'));
    unsubscribe();
    membership.observeState(makeState('b'));
    expect(seen.map((e) => e.peerId)).toEqual(['a', 'a']);
    membership.stop();
    await run(10_000);
    expect(membership.get('a')?.status).toBe('alive');
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
      { suspectAfterMs: 400 },
      { indirectProbes: 1.5 },
      { heartbeatMS: 100 },
      { pullTimeoutMs: NaN },
    ];
    for (const bad of badOptions) {
      expect(isFabricError(refusal(bad), 'BAD_INPUT'), JSON.stringify(bad)).toBe(true);
    }
    expect(resolveGossipOptions({ heartbeatMs: 200 })).toEqual({ ...DEFAULT_GOSSIP_OPTIONS, heartbeatMs: 200 });
  });
});
