import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { ManualClock, SeededRng, isFabricError } from '../../src/core/index.ts';
import { encodeState, encodeSuspicion } from '../../src/gossip/codec.ts';
import type { MembershipEvent } from '../../src/gossip/membership.ts';
import type { GossipTransport } from '../../src/gossip/ports.ts';
import { GossipService } from '../../src/gossip/service.ts';
import { FABRIC_ID, KeyRing, TestFabric, flush, makeState } from './mem-transport.ts';

const packr = new Packr({ useRecords: false });

/** Every live node's view of `target`. */
function viewsOf(fabric: TestFabric, target: string): (string | undefined)[] {
  return [...fabric.services.keys()].filter((id) => id !== target).map((id) => fabric.statusSeenBy(id, target));
}

function totalStats(fabric: TestFabric) {
  const all = [...fabric.services.values()].map((s) => s.stats());
  return {
    droppedFrames: all.reduce((n, s) => n + s.droppedFrames, 0),
    suspicions: all.reduce((n, s) => n + s.suspicions, 0),
    falseSuspicions: all.reduce((n, s) => n + s.falseSuspicions, 0),
  };
}

describe('gossip service: dissemination', () => {
  it('spreads an own-state change to every peer at once, and the newest version wins', async () => {
    const fabric = new TestFabric({ seed: 1 });
    const ids = await fabric.addNodes(5);
    await fabric.run(1_000);
    const oldFrame = fabric.node('n0').handlePullRequest().find((f) => packr.unpack(packr.unpack(f).p).peerId === 'n2')!;

    const updated = await fabric.node('n2').updateSelf((draft) => {
      draft.load.allocatedDevices = ['GPU-n2-0'];
    });
    expect(updated).toMatchObject({ seq: 1, incarnation: 1, updatedAtMs: 1_700_000_000_000 + fabric.clock.now() });
    await fabric.run(20);
    for (const id of ids) {
      expect(fabric.node(id).membership.get('n2')?.state).toMatchObject({ seq: 1, load: { allocatedDevices: ['GPU-n2-0'] } });
    }

    // A stale frame arriving late (reordered, or replayed) changes nothing.
    const changes: MembershipEvent[] = [];
    fabric.node('n1').subscribe((e) => changes.push(e));
    await fabric.node('n1').handleBroadcast(oldFrame, 'n3');
    expect(fabric.node('n1').membership.get('n2')?.state?.seq).toBe(1);
    expect(changes).toEqual([]);
  });

  it('gives a newcomer the full view at once through one anti-entropy pull', async () => {
    const fabric = new TestFabric({ seed: 2 });
    await fabric.addNodes(6);
    await fabric.run(2_000);
    await fabric.addNode('late', { connectTo: ['n3'] });
    await fabric.run(20); // one pull round trip (2 × 5 ms) and a little
    const view = fabric.node('late').membership.list();
    expect(view.map((m) => m.peerId)).toEqual(['late', 'n0', 'n1', 'n2', 'n3', 'n4', 'n5']);
    expect(view.every((m) => m.status === 'alive' && m.state?.inventory.devices.length === 1)).toBe(true);
    // ...and every old member learnt of the newcomer from its first broadcast.
    for (const id of ['n0', 'n1', 'n2', 'n4', 'n5']) expect(fabric.statusSeenBy(id, 'late')).toBe('alive');
  });

  it('checks signatures only of pulled frames that could change something', async () => {
    const fabric = new TestFabric({ seed: 20 });
    await fabric.addNodes(6);
    await fabric.run(600);
    // A peer that ignores the digest and answers with all 6 states, all known to n1.
    const n2 = fabric.node('n2');
    const fullAnswer = n2.handlePullRequest.bind(n2);
    n2.handlePullRequest = () => fullAnswer();
    const before = fabric.keys.verifications;
    fabric.node('n1').peerConnected('n2');
    await fabric.run(20);
    expect(fabric.keys.verifications - before).toBe(1); // only n2's own frame, which proves nothing new either
    // A forged "newer" claim is not skipped: it is checked, and refused.
    const forged = await encodeState(makeState('n3', { seq: 50 }), fabric.keys.signerFor('n4'));
    const n5 = fabric.node('n5');
    const realAnswer = n5.handlePullRequest.bind(n5);
    n5.handlePullRequest = (have) => [...realAnswer(have), forged];
    const dropsBefore = fabric.node('n1').stats().droppedFrames;
    fabric.node('n1').peerConnected('n5');
    await fabric.run(20);
    expect(fabric.node('n1').stats().droppedFrames - dropsBefore).toBe(1);
    expect(fabric.node('n1').membership.get('n3')?.state?.seq).toBe(0);
  });

  it('an anti-entropy pull carries only the states the puller lacks', async () => {
    const fabric = new TestFabric({ seed: 3 });
    await fabric.addNodes(8);
    await fabric.run(1_000);
    let carried = fabric.net.framesPulled;
    void fabric.node('n1').peerConnected('n5'); // both hold all 8 states: nothing to carry
    await fabric.run(20);
    expect(fabric.net.pullsBy('n1')).toBeGreaterThan(0);
    expect(fabric.net.framesPulled - carried).toBe(0);
    fabric.net.muteBroadcasts('n2'); // n1 will hear of the change only by pulling it
    await fabric.node('n2').updateSelf((draft) => {
      draft.labels.extra = { rack: 'r7' };
    });
    fabric.net.muteBroadcasts('n2', false);
    carried = fabric.net.framesPulled;
    void fabric.node('n1').peerConnected('n2');
    await fabric.run(20);
    expect(fabric.net.framesPulled - carried).toBe(1);
    expect(fabric.node('n1').membership.get('n2')?.state?.labels.extra).toEqual({ rack: 'r7' });
  });

  it('repairs a missed update through periodic anti-entropy relayed by a third peer', async () => {
    const fabric = new TestFabric({ seed: 4 });
    await fabric.addNodes(4);
    await fabric.run(1_000);
    fabric.net.cut('n1', 'n2');
    await fabric.node('n2').updateSelf((draft) => {
      draft.labels.zone = 'eu-2';
    });
    // Anti-entropy every 5 s from a random peer: n0 or n3 hands it over (n2 is out of reach).
    await fabric.runUntil(() => fabric.node('n1').membership.get('n2')?.state?.labels.zone === 'eu-2', 30_000);
    // n1 cannot reach n2 directly, yet through its helpers knows it is alive.
    expect(fabric.statusSeenBy('n1', 'n2')).not.toBe('dead');
  });
});

describe('gossip service: failure detection across the fabric', () => {
  it('a hung peer is found by round-robin probing, and the announced suspicion makes it dead everywhere', async () => {
    const fabric = new TestFabric({ seed: 5 });
    await fabric.addNodes(6);
    await fabric.run(3_000);
    fabric.kill('n4'); // silence: no connection closes, nothing is refused
    const suspectedAfter = await fabric.runUntil(() => viewsOf(fabric, 'n4').some((s) => s === 'suspect'), 3_000);
    // Some peer probes it within a pass of 5 peers (1.25 s).
    expect(suspectedAfter).toBeGreaterThanOrEqual(400); // at least the indirect probes' deadline
    expect(suspectedAfter).toBeLessThanOrEqual(1_250 + 1_600 + 20); // two silent rounds
    // The others probe at once on the announcement: dead everywhere three silent rounds later.
    const deadAfter = suspectedAfter + (await fabric.runUntil(() => viewsOf(fabric, 'n4').every((s) => s === 'dead'), 4_000));
    expect(deadAfter - suspectedAfter).toBeLessThanOrEqual(2_400 + 50);
    expect(totalStats(fabric).falseSuspicions).toBe(0);
    // Everyone still agrees much later, and nobody else was ever suspected.
    await fabric.run(10_000);
    expect(viewsOf(fabric, 'n4').every((s) => s === 'dead')).toBe(true);
    for (const id of ['n0', 'n1', 'n2', 'n3', 'n5']) expect(viewsOf(fabric, id).every((s) => s === 'alive')).toBe(true);
    expect(totalStats(fabric).suspicions).toBe(5);
  });

  it('a crashed peer (connections closed, port refusing) is dead everywhere within a second', async () => {
    const fabric = new TestFabric({ seed: 6 });
    await fabric.addNodes(4);
    await fabric.run(2_000);
    fabric.crash('n3');
    const deadAfter = await fabric.runUntil(() => viewsOf(fabric, 'n3').every((s) => s === 'dead'), 3_000);
    expect(deadAfter).toBeLessThanOrEqual(1_000);
    expect(totalStats(fabric).falseSuspicions).toBe(0);
  });

  it('probing grows with the fabric as n, and a quiet fabric broadcasts nothing', async () => {
    const fabric = new TestFabric({ seed: 21 });
    await fabric.addNodes(16);
    await fabric.run(2_000);
    const probes = fabric.net.probesSent;
    const deliveries = fabric.net.broadcastsDelivered;
    await fabric.run(10_000);
    // One probe per node per 250 ms period: 16 × 40, not 16 × 15 per period as all-to-all would be.
    expect(fabric.net.probesSent - probes).toBeGreaterThanOrEqual(16 * 38);
    expect(fabric.net.probesSent - probes).toBeLessThanOrEqual(16 * 41);
    expect(fabric.net.broadcastsDelivered - deliveries).toBe(0);
    expect(totalStats(fabric).suspicions).toBe(0);
  });

  it('a peer whose broadcasts are all lost but which answers probes is never suspected', async () => {
    const fabric = new TestFabric({ seed: 7 });
    await fabric.addNodes(5);
    await fabric.run(1_000);
    fabric.net.muteBroadcasts('n2');
    await fabric.run(20_000);
    expect(totalStats(fabric).suspicions).toBe(0);
    expect(viewsOf(fabric, 'n2').every((s) => s === 'alive')).toBe(true);
  });

  it('a peer that only answers indirect probes is never suspected', async () => {
    const fabric = new TestFabric({ seed: 8 });
    await fabric.addNodes(5);
    await fabric.run(1_000);
    fabric.net.cut('n0', 'n3'); // n0 neither hears nor reaches n3; the others do
    await fabric.run(20_000);
    expect(fabric.node('n0').stats().suspicions).toBe(0);
    for (const id of ['n0', 'n1', 'n2', 'n4']) expect(fabric.statusSeenBy(id, 'n3')).toBe('alive');
  });

  it('heavy random loss (40% of broadcasts and direct probes) causes suspicions at most, no deaths', async () => {
    const fabric = new TestFabric({ seed: 9 });
    const ids = await fabric.addNodes(6);
    await fabric.run(1_000);
    fabric.net.setLossEverywhere(0.4);
    await fabric.run(30_000);
    for (const id of ids) expect(viewsOf(fabric, id).every((s) => s !== 'dead')).toBe(true);
    expect(totalStats(fabric).suspicions).toBeGreaterThan(0);
    fabric.net.setLossEverywhere(0);
    await fabric.run(2_000); // suspicions still open end as soon as a probe gets through
    expect(totalStats(fabric).falseSuspicions).toBe(totalStats(fabric).suspicions);
  });

  it('an announcement about a live peer costs a probe and changes nothing', async () => {
    const fabric = new TestFabric({ seed: 22 });
    await fabric.addNodes(4);
    await fabric.run(1_000);
    const probes = fabric.net.probesSent;
    const notice = await encodeSuspicion({ peerId: 'n1', fabricId: FABRIC_ID, target: 'n2', incarnation: 1 }, fabric.keys.signerFor('n1'));
    await fabric.node('n0').handleBroadcast(notice, 'n1');
    expect(fabric.net.probesSent - probes).toBe(1);
    await fabric.node('n2').handleBroadcast(notice, 'n1'); // about ourselves: nothing to do
    await fabric.run(2_000);
    expect(totalStats(fabric).suspicions).toBe(0);
    // A notice signed by someone else than the announcer it names is refused.
    const forged = await encodeSuspicion({ peerId: 'n1', fabricId: FABRIC_ID, target: 'n2', incarnation: 1 }, fabric.keys.signerFor('n3'));
    await fabric.node('n0').handleBroadcast(forged, 'n3');
    expect(fabric.node('n0').stats().droppedFrames).toBe(1);
  });
});

describe('gossip service: restarts and partitions', () => {
  it('a restarted peer (higher incarnation) is alive again; frames of its old life never revive it', async () => {
    const fabric = new TestFabric({ seed: 10 });
    await fabric.addNodes(4);
    await fabric.run(1_000);
    const oldStateFrame = fabric.node('n3').handlePullRequest().find((f) => packr.unpack(packr.unpack(f).p).peerId === 'n3')!;
    fabric.kill('n3');
    await fabric.runUntil(() => viewsOf(fabric, 'n3').every((s) => s === 'dead'), 8_000);

    // Old-life frames: a late broadcast, a newer state of the same incarnation relayed by another.
    const oldLifeNewer = await encodeState(makeState('n3', { incarnation: 1, seq: 5 }), fabric.keys.signerFor('n3'));
    const revivals: string[] = [];
    for (const id of ['n0', 'n1', 'n2']) {
      fabric.node(id).subscribe((e) => e.peerId === 'n3' && e.type === 'status' && revivals.push(`${id}:${e.status}`));
      await fabric.node(id).handleBroadcast(oldStateFrame, 'n3');
      await fabric.node(id).handleBroadcast(oldLifeNewer, 'n2');
    }
    expect(viewsOf(fabric, 'n3')).toEqual(['dead', 'dead', 'dead']);
    await fabric.run(3_000);
    expect(viewsOf(fabric, 'n3')).toEqual(['dead', 'dead', 'dead']);
    expect(revivals).toEqual([]);
    expect(fabric.node('n0').handlePullRequest()).toHaveLength(3); // the dead peer's frame is not handed out

    await fabric.addNode('n3', { incarnation: 2, connectTo: ['n0'] });
    await fabric.run(50);
    expect(viewsOf(fabric, 'n3')).toEqual(['alive', 'alive', 'alive']);
    for (const id of ['n0', 'n1', 'n2']) expect(fabric.node(id).membership.get('n3')?.state?.incarnation).toBe(2);
    await fabric.run(10_000);
    expect(viewsOf(fabric, 'n3')).toEqual(['alive', 'alive', 'alive']);
  });

  it('after a partition heals, both sides find each other alive again', async () => {
    const fabric = new TestFabric({ seed: 11 });
    await fabric.addNodes(4);
    await fabric.run(1_000);
    fabric.net.partition(['n0', 'n1'], ['n2', 'n3']);
    await fabric.run(4_000);
    expect(fabric.statusSeenBy('n0', 'n2')).toBe('dead');
    expect(fabric.statusSeenBy('n3', 'n1')).toBe('dead');
    fabric.net.healAll();
    // No connection events at all: the periodic re-probe of dead peers is enough.
    await fabric.runUntil(() => ['n0', 'n1', 'n2', 'n3'].every((id) => viewsOf(fabric, id).every((s) => s === 'alive')), 12_000);
  });
});

describe('gossip service: hostile and broken input', () => {
  it('drops a state that claims another peer\'s identity, and counts it', async () => {
    const fabric = new TestFabric({ seed: 12 });
    await fabric.addNodes(3);
    await fabric.run(600);
    const forged = await encodeState(makeState('n1', { seq: 99, labels: { spot: true, extra: {} } }), fabric.keys.signerFor('n2'));
    await fabric.node('n0').handleBroadcast(forged, 'n2');
    expect(fabric.node('n0').membership.get('n1')?.state?.seq).toBe(0);
    expect(fabric.node('n0').stats().droppedFrames).toBe(1);
  });

  it('ignores frames that claim to be us', async () => {
    const fabric = new TestFabric({ seed: 13 });
    await fabric.addNodes(2);
    const fake = await encodeState(makeState('n0', { seq: 40 }), fabric.keys.signerFor('n0'));
    await fabric.node('n1').handleBroadcast(fake, 'n0'); // valid for n1...
    await fabric.node('n0').handleBroadcast(fake, 'n1'); // ...but n0 alone speaks for n0
    expect(fabric.node('n0').selfState().seq).toBe(0);
    expect(fabric.node('n0').membership.get('n0')?.version.seq).toBe(0);
  });

  it('handleBroadcast never rejects, whatever arrives, and counts every refusal', async () => {
    const fabric = new TestFabric({ seed: 14 });
    await fabric.addNodes(3);
    await fabric.run(600);
    const service = fabric.node('n0');
    const valid = await encodeState(makeState('n1', { seq: 0 }), fabric.keys.signerFor('n1'));
    const input = fc.oneof(
      fc.uint8Array({ maxLength: 1024 }),
      fc.anything().map((v) => {
        try {
          return new Uint8Array(packr.pack(v));
        } catch {
          return new Uint8Array([0xc1]);
        }
      }),
      fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })).map(([at, byte]) => {
        const copy = new Uint8Array(valid);
        copy[at % copy.length] = byte;
        return copy;
      }),
      fc.constant(new Uint8Array(300 * 1024)),
      fc.constant(null as unknown as Uint8Array),
    );
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(input, async (bytes) => {
        sent++;
        await expect(service.handleBroadcast(bytes, 'n2')).resolves.toBeUndefined();
      }),
      { numRuns: 300 },
    );
    const dropped = service.stats().droppedFrames;
    expect(dropped).toBeGreaterThan(sent * 0.8); // only no-op mutations of the valid frame pass
    expect(service.membership.get('n1')?.state?.seq).toBe(0);
    await fabric.run(3_000);
    expect(viewsOf(fabric, 'n1').every((s) => s === 'alive')).toBe(true);
  });

  it('survives a transport that throws, rejects or returns junk', async () => {
    const clock = new ManualClock(0);
    const keys = new KeyRing();
    const broken: GossipTransport = {
      broadcast: () => {
        throw new Error('socket closed');
      },
      pull: async () => ['junk' as unknown as Uint8Array, new Uint8Array([1, 2, 3])],
      probe: async () => Promise.reject(new Error('dial failed')),
      probeVia: () => {
        throw new Error('no route');
      },
    };
    const service = new GossipService({
      self: { peerId: 'solo', fabricId: FABRIC_ID },
      initialState: makeState('solo'),
      clock,
      rng: new SeededRng(1),
      transport: broken,
      sign: keys.signerFor('solo'),
      verify: keys.verify,
      wallNow: () => 0,
    });
    await service.start();
    await service.peerConnected('other');
    expect(service.stats().droppedFrames).toBe(2);
    const otherState = await encodeState(makeState('other'), keys.signerFor('other'));
    await service.handleBroadcast(otherState, 'other');
    for (let t = 0; t < 5_000; t += 10) {
      clock.advance(10);
      await flush();
    }
    expect(service.membership.get('other')?.status).toBe('dead');
    expect(await service.handleProbeVia('other', new AbortController().signal)).toBe(false);
    service.stop();
  });
});

describe('gossip service: own state and lifecycle', () => {
  it('bumps seq per update in order, and refuses an invalid update without changing state', async () => {
    const fabric = new TestFabric({ seed: 15 });
    await fabric.addNodes(2);
    const n0 = fabric.node('n0');
    const [a, b] = await Promise.all([
      n0.updateSelf((d) => {
        d.labels.zone = 'z1';
      }),
      n0.updateSelf((d) => ({ ...d, labels: { ...d.labels, region: 'r1' } })),
    ]);
    expect([a.seq, b.seq]).toEqual([1, 2]);
    expect(b.labels).toMatchObject({ zone: 'z1', region: 'r1' });
    await expect(
      n0.updateSelf((d) => {
        d.load.cpuPct = -5;
      }),
    ).rejects.toSatisfy((err) => isFabricError(err, 'BAD_INPUT'));
    // Identity and version fields are the service's, not the mutator's.
    const c = await n0.updateSelf((d) => ({ ...d, peerId: 'someone-else', seq: 1_000, incarnation: 9 }));
    expect(c).toMatchObject({ peerId: 'n0', seq: 3, incarnation: 1 });
    await fabric.run(20);
    expect(fabric.node('n1').membership.get('n0')?.state).toMatchObject({ seq: 3, labels: { zone: 'z1', region: 'r1' } });
  });

  it('rebroadcasts an unchanged state every 30 s, each broadcast distinct byte for byte', async () => {
    const fabric = new TestFabric({ seed: 16 });
    await fabric.addNodes(2);
    const kinds: string[] = [];
    const distinctFrames = new Set<string>();
    const n1 = fabric.node('n1');
    const original = n1.handleBroadcast.bind(n1);
    n1.handleBroadcast = async (bytes, from) => {
      if (from === 'n0') {
        kinds.push(packr.unpack(bytes).t);
        distinctFrames.add(Buffer.from(bytes).toString('base64'));
      }
      return original(bytes, from);
    };
    await fabric.run(60_010); // full states leave at 30 s and 60 s, arriving 5 ms later
    expect(kinds).toEqual(['state', 'state']);
    await fabric.run(10_000);
    await fabric.node('n0').updateSelf((d) => {
      d.labels.zone = 'z9';
    });
    await fabric.run(25_000); // a change is a broadcast: the next repeat waits 30 s from it
    expect(kinds).toEqual(['state', 'state', 'state']);
    await fabric.run(5_100);
    expect(kinds).toEqual(['state', 'state', 'state', 'state']);
    // gossipsub drops byte-identical messages for minutes: no two broadcasts may repeat.
    expect(distinctFrames.size).toBe(kinds.length);
    expect(n1.membership.get('n0')?.status).toBe('alive');
  });

  it('stop() leaves no timer behind', async () => {
    const fabric = new TestFabric({ seed: 17 });
    await fabric.addNodes(4);
    await fabric.run(3_000);
    fabric.node('n1').peerDisconnected('n2');
    for (const service of fabric.services.values()) service.stop();
    await fabric.run(1_000);
    expect(fabric.clock.pendingTimers()).toBe(0);
  });
});
