/** The real-world adapters that `node` hands to the pure modules: clock, randomness, logger. */
import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import { pino } from 'pino';
import { SeededRng, type Clock, type Logger, type LogLevel, type Timer } from '../core/index.ts';

export const systemClock: Clock = {
  now: () => performance.now(),
  setTimer(ms: number, fn: () => void): Timer {
    const handle = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(handle) };
  },
};

export function systemRng(): SeededRng {
  return new SeededRng(randomInt(0, 2 ** 31));
}

/**
 * Lets V8 pace collections for memory outside its heap (Buffers) by its overall limits, not a
 * fixed 64 MiB step. Checkpoint data is all Buffers: one per socket read, cipher pass and file
 * read. With the fixed step, moving a checkpoint ran a full mark-compact every 50–80 ms in every
 * daemon, about a third of their CPU; with this, replication does 20% more per CPU-second (the
 * replication bench: 13.7 vs 16.7 CPU-s per GiB) for ~70 MiB more resident memory under load.
 * Call once, early, in a process that runs a daemon.
 */
export function tuneGarbageCollector(): void {
  v8.setFlagsFromString('--external-memory-accounted-in-global-limit');
}

export { LOG_LEVELS, parseLogLevel, type LogLevel } from '../core/index.ts';

/** JSON lines on stderr (stdout is the CLI's), one child logger per module. */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination({ fd: 2, sync: false }));
}
