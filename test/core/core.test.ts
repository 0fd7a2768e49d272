import { describe, expect, test } from 'vitest';
import { ManualClock, SeededRng } from '../../src/core/index.ts';

describe('SeededRng', () => {
  test('the same seed gives the same sequence, another seed another one', () => {
    const a = new SeededRng(42);
    const b = new SeededRng(42);
    const c = new SeededRng(43);
    const sa = Array.from({ length: 20 }, () => a.next());
    expect(Array.from({ length: 20 }, () => b.next())).toEqual(sa);
    expect(Array.from({ length: 20 }, () => c.next())).not.toEqual(sa);
    for (const x of sa) expect(x >= 0 && x < 1).toBe(true);
  });

  test('int, shuffle and sample stay in range and keep every item', () => {
    const r = new SeededRng(7);
    const counts = new Array(5).fill(0) as number[];
    for (let i = 0; i < 5000; i++) counts[r.int(5)]!++;
    for (const n of counts) expect(n).toBeGreaterThan(800);
    const items = [1, 2, 3, 4, 5, 6, 7, 8];
    expect([...r.shuffle([...items])].sort()).toEqual(items);
    const s = r.sample(items, 3);
    expect(new Set(s).size).toBe(3);
    expect(r.sample(items, 20)).toHaveLength(8);
  });
});

describe('ManualClock', () => {
  test('fires due timers in time order, cancelled ones never', () => {
    const clock = new ManualClock(1000);
    const fired: string[] = [];
    clock.setTimer(30, () => fired.push('c'));
    clock.setTimer(10, () => fired.push('a'));
    const t = clock.setTimer(20, () => fired.push('x'));
    clock.setTimer(10, () => {
      fired.push('b');
      clock.setTimer(5, () => fired.push('nested'));
    });
    t.cancel();
    clock.advance(16);
    expect(fired).toEqual(['a', 'b', 'nested']);
    expect(clock.now()).toBe(1016);
    clock.advance(100);
    expect(fired).toEqual(['a', 'b', 'nested', 'c']);
    expect(clock.pendingTimers()).toBe(0);
  });
});
