/**
 * The real RunTool: runs a vendor tool (nvidia-smi, rocm-smi, rocminfo, or the fake tool) as a
 * child process. It resolves for every outcome a tool can have (exit codes, missing executable,
 * timeout, oversized output) so discovery can turn each into a warning; it rejects only when the
 * caller aborts.
 */
import { execFile, type ExecFileException } from 'node:child_process';
import { FabricError } from '../core/index.ts';
import type { RunTool, ToolCommand, ToolResult } from '../devices/probe/discover.ts';

/** `nvidia-smi -q -x` on an 8-GPU host is a few MiB; this leaves room for large hosts. */
export const TOOL_MAX_BUFFER = 32 * 1024 * 1024;
/** nvidia-smi can hang on a wedged GPU; discovery must not hang with it. */
export const TOOL_TIMEOUT_MS = 15_000;

export const runTool: RunTool = (cmd: ToolCommand, args: string[], signal?: AbortSignal): Promise<ToolResult> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new FabricError('ABORTED', `${cmd.file}: aborted before start`));
      return;
    }
    const options = {
      maxBuffer: TOOL_MAX_BUFFER,
      timeout: TOOL_TIMEOUT_MS,
      encoding: 'utf8' as const,
      windowsHide: true,
      ...(cmd.env ? { env: { ...process.env, ...cmd.env } } : {}),
      ...(signal ? { signal } : {}),
    };
    execFile(cmd.file, [...cmd.prefixArgs, ...args], options, (error: ExecFileException | null, stdout: string, stderr: string) => {
      if (!error) {
        resolve({ code: 0, stdout, stderr, notFound: false });
        return;
      }
      if (signal?.aborted || error.name === 'AbortError') {
        reject(new FabricError('ABORTED', `${cmd.file}: aborted`, { cause: error }));
        return;
      }
      if (error.code === 'ENOENT') {
        resolve({ code: null, stdout: '', stderr: `${cmd.file}: not found`, notFound: true });
        return;
      }
      if (typeof error.code === 'number') {
        resolve({ code: error.code, stdout, stderr, notFound: false });
        return;
      }
      // Killed (timeout), output over maxBuffer, or could not start (EACCES, ...).
      const why = error.killed ? `killed after ${TOOL_TIMEOUT_MS / 1000} s` : error.message;
      resolve({ code: null, stdout, stderr: stderr ? `${why}\n${stderr}` : why, notFound: false });
    });
  });
