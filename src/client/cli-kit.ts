/** Shared CLI plumbing: flag validation with zod, one-line errors, JSON output. */
import type { Command } from 'commander';
import type { z } from 'zod';
import { FabricError, errorMessage } from '../core/index.ts';
import { resolveDataDir } from '../api/endpoint.ts';

/** Validates parsed flags; every bad flag is named in one message. */
export function parseFlags<T>(schema: z.ZodType<T>, raw: unknown): T {
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((i) => {
    const flag = i.path.length > 0 ? `--${String(i.path[0]).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : 'arguments';
    return `${flag}: ${i.message}`;
  });
  throw new FabricError('BAD_INPUT', problems.join('; '));
}

/** Runs a command's action; a failure is one clear line on stderr and exit code 1. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      process.stderr.write(`fabric: ${errorMessage(err)}\n`);
      process.exitCode = 1;
    }
  };
}

export function addDataDirOption(cmd: Command): Command {
  return cmd.option('--data-dir <dir>', 'the daemon\'s data directory (default: $FABRIC_DATA_DIR or ~/.fabric)');
}

export function dataDirOf(opts: { dataDir?: string }): string {
  return resolveDataDir(opts.dataDir);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
