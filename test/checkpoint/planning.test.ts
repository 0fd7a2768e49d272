/** Replica choice, collection and restore planning: the pure decisions of the checkpoint layer. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_CHUNKING,
  ManifestBuilder,
  chooseCheckpointsToDrop,
  chooseChunksToDelete,
  chooseReplicas,
  planFetch,
  restoreOrder,
  type CheckpointRecord,
  type ChunkRef,
  type ReplicaCandidate,
} from '../../src/checkpoint/index.ts';
import { sha256 } from './util.ts';

const id = (s: string): string => sha256(s);
const GiB = 1024 ** 3;

function cand(peerId: string, zone: string | undefined, heldBytes = 0, freeBytes: number | undefined = 100 * GiB): ReplicaCandidate {
  return { peerId, zone, heldBytes, freeBytes };
}

describe('restoreOrder', () => {
  it('orders the holders the same way whatever order they come in, once each, and spreads jobs over them', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 6 }), fc.string(), (holders, jobId) => {
        const order = restoreOrder(jobId, holders);
        expect([...order].sort()).toEqual([...holders].sort());
        expect(restoreOrder(jobId, [...holders].reverse())).toEqual(order);
        expect(restoreOrder(jobId, [...holders, ...holders])).toEqual(order);
      }),
    );
    // Jobs of one host: each holder comes first for some of them.
    const firsts = new Set(Array.from({ length: 64 }, (_, i) => restoreOrder(`job-${i}`, ['p1', 'p2', 'p3'])[0]));
    expect(firsts).toEqual(new Set(['p1', 'p2', 'p3']));
  });
});

describe('chooseReplicas', () => {
  const writer = { peerId: 'w', zone: 'eu-1' };

  it('picks R peers in zones other than the writer, one per zone first', () => {
    const r = chooseReplicas({
      writer,
      candidates: [cand('a1', 'eu-1'), cand('b1', 'us-1'), cand('b2', 'us-1'), cand('c1', 'ap-1')],
      replicas: 2,
      checkpointBytes: GiB,
    });
    expect(r.holders.sort()).toEqual(['b1', 'c1']);
    expect(r.shortfall).toBe(0);
  });

  it('prefers a peer that already holds most of the checkpoint, then the one with more free disk', () => {
    const r = chooseReplicas({
      writer,
      candidates: [cand('b1', 'us-1', 0, 500 * GiB), cand('b2', 'us-1', GiB / 2, 10 * GiB), cand('c1', 'ap-1', 0, 50 * GiB), cand('c2', 'ap-1', 0, 80 * GiB)],
      replicas: 2,
      checkpointBytes: GiB,
    });
    expect(r.holders).toEqual(['b2', 'c2']);
  });

  it('falls back to the writer zone, excludes peers without room, and reports the shortfall', () => {
    const r = chooseReplicas({
      writer,
      candidates: [cand('w', 'eu-1'), cand('a1', 'eu-1'), cand('full', 'us-1', 0, GiB / 2), cand('near-full', 'us-1', GiB / 2, GiB / 2 + 10)],
      replicas: 3,
      checkpointBytes: GiB,
      reserveBytes: 100,
    });
    expect(r.holders).toEqual(['a1']);
    expect(r.excluded.map((e) => e.peerId).sort()).toEqual(['full', 'near-full']);
    expect(r.shortfall).toBe(2);
  });

  it('puts peers of unknown zone after known other zones and before the writer zone', () => {
    const r = chooseReplicas({ writer, candidates: [cand('same', 'eu-1'), cand('unknown', undefined), cand('other', 'us-1')], replicas: 3, checkpointBytes: GiB });
    expect(r.holders).toEqual(['other', 'unknown', 'same']);
  });

  it('is deterministic: the order of candidates does not matter', () => {
    const zones = ['eu-1', 'us-1', 'ap-1', undefined];
    const candidates = fc.uniqueArray(
      fc.record({ peerId: fc.stringMatching(/^p[0-9]{1,3}$/), z: fc.integer({ min: 0, max: 3 }), held: fc.integer({ min: 0, max: 4 }), free: fc.option(fc.integer({ min: 0, max: 8 })) }),
      { selector: (c) => c.peerId, maxLength: 12 },
    );
    fc.assert(
      fc.property(candidates, fc.integer({ min: 0, max: 5 }), (list, R) => {
        const cs = list.map((c) => cand(c.peerId, zones[c.z], c.held * (GiB / 4), c.free === null ? undefined : c.free * (GiB / 2)));
        const a = chooseReplicas({ writer, candidates: cs, replicas: R, checkpointBytes: GiB });
        const b = chooseReplicas({ writer, candidates: [...cs].reverse(), replicas: R, checkpointBytes: GiB });
        expect(b.holders).toEqual(a.holders);
        expect(a.holders.length + a.shortfall).toBe(R);
        expect(new Set(a.holders).size).toBe(a.holders.length);
        expect(a.holders).not.toContain('w');
        // as many distinct other zones as there are to have
        const otherZones = new Set(cs.filter((c) => !a.excluded.some((e) => e.peerId === c.peerId) && c.zone !== undefined && c.zone !== writer.zone).map((c) => c.zone));
        const chosenZones = new Set(a.holders.map((h) => cs.find((c) => c.peerId === h)!.zone).filter((z) => z !== undefined && z !== writer.zone));
        expect(chosenZones.size).toBe(Math.min(R, otherZones.size));
      }),
      { numRuns: 300 },
    );
  });
});

describe('checkpoint collection', () => {
  const rec = (jobId: string, step: number, seq: number, m = `${jobId}-${step}-${seq}`): CheckpointRecord => ({ jobId, manifestId: id(m), step, seq });

  it('keeps the newest K per job by step, then by commit order', () => {
    const records = [rec('a', 1, 1), rec('a', 3, 2), rec('a', 2, 3), rec('b', 5, 4), rec('a', 3, 5)];
    const out = chooseCheckpointsToDrop(records, 2);
    expect(out.keep.map((r) => [r.jobId, r.step, r.seq])).toEqual([
      ['a', 3, 5],
      ['a', 3, 2],
      ['b', 5, 4],
    ]);
    expect(out.drop.map((r) => [r.step, r.seq])).toEqual([
      [2, 3],
      [1, 1],
    ]);
    expect(chooseCheckpointsToDrop(records, 0).keep).toEqual([]);
  });

  it('never drops a manifest that a kept record names', () => {
    const out = chooseCheckpointsToDrop([rec('a', 9, 1, 'same'), rec('a', 1, 2, 'same'), rec('a', 0, 3)], 1);
    expect(out.keep.map((r) => r.manifestId)).toEqual([id('same')]);
    expect(out.drop.map((r) => r.manifestId)).toEqual([id('a-0-3')]);
  });

  it('deletes only chunks no kept manifest uses, and never protected ones', () => {
    const b1 = new ManifestBuilder();
    b1.addFile('f', 0o644, [
      [id('shared'), 10],
      [id('new'), 10],
    ]);
    const kept = b1.build({ jobId: 'a', step: 2, epoch: 1, chunking: DEFAULT_CHUNKING });
    const held = ['shared', 'new', 'old', 'inflight'].map(id);
    expect(chooseChunksToDelete(held, [kept], new Set([id('inflight')]))).toEqual([id('old')]);
    expect(chooseChunksToDelete(held, []).sort()).toEqual([...held].sort());
  });
});

describe('restore planning', () => {
  const refs = (n: number, size = (i: number) => 1000 + i): ChunkRef[] => Array.from({ length: n }, (_, i) => [id(`c${i}`), size(i)]);
  const all = (peerId: string) => ({ peerId, has: () => true });

  it('spreads chunks over every holder in about equal bytes, in manifest order per holder', () => {
    const need = refs(30);
    const plan = planFetch(need, [all('h1'), all('h2'), all('h3')]);
    expect([...plan.assignments.keys()].sort()).toEqual(['h1', 'h2', 'h3']);
    const loads = [...plan.load.values()];
    expect(Math.max(...loads) - Math.min(...loads)).toBeLessThanOrEqual(1029);
    const order = new Map(need.map(([c], i) => [c, i]));
    for (const list of plan.assignments.values()) {
      const idx = list.map(([c]) => order.get(c)!);
      expect(idx).toEqual([...idx].sort((a, b) => a - b));
    }
    expect(plan.unavailable).toEqual([]);
  });

  it('gives each chunk its other holders as fallbacks and reports chunks nobody has', () => {
    const need = refs(4);
    const has = (ids: number[]) => (c: string) => ids.some((i) => id(`c${i}`) === c);
    const plan = planFetch(need, [
      { peerId: 'a', has: has([0, 1]) },
      { peerId: 'b', has: has([1, 2]) },
    ]);
    expect(plan.unavailable.map(([c]) => c)).toEqual([id('c3')]);
    expect(plan.assignments.get('a')!.map(([c]) => c)).toContain(id('c0'));
    expect(plan.assignments.get('b')!.map(([c]) => c)).toContain(id('c2'));
    const c1Holder = plan.assignments.get('a')!.some(([c]) => c === id('c1')) ? 'a' : 'b';
    expect(plan.fallbacks.get(id('c1'))).toEqual([c1Holder === 'a' ? 'b' : 'a']);
    expect(plan.fallbacks.get(id('c0'))).toEqual([]);
  });

  it('assigns every available chunk exactly once, to a holder that has it', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 10_000 }), { minLength: 0, maxLength: 40 }),
        fc.array(fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }), { minLength: 1, maxLength: 4 }),
        (sizes, holdings) => {
          const need = sizes.map((s, i) => [id(`x${i}`), s] as ChunkRef);
          const index = new Map(need.map(([c], i) => [c, i]));
          const holders = holdings.map((h, k) => ({ peerId: `h${k}`, has: (c: string) => h[index.get(c)!] === true }));
          const plan = planFetch(need, holders);
          const assigned = [...plan.assignments].flatMap(([peer, list]) => list.map(([c]) => ({ peer, c })));
          expect(assigned.length + plan.unavailable.length).toBe(need.length);
          expect(new Set(assigned.map((a) => a.c)).size).toBe(assigned.length);
          for (const a of assigned) expect(holders.find((h) => h.peerId === a.peer)!.has(a.c)).toBe(true);
          for (const [c] of plan.unavailable) expect(holders.some((h) => h.has(c))).toBe(false);
          for (const [c, alts] of plan.fallbacks) for (const p of alts) expect(holders.find((h) => h.peerId === p)!.has(c)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });
});
