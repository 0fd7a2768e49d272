/** A Logger that records every line, for tests that assert what was logged (and dropped). */
import type { Logger } from '../../src/core/index.ts';

export interface LogLine {
  level: string;
  fields: Record<string, unknown>;
  msg: string;
}

export function recordingLogger(lines: LogLine[]): Logger {
  const at = (level: string) => (obj: Record<string, unknown> | string, msg?: string): void => {
    lines.push(typeof obj === 'string' ? { level, fields: {}, msg: obj } : { level, fields: obj, msg: msg ?? '' });
  };
  const logger: Logger = { child: () => logger, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  return logger;
}
