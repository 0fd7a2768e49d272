/**
 * FabricError: every error the fabric raises on purpose carries a stable `code`, so callers
 * (the CLI, the HTTP API, tests) tell errors apart without parsing messages.
 */
export const ERROR_CODES = [
  'BAD_INPUT',
  'BAD_TOKEN',
  'BAD_FRAME',
  'NOT_FOUND',
  'UNAUTHORIZED',
  'DATA_DIR_LOCKED',
  'DATA_DIR_MISSING',
  'DATA_DIR_EXISTS',
  'DISCOVERY_FAILED',
  'DAEMON_UNREACHABLE',
  'TIMEOUT',
  'ABORTED',
  'INTERNAL',
  // Raft (src/consensus): no leader to take the request; the leader refused a proposal;
  // a log read below the first or beyond the last index; a snapshot older than the one held.
  'NOT_LEADER',
  'PROPOSAL_DROPPED',
  'LOG_COMPACTED',
  'LOG_UNAVAILABLE',
  'SNAPSHOT_OUT_OF_DATE',
  // The durable Raft log (src/node/raft-store.ts) failed its checksums or consistency checks at start-up.
  'CORRUPT_STORAGE',
  // The replicated state refused a command (src/placement/fsm: details.reject holds its reject code).
  'REJECTED',
  // The leader declines for now what it would grant later (a lost host's lease while its jobs move).
  'UNAVAILABLE',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** A code from the wire or a file: known codes pass, anything else reads as INTERNAL. */
export function toErrorCode(value: string): ErrorCode {
  return (ERROR_CODES as readonly string[]).includes(value) ? (value as ErrorCode) : 'INTERNAL';
}

export class FabricError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FabricError';
    this.code = code;
    this.details = options?.details;
  }
}

export function isFabricError(err: unknown, code?: ErrorCode): err is FabricError {
  return err instanceof FabricError && (code === undefined || err.code === code);
}

/** A one-line description of any thrown value, for logs and CLI output. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}
