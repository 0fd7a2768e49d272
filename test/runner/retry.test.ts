import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { SeededRng } from '../../src/core/index.ts';
import { backoffDelay, decideRetry, DEFAULT_RETRY_POLICY, NO_RETRY, RetryPolicySchema, type RetryPolicy } from '../../src/runner/index.ts';

const exact: RetryPolicy = { maxAttempts: 5, backoffBaseMs: 1000, backoffCapMs: 6000, backoffFactor: 2, jitter: false };

describe('retry policy', () => {
  test('backoff doubles from the base and stops at the cap', () => {
    const rng = new SeededRng(1);
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(exact, n, rng))).toEqual([1000, 2000, 4000, 6000, 6000]);
  });

  test('with jitter every delay lies in [delay/2, delay]', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 0, max: 2 ** 31 }), (attempt, seed) => {
        const policy = { ...exact, jitter: true };
        const full = backoffDelay(exact, attempt, new SeededRng(seed));
        const d = backoffDelay(policy, attempt, new SeededRng(seed));
        return d >= Math.floor(full / 2) && d <= full;
      }),
    );
  });

  test('a huge attempt number does not overflow past the cap', () => {
    expect(backoffDelay({ ...exact, backoffFactor: 16 }, 10_000, new SeededRng(3))).toBe(6000);
  });

  test('failures retry until maxAttempts; a command that cannot start never does', () => {
    const rng = new SeededRng(2);
    expect(decideRetry(exact, 1, 'exit-code', rng)).toEqual({ retry: true, delayMs: 1000 });
    expect(decideRetry(exact, 4, 'signal', rng)).toEqual({ retry: true, delayMs: 6000 });
    expect(decideRetry(exact, 5, 'exit-code', rng)).toEqual({ retry: false, why: 'all 5 attempts failed' });
    expect(decideRetry(exact, 1, 'spawn-failed', rng)).toMatchObject({ retry: false });
    expect(decideRetry(exact, 1, 'supervisor-lost', rng)).toMatchObject({ retry: true });
    expect(decideRetry(NO_RETRY, 1, 'exit-code', rng)).toEqual({ retry: false, why: 'no retries asked for' });
  });

  test('the schema fills defaults and refuses nonsense from a job spec', () => {
    expect(RetryPolicySchema.parse({ maxAttempts: 2 })).toEqual({ ...DEFAULT_RETRY_POLICY, maxAttempts: 2 });
    expect(RetryPolicySchema.safeParse({ maxAttempts: 0 }).success).toBe(false);
    expect(RetryPolicySchema.safeParse({ backoffBaseMs: -1 }).success).toBe(false);
  });
});
