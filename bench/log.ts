/** A logger for benchmark processes, shared by the writer and its replicas. */
import { silentLogger, type Logger } from '../src/core/index.ts';

/**
 * FABRIC_BENCH_LOG=debug|info|warn|error: log lines at that level and above on stderr, each with
 * `prefix` and the ms since this logger was made; unset, a silent logger.
 */
export function stderrBenchLogger(prefix = ''): Logger {
  const levels = ['debug', 'info', 'warn', 'error'];
  const min = levels.indexOf(process.env['FABRIC_BENCH_LOG'] ?? '');
  if (min < 0) return silentLogger;
  const t0 = performance.now();
  const at = (level: string) => (obj: Record<string, unknown> | string, msg?: string): void => {
    if (levels.indexOf(level) < min) return;
    process.stderr.write(`${prefix}${(performance.now() - t0).toFixed(0).padStart(7)} ${level} ${typeof obj === 'string' ? obj : `${msg ?? ''} ${JSON.stringify(obj)}`}\n`);
  };
  const logger: Logger = { child: () => logger, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  return logger;
}
