import { describe, expect, test } from 'vitest';
import { SeededRng } from '../../src/core/index.ts';
import type { Entry } from '../../src/consensus/types.ts';
import { SimDisk } from './disk.ts';
import { InvariantChecker, InvariantViolation, quorum, type InvariantName } from './invariants.ts';
import { KvStore } from './kv.ts';

const conf = { voters: ['a', 'b', 'c'], learners: [] };

function entry(index: number, term: number, text = `e${index}t${term}`): Entry {
  return { index, term, type: 'normal', data: new TextEncoder().encode(text) };
}

function violation(fn: () => void): InvariantName | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof InvariantViolation) return err.invariant;
    throw err;
  }
  return undefined;
}

function disks(checker: InvariantChecker): Record<'a' | 'b' | 'c', SimDisk> {
  // Empty disks (no bootstrap entries), so that the tests write every entry themselves.
  const none = { voters: [], learners: [] };
  return { a: new SimDisk('a', none, checker), b: new SimDisk('b', none, checker), c: new SimDisk('c', none, checker) };
}

describe('InvariantChecker', () => {
  test('election safety: one leader per term, any number of terms', () => {
    const c = new InvariantChecker();
    c.observeLeader('a', 1);
    c.observeLeader('a', 1);
    c.observeLeader('b', 2);
    expect(violation(() => c.observeLeader('c', 2))).toBe('election safety');
  });

  test('log matching: the same index and term with a different prefix is caught', () => {
    const c = new InvariantChecker();
    const d = disks(c);
    d.a.append([entry(1, 1), entry(2, 1)]);
    d.b.append([entry(1, 1), entry(2, 1)]);
    // Same (index, term) at 2, but b's entry 1 differs: the prefixes disagree.
    expect(violation(() => d.c.append([entry(1, 1, 'other'), entry(2, 1)]))).toBe('log matching');
  });

  test('state machine safety: two different entries committed at one index', () => {
    const c = new InvariantChecker();
    const d = disks(c);
    d.a.append([entry(1, 1)]);
    d.b.append([entry(1, 2)]);
    c.committed('a', 1, 1, d.a.chainAt(1), false);
    c.committed('c', 1, 1, d.a.chainAt(1), true);
    expect(violation(() => c.committed('b', 2, 1, d.b.chainAt(1), true))).toBe('state machine safety');
    expect(violation(() => c.committed('b', 2, 5, undefined, false))).toBe('state machine safety');
    c.snapshotState('a', 1, 42);
    expect(violation(() => c.snapshotState('b', 1, 43))).toBe('state machine safety');
  });

  test('leader completeness: a later leader must hold what an earlier term committed', () => {
    const c = new InvariantChecker();
    const d = disks(c);
    d.a.append([entry(1, 1), entry(2, 1)]);
    d.b.append([entry(1, 1), entry(2, 1)]);
    c.committed('a', 1, 2, d.a.chainAt(2), false);
    d.c.append([entry(1, 1)]);
    // c leading term 2 without entry 2: caught. b leading term 2: fine.
    c.checkLeaderLog('b', 2, d.b);
    expect(violation(() => c.checkLeaderLog('c', 2, d.c))).toBe('leader completeness');
    // A leader of the same term that committed it is not held to it (it committed it itself).
    c.checkLeaderLog('c', 1, d.c);
  });

  test('durability: an acked write must survive a crash of the voters lacking it', () => {
    const c = new InvariantChecker();
    const d = disks(c);
    for (const disk of [d.a, d.b, d.c]) disk.append([entry(1, 1)]);
    c.acknowledged(1, d.a.chainAt(1)!, 'write w1');
    const diskOf = (id: string) => d[id as 'a' | 'b' | 'c'];
    // Written everywhere, synced nowhere: one crash of a quorum loses it.
    expect(violation(() => c.checkDurability(conf.voters, diskOf))).toBe('acknowledged write lost');
    d.a.sync();
    expect(violation(() => c.checkDurability(conf.voters, diskOf))).toBe('acknowledged write lost');
    d.b.sync();
    c.checkDurability(conf.voters, diskOf);
    // With a fourth voter added, two holders still meet every majority of four (3 of 4).
    c.checkDurability([...conf.voters, 'd'], diskOf);
    // A crash that keeps only what was synced does not change that.
    d.c.crash(new SeededRng(1));
    c.checkDurability(conf.voters, diskOf);
    expect(quorum(3)).toBe(2);
    expect(quorum(4)).toBe(3);
  });
});

describe('KvStore', () => {
  test('a retried request takes effect once and gets the first answer', () => {
    const kv = new KvStore();
    const first = kv.apply({ client: 'c', seq: 1, op: { kind: 'cas', key: 'k', expected: null, value: 'v1' } });
    expect(first).toMatchObject({ executed: true, result: { ok: true } });
    kv.apply({ client: 'd', seq: 1, op: { kind: 'put', key: 'k', value: 'v2' } });
    const retry = kv.apply({ client: 'c', seq: 1, op: { kind: 'cas', key: 'k', expected: null, value: 'v1' } });
    expect(retry).toMatchObject({ executed: false, result: { ok: true } });
    expect(kv.get('k')).toBe('v2');
    kv.apply({ client: 'c', seq: 2, op: { kind: 'put', key: 'k', value: 'v3' } });
    expect(kv.apply({ client: 'c', seq: 1, op: { kind: 'put', key: 'k', value: 'old' } }).result).toBeUndefined();
    expect(kv.get('k')).toBe('v3');
  });

  test('snapshots are deterministic and restore the sessions too', () => {
    const a = new KvStore();
    const b = new KvStore();
    a.apply({ client: 'c', seq: 1, op: { kind: 'put', key: 'x', value: '1' } });
    a.apply({ client: 'c', seq: 2, op: { kind: 'put', key: 'a', value: '2' } });
    b.apply({ client: 'c', seq: 1, op: { kind: 'put', key: 'a', value: '2' } });
    b.apply({ client: 'c', seq: 2, op: { kind: 'put', key: 'x', value: '1' } });
    b.apply({ client: 'c', seq: 2, op: { kind: 'put', key: 'a', value: '2' } });
    // Same data and sessions reached in another order: the same bytes.
    expect(a.snapshot()).toEqual(b.snapshot());
    const restored = KvStore.restore(a.snapshot());
    expect(restored.get('x')).toBe('1');
    expect(restored.apply({ client: 'c', seq: 2, op: { kind: 'put', key: 'x', value: 'again' } }).executed).toBe(false);
  });
});
