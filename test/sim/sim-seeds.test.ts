/** The second half of CI's 500 simulation seeds (see sim.test.ts), in its own file to run in parallel. */
import { describe, expect, test } from 'vitest';
import { DEFAULT_STEPS, runSeeds } from './run.ts';

describe('deterministic simulation (continued)', () => {
  test('seeds 251–375 keep every invariant', () => {
    expect(runSeeds(251, 125, { steps: DEFAULT_STEPS })).toEqual([]);
  });

  test('seeds 376–500 keep every invariant', () => {
    expect(runSeeds(376, 125, { steps: DEFAULT_STEPS })).toEqual([]);
  });
});
