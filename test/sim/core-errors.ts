/** The storage errors the core expects from a LogStorage, as its MemoryStorage raises them. */
import { FabricError } from '../../src/core/index.ts';

export function compactedError(detail: string): Error {
  return new FabricError('LOG_COMPACTED', detail);
}

export function unavailableError(detail: string): Error {
  return new FabricError('LOG_UNAVAILABLE', detail);
}
