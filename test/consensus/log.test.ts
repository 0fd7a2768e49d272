import { describe, expect, test } from 'vitest';
import { RaftLog } from '../../src/consensus/log.ts';
import { MemoryStorage } from '../../src/consensus/memory-storage.ts';
import type { Entry } from '../../src/consensus/types.ts';

const entry = (term: number, index: number, data = 'xx'): Entry => ({ term, index, type: 'normal', data: new TextEncoder().encode(data) });
const positions = (entries: Entry[]) => entries.map((e) => `${e.term}/${e.index}`);

/** A log whose storage holds the given terms at indexes 1.. and nothing unstable. */
function logWith(terms: number[]): { log: RaftLog; storage: MemoryStorage } {
  const storage = new MemoryStorage();
  storage.append(terms.map((t, i) => entry(t, i + 1)));
  return { log: new RaftLog(storage, undefined), storage };
}

describe('RaftLog', () => {
  test('unstable entries follow storage; a conflicting append replaces the unstable suffix', () => {
    const { log } = logWith([1, 1]);
    log.append([entry(2, 3), entry(2, 4), entry(2, 5)]);
    expect(log.lastIndex()).toBe(5);
    expect(positions(log.unstable.nextEntries())).toEqual(['2/3', '2/4', '2/5']);
    log.append([entry(3, 4)]);
    expect(positions(log.slice(1, log.lastIndex() + 1))).toEqual(['1/1', '1/2', '2/3', '3/4']);
  });

  test('entries handed out in a Ready are not handed out again; stableTo ignores a replaced entry', () => {
    const { log } = logWith([1]);
    log.append([entry(1, 2), entry(1, 3)]);
    log.unstable.acceptInProgress();
    expect(log.unstable.nextEntries()).toEqual([]);
    // A new leader overwrites index 3 before the Ready is advanced.
    log.append([entry(2, 3)]);
    expect(positions(log.unstable.nextEntries())).toEqual(['2/3']);
    log.unstable.stableTo(3, 1); // the old entry at 3: ignored
    expect(log.unstable.offset).toBe(2);
    log.unstable.stableTo(3, 2);
    expect(log.unstable.entries).toEqual([]);
    expect(log.unstable.offset).toBe(4);
  });

  test('maybeAppend: checks the anchor, keeps matching entries, truncates at the first conflict, commits', () => {
    const { log } = logWith([1, 1, 2, 2]);
    expect(log.maybeAppend(4, 3, 4, [entry(3, 5)])).toBeUndefined(); // anchor term differs
    expect(log.maybeAppend(7, 2, 4, [])).toBeUndefined(); // beyond our log
    expect(log.maybeAppend(2, 1, 3, [entry(2, 3), entry(3, 4), entry(3, 5)])).toBe(5);
    expect(positions(log.slice(1, 6))).toEqual(['1/1', '1/2', '2/3', '3/4', '3/5']);
    expect(log.committed).toBe(3);
    // A shorter, older append that matches changes nothing (no truncation of 4..5).
    expect(log.maybeAppend(2, 1, 3, [entry(2, 3)])).toBe(3);
    expect(log.lastIndex()).toBe(5);
  });

  test('findConflictByTerm: the last index at or below `index` whose term is at most `term`', () => {
    const { log } = logWith([1, 1, 1, 4, 4, 5, 5, 6]);
    expect(log.findConflictByTerm(8, 4)).toEqual({ index: 5, term: 4 });
    expect(log.findConflictByTerm(8, 3)).toEqual({ index: 3, term: 1 });
    expect(log.findConflictByTerm(8, 6)).toEqual({ index: 8, term: 6 });
    expect(log.findConflictByTerm(8, 0)).toEqual({ index: 0, term: 0 });
  });

  test('findConflictByTerm answers "may match" below the compacted prefix', () => {
    const { log, storage } = logWith([1, 1, 3, 3]);
    storage.compact(2);
    const compacted = new RaftLog(storage, undefined);
    expect(compacted.findConflictByTerm(4, 2)).toEqual({ index: 2, term: 1 });
    expect(compacted.findConflictByTerm(1, 2)).toEqual({ index: 1, term: 0 });
    expect(log.firstIndex()).toBe(3);
  });

  test('isUpToDate compares last term, then length (§5.4.1)', () => {
    const { log } = logWith([1, 2, 2]);
    expect(log.isUpToDate(3, 2)).toBe(true);
    expect(log.isUpToDate(2, 2)).toBe(false);
    expect(log.isUpToDate(1, 3)).toBe(true);
    expect(log.isUpToDate(9, 1)).toBe(false);
  });

  test('maybeCommit only commits an index whose entry has the given term', () => {
    const { log } = logWith([1, 1, 2]);
    expect(log.maybeCommit(2, 2)).toBe(false);
    expect(log.maybeCommit(3, 2)).toBe(true);
    expect(log.committed).toBe(3);
  });

  test('slice spans storage and unstable entries and respects the size limit', () => {
    const { log } = logWith([1, 1]);
    log.append([entry(1, 3), entry(1, 4)]);
    expect(positions(log.slice(1, 5))).toEqual(['1/1', '1/2', '1/3', '1/4']);
    expect(positions(log.slice(2, 5, 4))).toEqual(['1/2', '1/3']);
    expect(positions(log.slice(1, 5, 0))).toEqual(['1/1']);
    expect(log.entriesFrom(5, 100)).toEqual([]);
  });

  test('committed entries go to the application once, in bounded batches, and wait for a pending snapshot', () => {
    const storage = new MemoryStorage();
    storage.append([entry(1, 1), entry(1, 2), entry(1, 3)]);
    const log = new RaftLog(storage, 4);
    log.commitTo(3);
    expect(positions(log.nextCommittedEntries())).toEqual(['1/1', '1/2']);
    log.acceptApplying(2);
    expect(positions(log.nextCommittedEntries())).toEqual(['1/3']);
    log.acceptApplying(3);
    expect(log.hasNextCommittedEntries()).toBe(false);
    log.appliedTo(3);
    log.restore({ metadata: { index: 9, term: 2, confState: { voters: ['1'], learners: [] } }, data: new Uint8Array(0) });
    expect(log.committed).toBe(9);
    expect(log.hasNextCommittedEntries()).toBe(false);
    expect(log.term(9)).toBe(2);
    expect(log.firstIndex()).toBe(10);
  });
});
