/** The real-world adapters that `node` hands to the pure modules: clock, randomness, logger. */
import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
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

export { LOG_LEVELS, parseLogLevel, type LogLevel } from '../core/index.ts';

/** JSON lines on stderr (stdout is the CLI's), one child logger per module. */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination({ fd: 2, sync: false }));
}
