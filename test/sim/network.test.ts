import { describe, expect, test } from 'vitest';
import { SeededRng } from '../../src/core/index.ts';
import { SimNetwork } from './network.ts';
import { Scheduler } from './scheduler.ts';

function setup(seed = 1) {
  const scheduler = new Scheduler();
  const got: { at: number; from: string; to: string; msg: { n: number } }[] = [];
  const net = new SimNetwork<{ n: number }>(
    scheduler,
    new SeededRng(seed),
    (from, to, msg) => got.push({ at: scheduler.now(), from, to, msg }),
    (m) => ({ ...m }),
  );
  const drain = () => {
    while (scheduler.runNext());
  };
  return { scheduler, net, got, drain };
}

describe('Scheduler', () => {
  test('jumps to the next event in time order, ties in insertion order, skipping cancelled ones', () => {
    const s = new Scheduler();
    const order: string[] = [];
    s.setTimer(50, () => order.push('c'));
    s.setTimer(10, () => order.push('a'));
    s.setTimer(10, () => order.push('b'));
    const t = s.setTimer(20, () => order.push('x'));
    s.setTimer(30, () => s.setTimer(0, () => order.push(`nested@${s.now()}`)));
    t.cancel();
    expect(s.pending()).toBe(4);
    expect(s.peekTime()).toBe(10);
    while (s.runNext());
    expect(order).toEqual(['a', 'b', 'nested@30', 'c']);
    expect(s.now()).toBe(50);
    expect(s.pending()).toBe(0);
  });
});

describe('SimNetwork', () => {
  test('delivers copies after a latency within bounds, and reorders', () => {
    const { net, got, drain } = setup();
    net.setFaults({ dropRate: 0, duplicateRate: 0, minLatencyMs: 1, maxLatencyMs: 50, spikeRate: 0, spikeMaxMs: 0 });
    const sent = Array.from({ length: 100 }, (_, n) => ({ n }));
    for (const m of sent) net.send('a', 'b', m);
    drain();
    expect(got).toHaveLength(100);
    expect(got.every((g) => g.at >= 1 && g.at <= 50)).toBe(true);
    expect(got[0]!.msg).not.toBe(sent[got[0]!.msg.n]);
    const order = got.map((g) => g.msg.n);
    expect(order).not.toEqual([...order].sort((x, y) => x - y));
  });

  test('drops and duplicates at the configured rates', () => {
    const { net, got, drain } = setup(3);
    net.setFaults({ dropRate: 0.2, duplicateRate: 0.1, minLatencyMs: 1, maxLatencyMs: 5, spikeRate: 0, spikeMaxMs: 0 });
    for (let n = 0; n < 2000; n++) net.send('a', 'b', { n });
    drain();
    expect(net.stats.dropped).toBeGreaterThan(300);
    expect(net.stats.dropped).toBeLessThan(500);
    expect(net.stats.duplicated).toBeGreaterThan(100);
    expect(got.length).toBe(2000 - net.stats.dropped + net.stats.duplicated);
  });

  test('a partition cuts messages between groups, also those in flight; heal restores them', () => {
    const { net, got, drain } = setup();
    net.send('a', 'c', { n: 0 }); // in flight when the partition comes
    net.partition([['a', 'b'], ['c']]);
    net.send('a', 'b', { n: 1 });
    net.send('a', 'c', { n: 2 });
    net.send('client', 'c', { n: 3 }); // endpoints outside every group reach all
    drain();
    expect(got.map((g) => g.msg.n).sort()).toEqual([1, 3]);
    expect(net.describePartition()).toBe('a,b | c');
    net.heal();
    net.send('a', 'c', { n: 4 });
    drain();
    expect(got.map((g) => g.msg.n)).toContain(4);
  });

  test('a one-way cut stops one direction only, and tells the sender', () => {
    const { net, got, drain } = setup();
    const outcomes: boolean[] = [];
    net.cutOneWay('a', 'b');
    net.send('a', 'b', { n: 1 }, (ok) => outcomes.push(ok));
    net.send('b', 'a', { n: 2 }, (ok) => outcomes.push(ok));
    drain();
    expect(got.map((g) => g.msg.n)).toEqual([2]);
    expect(outcomes).toEqual([false, true]);
    expect(net.describePartition()).toBe('a-/->b');
    net.heal();
    expect(net.isPartitioned()).toBe(false);
  });

  test('the same seed gives the same deliveries', () => {
    const run = (seed: number) => {
      const { net, got, drain } = setup(seed);
      net.setFaults({ dropRate: 0.1, duplicateRate: 0.1, minLatencyMs: 1, maxLatencyMs: 30, spikeRate: 0.1, spikeMaxMs: 200 });
      for (let n = 0; n < 200; n++) net.send('a', n % 2 ? 'b' : 'c', { n });
      drain();
      return got.map((g) => `${g.at}:${g.to}:${g.msg.n}`).join(' ');
    };
    expect(run(5)).toBe(run(5));
    expect(run(5)).not.toBe(run(6));
  });
});
