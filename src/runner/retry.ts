/**
 * Retry policy: how often a failed job runs again and how long it waits first. Exponential
 * backoff with "equal jitter" (half the delay fixed, half random), capped, so that many jobs
 * failing together (a bad shared file system) do not come back in lockstep.
 *
 * Only failures retry. A job that succeeded, was cancelled, was lost with its host, or was
 * stopped to be placed again is never retried here; nor is a command that could not start at
 * all (not found, not executable, no such working directory), because running it again cannot help.
 */
import { z } from 'zod';
import type { Rng } from '../core/index.ts';

export const RetryPolicySchema = z.object({
  /** Attempts in all, the first included: 1 means never retry. */
  maxAttempts: z.number().int().min(1).max(1000).default(3),
  /** Wait before the first retry. */
  backoffBaseMs: z.number().int().min(0).max(3_600_000).default(1000),
  /** Longest wait between attempts. */
  backoffCapMs: z.number().int().min(0).max(24 * 3_600_000).default(60_000),
  /** Growth of the wait per failed attempt. */
  backoffFactor: z.number().min(1).max(16).default(2),
  /** Spread the wait over [delay/2, delay] at random. */
  jitter: z.boolean().default(true),
});
export type RetryPolicy = z.infer<typeof RetryPolicySchema>;

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = RetryPolicySchema.parse({});

/** Never retry: what a job that did not ask for retries gets. */
export const NO_RETRY: Readonly<RetryPolicy> = { ...DEFAULT_RETRY_POLICY, maxAttempts: 1 };

/** How an attempt ended, as far as retrying is concerned. */
export type AttemptFailure = 'exit-code' | 'signal' | 'spawn-failed' | 'supervisor-lost' | 'prepare-failed';

export type RetryDecision = { retry: true; delayMs: number } | { retry: false; why: string };

/** The wait before attempt `failedAttempt + 1`, given that attempt `failedAttempt` (1-based) failed. */
export function backoffDelay(policy: RetryPolicy, failedAttempt: number, rng: Rng): number {
  const exponent = Math.max(0, failedAttempt - 1);
  const raw = policy.backoffBaseMs * policy.backoffFactor ** exponent;
  const capped = Math.min(policy.backoffCapMs, Number.isFinite(raw) ? raw : policy.backoffCapMs);
  if (!policy.jitter) return Math.round(capped);
  return Math.round(capped / 2 + rng.next() * (capped / 2));
}

/** Whether attempt `failedAttempt` (1-based), which failed as `failure`, is followed by another. */
export function decideRetry(policy: RetryPolicy, failedAttempt: number, failure: AttemptFailure, rng: Rng): RetryDecision {
  if (failure === 'spawn-failed') return { retry: false, why: 'the command could not be started' };
  if (failedAttempt >= policy.maxAttempts) {
    return { retry: false, why: policy.maxAttempts === 1 ? 'no retries asked for' : `all ${policy.maxAttempts} attempts failed` };
  }
  return { retry: true, delayMs: backoffDelay(policy, failedAttempt, rng) };
}
