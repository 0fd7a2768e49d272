import { describe, expect, test } from 'vitest';
import { checkLinearizable, type KvInput, type KvOutput, type Operation } from './linearizability.ts';

/** op('a', 'k', put('1'), ok, 0, 10): a compact way to write histories. */
function op(client: string, input: KvInput, output: KvOutput, call: number, ret: number | undefined, key = 'k'): Operation {
  return { client, key, input, output, call, ret };
}
const put = (value: string): KvInput => ({ kind: 'put', value });
const get: KvInput = { kind: 'get' };
const cas = (expected: string | null, value: string): KvInput => ({ kind: 'cas', expected, value });
const putOk: KvOutput = { kind: 'put' };
const read = (value: string | null): KvOutput => ({ kind: 'get', value });
const casOut = (ok: boolean): KvOutput => ({ kind: 'cas', ok });
const unknown: KvOutput = { kind: 'unknown' };

describe('linearizability checker', () => {
  test('a sequential history is linearizable', () => {
    const h = [op('a', put('1'), putOk, 0, 1), op('b', get, read('1'), 2, 3), op('a', cas('1', '2'), casOut(true), 4, 5), op('b', get, read('2'), 6, 7)];
    expect(checkLinearizable(h).ok).toBe(true);
  });

  test('a read of the initial value before any write is fine; a read from nowhere is not', () => {
    expect(checkLinearizable([op('a', get, read(null), 0, 1)]).ok).toBe(true);
    expect(checkLinearizable([op('a', get, read('x'), 0, 1)]).ok).toBe(false);
  });

  test('concurrent operations may take effect in either order', () => {
    // put(1) and put(2) overlap; a later read may see either, but two later reads cannot go back.
    const base = [op('a', put('1'), putOk, 0, 10), op('b', put('2'), putOk, 1, 11)];
    expect(checkLinearizable([...base, op('c', get, read('1'), 12, 13)]).ok).toBe(true);
    expect(checkLinearizable([...base, op('c', get, read('2'), 12, 13)]).ok).toBe(true);
    expect(checkLinearizable([...base, op('c', get, read('2'), 12, 13), op('c', get, read('1'), 14, 15)]).ok).toBe(false);
  });

  test('a stale read after a completed write is caught (the classic lost-leader bug)', () => {
    const h = [op('a', put('1'), putOk, 0, 1), op('a', put('2'), putOk, 2, 3), op('b', get, read('1'), 4, 5)];
    const r = checkLinearizable(h);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.key).toBe('k');
  });

  test('a read that overlaps a write may see the old or the new value', () => {
    const h = [op('a', put('1'), putOk, 0, 1), op('a', put('2'), putOk, 2, 9), op('b', get, read('1'), 3, 4), op('c', get, read('2'), 5, 6)];
    expect(checkLinearizable(h).ok).toBe(true);
    // …but once a read saw the new value, a read that starts later cannot see the old one.
    const h2 = [...h, op('b', get, read('1'), 7, 8)];
    expect(checkLinearizable(h2).ok).toBe(false);
  });

  test('an unknown write may take effect late or never', () => {
    const never = [op('a', put('1'), putOk, 0, 1), op('b', put('2'), unknown, 2, undefined), op('c', get, read('1'), 3, 4)];
    expect(checkLinearizable(never).ok).toBe(true);
    const late = [...never, op('c', get, read('2'), 100, 101)];
    expect(checkLinearizable(late).ok).toBe(true);
    // It cannot take effect before it was called.
    const early = [op('c', get, read('2'), 0, 1), op('b', put('2'), unknown, 2, undefined)];
    expect(checkLinearizable(early).ok).toBe(false);
  });

  test('a failed operation took no effect', () => {
    const fail: KvOutput = { kind: 'fail' };
    expect(checkLinearizable([op('a', put('1'), fail, 0, 1), op('b', get, read(null), 2, 3)]).ok).toBe(true);
    expect(checkLinearizable([op('a', put('1'), fail, 0, 1), op('b', get, read('1'), 2, 3)]).ok).toBe(false);
  });

  test('compare-and-set results must agree with the register', () => {
    const good = [op('a', put('1'), putOk, 0, 1), op('b', cas('1', '2'), casOut(true), 2, 3), op('c', cas('1', '3'), casOut(false), 4, 5)];
    expect(checkLinearizable(good).ok).toBe(true);
    // Two compare-and-sets from the same value cannot both succeed: a write applied twice.
    const twice = [op('a', put('1'), putOk, 0, 1), op('b', cas('1', '2'), casOut(true), 2, 10), op('c', cas('1', '3'), casOut(true), 3, 11)];
    expect(checkLinearizable(twice).ok).toBe(false);
    // An unknown compare-and-set, if it ran, ran atomically against the value it found.
    const unknownCas = [op('a', put('1'), putOk, 0, 1), op('b', cas('1', '2'), unknown, 2, undefined), op('c', get, read('2'), 5, 6)];
    expect(checkLinearizable(unknownCas).ok).toBe(true);
    const impossible = [op('a', put('5'), putOk, 0, 1), op('b', cas('1', '2'), unknown, 2, undefined), op('c', get, read('2'), 5, 6)];
    expect(checkLinearizable(impossible).ok).toBe(false);
  });

  test('keys are independent (checked one register at a time)', () => {
    const h = [op('a', put('1'), putOk, 0, 1, 'x'), op('b', get, read(null), 2, 3, 'y'), op('b', get, read('1'), 4, 5, 'x')];
    const r = checkLinearizable(h);
    expect(r).toEqual({ ok: true, keys: 2, operations: 3 });
    const bad = [...h, op('b', get, read('1'), 6, 7, 'y')];
    const rb = checkLinearizable(bad);
    expect(rb.ok).toBe(false);
    if (!rb.ok) expect(rb.key).toBe('y');
  });

  test('a long history of many concurrent clients is checked quickly', () => {
    // Three clients, overlapping writes of distinct values, reads that see the latest committed value.
    const h: Operation[] = [];
    let t = 0;
    let value: string | null = null;
    for (let i = 0; i < 300; i++) {
      const start = t;
      // Each round: three overlapping operations; the write "takes effect" in the middle.
      const w = `v${i}`;
      h.push(op('a', put(w), putOk, start, start + 5));
      h.push(op('b', get, read(value), start + 1, start + 2));
      value = w;
      h.push(op('c', get, read(value), start + 3, start + 7));
      t = start + 8;
    }
    const began = Date.now();
    expect(checkLinearizable(h).ok).toBe(true);
    expect(Date.now() - began).toBeLessThan(2000);
  });

  test('a search that would explode stops at its budget and says so', () => {
    // Many overlapping writes and an impossible read at the end: every order must be tried.
    const h: Operation[] = [];
    for (let i = 0; i < 14; i++) h.push(op(`c${i}`, put(`v${i}`), putOk, i, 100 + i));
    h.push(op('r', get, read('nope'), 200, 201));
    const r = checkLinearizable(h, 1000);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(/budget/);
  });
});
