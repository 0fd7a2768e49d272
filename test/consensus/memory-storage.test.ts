import { describe, expect, test } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { MemoryStorage } from '../../src/consensus/memory-storage.ts';
import type { Entry } from '../../src/consensus/types.ts';

const bytes = (s: string) => new TextEncoder().encode(s);
const entry = (term: number, index: number, data = `${term}/${index}`): Entry => ({ term, index, type: 'normal', data: bytes(data) });
const positions = (entries: Entry[]) => entries.map((e) => `${e.term}/${e.index}`);

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isFabricError(err) ? err.code : 'OTHER';
  }
  return undefined;
}

describe('MemoryStorage', () => {
  test('a new storage is empty, holds the initial configuration and a zero hard state', () => {
    const s = new MemoryStorage({ confState: { voters: ['1', '2'], learners: ['3'] } });
    expect(s.firstIndex()).toBe(1);
    expect(s.lastIndex()).toBe(0);
    expect(s.term(0)).toBe(0);
    expect(s.initialState()).toEqual({ hardState: { term: 0, vote: null, commit: 0 }, confState: { voters: ['1', '2'], learners: ['3'] } });
  });

  test('append follows on, and replaces a conflicting suffix', () => {
    const s = new MemoryStorage();
    s.append([entry(1, 1), entry(1, 2), entry(1, 3)]);
    expect(positions(s.entries(1, 4))).toEqual(['1/1', '1/2', '1/3']);
    s.append([entry(2, 2)]);
    expect(positions(s.entries(1, 3))).toEqual(['1/1', '2/2']);
    expect(s.lastIndex()).toBe(2);
    s.append([entry(2, 3), entry(2, 4)]);
    expect(s.lastIndex()).toBe(4);
    expect(codeOf(() => s.append([entry(3, 9)]))).toBe('LOG_UNAVAILABLE');
  });

  test('entries are limited by size but always at least one', () => {
    const s = new MemoryStorage();
    s.append([entry(1, 1, 'aaaa'), entry(1, 2, 'bbbb'), entry(1, 3, 'cccc')]);
    expect(positions(s.entries(1, 4, 8))).toEqual(['1/1', '1/2']);
    expect(positions(s.entries(1, 4, 0))).toEqual(['1/1']);
    expect(positions(s.entries(1, 4))).toEqual(['1/1', '1/2', '1/3']);
    expect(codeOf(() => s.entries(1, 5))).toBe('LOG_UNAVAILABLE');
  });

  test('compaction keeps the term of the compacted index and refuses reads below it', () => {
    const s = new MemoryStorage();
    s.append([entry(1, 1), entry(2, 2), entry(2, 3), entry(3, 4)]);
    s.compact(2);
    expect(s.firstIndex()).toBe(3);
    expect(s.lastIndex()).toBe(4);
    expect(s.term(2)).toBe(2);
    expect(codeOf(() => s.term(1))).toBe('LOG_COMPACTED');
    expect(codeOf(() => s.entries(2, 4))).toBe('LOG_COMPACTED');
    expect(codeOf(() => s.compact(2))).toBe('LOG_COMPACTED');
    expect(codeOf(() => s.compact(9))).toBe('LOG_UNAVAILABLE');
    // Entries that the snapshot already covers are skipped on append.
    s.append([entry(2, 2), entry(2, 3), entry(4, 4), entry(4, 5)]);
    expect(positions(s.entries(3, 6))).toEqual(['2/3', '4/4', '4/5']);
  });

  test('createSnapshot records state and configuration at an index; applySnapshot replaces the log', () => {
    const s = new MemoryStorage({ confState: { voters: ['1'], learners: [] } });
    s.append([entry(1, 1), entry(1, 2), entry(2, 3)]);
    const snap = s.createSnapshot(2, { voters: ['1', '2'], learners: [] }, bytes('state@2'));
    expect(snap.metadata).toEqual({ index: 2, term: 1, confState: { voters: ['1', '2'], learners: [] } });
    expect(s.initialState().confState).toEqual({ voters: ['1', '2'], learners: [] });
    expect(codeOf(() => s.createSnapshot(2, { voters: ['1'], learners: [] }, bytes('')))).toBe('SNAPSHOT_OUT_OF_DATE');
    expect(codeOf(() => s.createSnapshot(7, { voters: ['1'], learners: [] }, bytes('')))).toBe('LOG_UNAVAILABLE');

    s.applySnapshot({ metadata: { index: 10, term: 4, confState: { voters: ['1', '2', '3'], learners: [] } }, data: bytes('state@10') });
    expect(s.firstIndex()).toBe(11);
    expect(s.lastIndex()).toBe(10);
    expect(s.term(10)).toBe(4);
    expect(new TextDecoder().decode(s.snapshot().data)).toBe('state@10');
    expect(codeOf(() => s.applySnapshot(snap))).toBe('SNAPSHOT_OUT_OF_DATE');
  });

  test('hard state round-trips and is copied, not shared', () => {
    const s = new MemoryStorage();
    const hs = { term: 3, vote: '2', commit: 0 };
    s.setHardState(hs);
    hs.term = 99;
    expect(s.initialState().hardState).toEqual({ term: 3, vote: '2', commit: 0 });
  });
});
