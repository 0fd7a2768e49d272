/**
 * The deterministic simulation in CI: seeds 1–250 here, and in sim-seeds.test.ts seeds 251–400
 * plus seeds 1–100 with empty joiners (vitest runs files in parallel, so the two halves share
 * the two cores); the same-seed-same-run check, and proof that the invariants catch a broken
 * driver.
 */
import { describe, expect, test } from 'vitest';
import type { DriverBug } from './driver.ts';
import { DEFAULT_STEPS, runSeed, runSeeds } from './run.ts';

describe('deterministic simulation', () => {
  test('seeds 1–125 keep every invariant', () => {
    expect(runSeeds(1, 125, { steps: DEFAULT_STEPS })).toEqual([]);
  });

  test('seeds 126–250 keep every invariant', () => {
    expect(runSeeds(126, 125, { steps: DEFAULT_STEPS })).toEqual([]);
  });

  test('the same seed replays the same run, traced or not; another seed makes another run', () => {
    const lines: string[] = [];
    const runs = [{ seed: 7 }, { seed: 7, log: (l: string) => lines.push(l) }, { seed: 8 }].map((o) => {
      const r = runSeed({ ...o, steps: 2000 });
      if (!r.ok) throw new Error(r.message);
      return { hash: r.report.traceHash, steps: r.report.steps, simMs: r.report.simMs, ops: r.report.operations };
    });
    expect(runs[1]).toEqual(runs[0]);
    expect(runs[2]!.hash).not.toBe(runs[0]!.hash);
    expect(lines.length).toBeGreaterThan(10);
  });

  // Each broken driver must be caught within a few hundred seeds: the checkers bite. (`forget-vote`
  // is caught too, by election safety, but needs a vote, a crash and a rival candidate in one
  // term: about one seed in 400, too slow for CI.)
  const bugs: [DriverBug, string, string][] = [
    ['send-before-persist', 'sends a Ready’s messages before its entries and hard state are durable', 'acknowledged write lost'],
    ['sync-lies', 'uses a disk whose fsync returns without making writes durable', 'acknowledged write lost'],
    ['ack-on-propose', 'answers a write once proposed, before it commits', 'linearizability'],
    ['local-reads', 'serves reads from its own state machine, without a read index', 'linearizability'],
  ];
  for (const [bug, what, invariant] of bugs) {
    test(`a driver that ${what} is caught (${invariant})`, () => {
      // Some seeds trip an assertion inside the core first (it sees the damage too); look for
      // the first seed that the named checker catches.
      let caughtAt: number | undefined;
      for (let seed = 1; seed <= 600 && caughtAt === undefined; seed++) {
        const r = runSeed({ seed, steps: DEFAULT_STEPS, bug });
        if (!r.ok && r.invariant === invariant) caughtAt = seed;
      }
      expect(caughtAt).toBeDefined();
    });
  }
});
