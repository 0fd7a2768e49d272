import { describe, expect, test } from 'vitest';
import { isFabricError, SeededRng } from '../../src/core/index.ts';
import type { Entry } from '../../src/consensus/types.ts';
import { decodeConfChange } from '../../src/consensus/conf-change.ts';
import { SimDisk, type LogObserver } from './disk.ts';
import { InvariantChecker } from './invariants.ts';

/** No bootstrap entries: the tests write every entry themselves. */
const conf = { voters: [], learners: [] };

function entry(index: number, term: number, text = `e${index}`): Entry {
  return { index, term, type: 'normal', data: new TextEncoder().encode(text) };
}

function observer(): LogObserver & { seen: Map<string, number> } {
  const seen = new Map<string, number>();
  return {
    seen,
    appended(_node, index, term, chain) {
      seen.set(`${index}/${term}`, chain);
    },
    chainOf(index, term) {
      return seen.get(`${index}/${term}`) ?? -1;
    },
  };
}

describe('SimDisk', () => {
  test('reads see unsynced writes; a crash keeps only what was synced (or a prefix of the rest)', () => {
    const rng = new SeededRng(1);
    const outcomes = new Set<number>();
    for (let i = 0; i < 50; i++) {
      const disk = new SimDisk('a', conf, observer());
      disk.append([entry(1, 1), entry(2, 1)]);
      disk.setHardState({ term: 1, vote: 'a', commit: 1 });
      disk.sync();
      disk.append([entry(3, 1)]);
      disk.setHardState({ term: 2, vote: 'b', commit: 2 });
      expect(disk.lastIndex()).toBe(3);
      expect(disk.initialState().hardState.term).toBe(2);
      const report = disk.crash(rng);
      outcomes.add(report.keptWrites);
      const hs = disk.initialState().hardState;
      if (report.keptWrites === 0) {
        expect(disk.lastIndex()).toBe(2);
        expect(hs).toEqual({ term: 1, vote: 'a', commit: 1 });
        expect(disk.entries(1, 3).map((e) => e.index)).toEqual([1, 2]);
      } else if (report.keptWrites === 1) {
        expect(disk.lastIndex()).toBe(3);
        expect(hs.term).toBe(1);
      } else {
        expect(hs).toEqual({ term: 2, vote: 'b', commit: 2 });
      }
      expect(disk.hasUnsynced()).toBe(false);
    }
    expect([...outcomes].sort()).toEqual([0, 1, 2]);
  });

  test("a founder's disk starts with the bootstrap entries durable and reported; an empty one with nothing", () => {
    const checker = new InvariantChecker();
    const founders = ['a', 'b'].map((id) => new SimDisk(id, { voters: ['b', 'a'], learners: [] }, checker));
    for (const disk of founders) {
      expect([disk.firstIndex(), disk.lastIndex()]).toEqual([1, 2]);
      expect(disk.entries(1, 3).map((e) => [e.term, e.type, decodeConfChange(e.data)])).toEqual([
        [1, 'conf-change', { type: 'add-voter', node: 'a' }],
        [1, 'conf-change', { type: 'add-voter', node: 'b' }],
      ]);
      expect(disk.initialState()).toEqual({ hardState: { term: 1, vote: null, commit: 2 }, confState: conf });
      // A crash right away keeps them: creation is durable.
      disk.crash(new SeededRng(1));
      expect(disk.lastIndex()).toBe(2);
      expect(disk.durablyHolds(2, disk.chainAt(2)!)).toBe(true);
    }
    // Both founders hold the same prefix (log matching holds between them).
    expect(founders[0]!.chainAt(2)).toBe(founders[1]!.chainAt(2));
    const joiner = new SimDisk('c', conf, checker);
    expect([joiner.lastIndex(), joiner.initialState().hardState]).toEqual([0, { term: 0, vote: null, commit: 0 }]);
  });

  test('the hard state is handed to the core as stored, even behind the log (the core repairs it at load)', () => {
    const disk = new SimDisk('a', conf, observer());
    disk.append([entry(1, 1)]);
    disk.setHardState({ term: 1, vote: 'a', commit: 1 });
    disk.sync();
    disk.applySnapshot({ metadata: { index: 5, term: 3, confState: conf }, data: new Uint8Array() });
    // What a crash that kept the snapshot but lost the hard state written after it leaves.
    expect(disk.initialState().hardState).toEqual({ term: 1, vote: 'a', commit: 1 });
  });

  test('a torn append keeps a prefix of its entries, never a gap or a later write', () => {
    const rng = new SeededRng(7);
    let torn = 0;
    for (let i = 0; i < 200; i++) {
      const disk = new SimDisk('a', conf, observer());
      disk.append([entry(1, 1)]);
      disk.sync();
      disk.append([entry(2, 1), entry(3, 1), entry(4, 1), entry(5, 1)]);
      disk.setHardState({ term: 1, vote: null, commit: 5 });
      const report = disk.crash(rng);
      const last = disk.lastIndex();
      if (report.tornKept > 0) {
        torn++;
        expect(last).toBe(1 + report.tornKept);
        // The hard state written after the torn append is lost with it.
        expect(disk.initialState().hardState.commit).toBe(0);
      }
      expect(last === 1 || last === 5 || report.tornKept > 0).toBe(true);
      expect(disk.initialState().hardState.commit <= last).toBe(true);
    }
    expect(torn).toBeGreaterThan(10);
  });

  test('with atomic syncs a crash keeps the unsynced writes whole or not at all', () => {
    const rng = new SeededRng(3);
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const disk = new SimDisk('a', conf, observer(), { atomicSyncs: true });
      disk.append([entry(1, 1)]);
      disk.setHardState({ term: 1, vote: 'a', commit: 1 });
      disk.sync();
      disk.append([entry(2, 2), entry(3, 2), entry(4, 2)]);
      disk.setHardState({ term: 2, vote: 'b', commit: 1 });
      const report = disk.crash(rng);
      const hs = disk.initialState().hardState;
      seen.add(`${disk.lastIndex()}/${hs.term}`);
      expect(report.tornKept).toBe(-1);
      // Entries of term 2 never survive without the hard state of term 2.
      expect([`1/1`, `4/2`]).toContain(`${disk.lastIndex()}/${hs.term}`);
    }
    expect(seen.size).toBe(2);
  });

  test('a conflicting append replaces the suffix and the chains follow', () => {
    const obs = observer();
    const disk = new SimDisk('a', conf, obs);
    disk.append([entry(1, 1), entry(2, 1), entry(3, 1)]);
    const before = disk.chainAt(3);
    disk.append([entry(2, 2, 'x'), entry(3, 2, 'y')]);
    expect(disk.term(2)).toBe(2);
    expect(disk.chainAt(3)).not.toBe(before);
    expect(disk.chainAt(1)).toBe(obs.seen.get('1/1'));
    expect(disk.chainAt(3)).toBe(obs.seen.get('3/2'));
    expect(() => disk.append([entry(5, 2)])).toThrow(/gap/);
  });

  test('snapshot, compaction and their errors behave like the core MemoryStorage', () => {
    const obs = observer();
    const disk = new SimDisk('a', conf, obs);
    disk.append([1, 2, 3, 4, 5].map((i) => entry(i, 1)));
    const snap = disk.createSnapshot(3, conf, new Uint8Array([9]));
    expect(snap.metadata).toEqual({ index: 3, term: 1, confState: conf });
    disk.compact(3);
    expect(disk.firstIndex()).toBe(4);
    expect(disk.term(3)).toBe(1);
    expect(disk.chainAt(3)).toBe(obs.seen.get('3/1'));
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return isFabricError(err) ? err.code : 'other';
      }
      return 'none';
    };
    expect(code(() => disk.entries(3, 5))).toBe('LOG_COMPACTED');
    expect(code(() => disk.term(2))).toBe('LOG_COMPACTED');
    expect(code(() => disk.term(6))).toBe('LOG_UNAVAILABLE');
    expect(code(() => disk.entries(4, 7))).toBe('LOG_UNAVAILABLE');
    expect(code(() => disk.createSnapshot(2, conf, new Uint8Array()))).toBe('SNAPSHOT_OUT_OF_DATE');
    expect(disk.entries(4, 6, 1).map((e) => e.index)).toEqual([4]);
    // A snapshot from the leader replaces the whole log.
    disk.applySnapshot({ metadata: { index: 9, term: 3, confState: conf }, data: new Uint8Array([1]) });
    expect([disk.firstIndex(), disk.lastIndex(), disk.term(9)]).toEqual([10, 9, 3]);
    expect(code(() => disk.applySnapshot({ metadata: { index: 8, term: 3, confState: conf }, data: new Uint8Array() }))).toBe('SNAPSHOT_OUT_OF_DATE');
  });

  test('durablyHolds follows what a crash would keep', () => {
    const disk = new SimDisk('a', conf, observer());
    disk.append([entry(1, 1), entry(2, 1)]);
    const chain2 = disk.chainAt(2)!;
    expect(disk.durablyHolds(2, chain2)).toBe(false);
    disk.sync();
    expect(disk.durablyHolds(2, chain2)).toBe(true);
    expect(disk.durablyHolds(2, chain2 + 1)).toBe(false);
  });

  test('a disk whose sync lies never makes anything durable', () => {
    const disk = new SimDisk('a', conf, observer(), { syncLies: true });
    disk.append([entry(1, 1)]);
    disk.sync();
    expect(disk.durablyHolds(1, disk.chainAt(1)!)).toBe(false);
  });
});
