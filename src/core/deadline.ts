import { FabricError } from './errors.ts';

/**
 * Runs `fn` with a signal that aborts after `ms`, and clears the timer as soon as `fn` settles.
 * Why not `AbortSignal.timeout`: its timer stays until it expires and then builds a DOMException
 * for a request that ended long before; a leader serving thousands of requests a second spent
 * a measurable share of its time on those.
 */
export async function withDeadline<T>(ms: number, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new FabricError('TIMEOUT', `no answer within ${ms} ms`)), ms);
  try {
    return await fn(controller.signal);
  } finally {
    clearTimeout(timer);
  }
}
