import { describe, expect, test } from 'vitest';
import { Inflights, Progress, ProgressTracker } from '../../src/consensus/progress.ts';

describe('Inflights', () => {
  test('a ring buffer: fills, frees up to an index, wraps around', () => {
    const inf = new Inflights(3);
    inf.add(5);
    inf.add(7);
    inf.add(9);
    expect(inf.full()).toBe(true);
    expect(() => inf.add(10)).toThrow(RangeError);
    inf.freeLE(6);
    expect(inf.count).toBe(2);
    inf.add(11); // wraps
    inf.freeLE(4); // nothing at or below 4
    expect(inf.count).toBe(3);
    inf.freeLE(9);
    expect(inf.count).toBe(1);
    inf.freeLE(100);
    expect(inf.count).toBe(0);
    inf.add(12);
    expect(inf.count).toBe(1);
  });
});

describe('Progress', () => {
  test('replicate: appends advance next optimistically and fill the window', () => {
    const pr = new Progress(5, 2, false);
    pr.match = 4;
    pr.becomeReplicate();
    pr.sentEntries(2, 6);
    expect(pr.next).toBe(7);
    expect(pr.isPaused()).toBe(false);
    pr.sentEntries(1, 7);
    expect(pr.isPaused()).toBe(true);
    expect(pr.maybeUpdate(6)).toBe(true);
    pr.inflights.freeLE(6);
    expect(pr.isPaused()).toBe(false);
  });

  test('probe: one append at a time; a rejection for another index is stale', () => {
    const pr = new Progress(10, 4, false);
    pr.sentEntries(1, 10);
    expect(pr.isPaused()).toBe(true);
    expect(pr.maybeDecrTo(7, 3)).toBe(false); // not the probe we sent (next-1 = 9)
    expect(pr.maybeDecrTo(9, 3)).toBe(true);
    expect(pr.next).toBe(4); // the hint: the follower may match up to 3
    expect(pr.isPaused()).toBe(false);
  });

  test('replicate: a rejection at or below match is stale; otherwise fall back to match+1', () => {
    const pr = new Progress(10, 4, false);
    pr.match = 6;
    pr.becomeReplicate();
    pr.sentEntries(3, 9);
    expect(pr.maybeDecrTo(5, 0)).toBe(false);
    expect(pr.maybeDecrTo(8, 0)).toBe(true);
    expect(pr.next).toBe(7);
  });

  test('snapshot: paused, rejections ignored, probing resumes above the snapshot', () => {
    const pr = new Progress(3, 4, false);
    pr.match = 2;
    pr.becomeSnapshot(20);
    expect(pr.isPaused()).toBe(true);
    expect(pr.maybeDecrTo(20, 2)).toBe(false);
    pr.becomeProbe();
    expect(pr.next).toBe(21);
  });

  test('canBumpCommit: only when the peer may hold entries beyond the commit it was told', () => {
    const pr = new Progress(8, 4, false);
    pr.sentCommit = 5;
    expect(pr.canBumpCommit(7)).toBe(true);
    expect(pr.canBumpCommit(5)).toBe(false);
    pr.sentCommit = 7;
    expect(pr.canBumpCommit(9)).toBe(false); // already told everything up to next-1
  });
});

describe('ProgressTracker', () => {
  const tracker = () => ProgressTracker.fromConfState({ voters: ['1', '2', '3'], learners: ['4'] }, 8, 10);

  test('committed is the highest index a majority of voters holds; learners do not count', () => {
    const t = tracker();
    const set = (id: string, match: number) => (t.progress.get(id)!.match = match);
    set('1', 9);
    set('2', 7);
    set('3', 3);
    set('4', 100);
    expect(t.committed()).toBe(7);
    expect(t.quorum()).toBe(2);
  });

  test('votes: the first answer of each voter counts; a majority wins or loses', () => {
    const t = tracker();
    t.recordVote('1', true);
    expect(t.tallyVotes().result).toBe('pending');
    t.recordVote('2', false);
    t.recordVote('2', true); // ignored
    t.recordVote('4', true); // a learner
    expect(t.tallyVotes()).toEqual({ granted: 1, rejected: 1, result: 'pending' });
    t.recordVote('3', false);
    expect(t.tallyVotes().result).toBe('lost');
  });

  test('single-step changes: promote a learner, demote and remove voters, never the last one', () => {
    const t = tracker();
    t.progress.get('4')!.match = 9;
    t.apply({ type: 'add-voter', node: '4' }, 10);
    expect(t.confState()).toEqual({ voters: ['1', '2', '3', '4'], learners: [] });
    expect(t.progress.get('4')!.match).toBe(9); // kept its progress
    t.apply({ type: 'add-learner', node: '2' }, 10);
    expect(t.confState()).toEqual({ voters: ['1', '3', '4'], learners: ['2'] });
    t.apply({ type: 'remove-voter', node: '2' }, 10);
    t.apply({ type: 'remove-voter', node: '3' }, 10);
    t.apply({ type: 'remove-voter', node: '4' }, 10);
    expect(t.confState()).toEqual({ voters: ['1'], learners: [] });
    expect(t.refusal({ type: 'remove-voter', node: '1' })).toMatch(/no voter/);
    t.apply({ type: 'remove-voter', node: '1' }, 10);
    expect(t.confState().voters).toEqual(['1']);
    t.apply({ type: 'add-voter', node: '5' }, 10);
    expect(t.progress.get('5')).toMatchObject({ next: 10, match: 0, recentActive: true });
  });

  test('quorumActive counts voters heard from', () => {
    const t = tracker();
    for (const pr of t.progress.values()) pr.recentActive = false;
    t.progress.get('1')!.recentActive = true;
    t.progress.get('4')!.recentActive = true;
    expect(t.quorumActive()).toBe(false);
    t.progress.get('3')!.recentActive = true;
    expect(t.quorumActive()).toBe(true);
  });
});
