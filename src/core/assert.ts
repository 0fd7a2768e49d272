import { FabricError } from './errors.ts';

/** Invariant check: a failure here is a bug in fabric, never bad input. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new FabricError('INTERNAL', `assertion failed: ${message}`);
}

export function assertNever(value: never, what = 'value'): never {
  throw new FabricError('INTERNAL', `unexpected ${what}: ${JSON.stringify(value)}`);
}
