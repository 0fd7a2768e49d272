/**
 * How the CLI finds its daemon: the data dir (`--data-dir`, else `FABRIC_DATA_DIR`, else
 * `~/.fabric`) holds `api.json` (mode 0600) with the local API's URL and bearer token.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';

export function resolveDataDir(flag?: string): string {
  return resolve(flag ?? process.env['FABRIC_DATA_DIR'] ?? join(homedir(), '.fabric'));
}

export const API_FILE_NAME = 'api.json';

export const ApiFileSchema = z.object({
  url: z.string().url(),
  token: z.string().min(16),
  pid: z.number().int().positive(),
});
export type ApiFile = z.infer<typeof ApiFileSchema>;
