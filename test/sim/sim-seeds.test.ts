/**
 * The rest of CI's 500 simulation seeds (see sim.test.ts), in its own file to run in parallel:
 * default seeds 251–400, and seeds 1–100 with empty joiners (nodes added later start with no
 * configuration at all, as the daemon's joiners do, and learn it from the log they replicate).
 */
import { describe, expect, test } from 'vitest';
import { DEFAULT_STEPS, runSeeds } from './run.ts';

describe('deterministic simulation (continued)', () => {
  test('seeds 251–400 keep every invariant', () => {
    expect(runSeeds(251, 150, { steps: DEFAULT_STEPS })).toEqual([]);
  });

  test('seeds 1–100 with empty joiners keep every invariant', () => {
    expect(runSeeds(1, 100, { steps: DEFAULT_STEPS, joiners: 'empty' })).toEqual([]);
  });
});
