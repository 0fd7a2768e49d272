/**
 * One daemon per data dir. The lock file holds the owner's pid; a lock whose pid is gone
 * (the daemon was killed with -9) is stale and taken over.
 */
import { openSync, writeSync, closeSync, readFileSync, unlinkSync, fsyncSync } from 'node:fs';
import { FabricError } from '../core/index.ts';

export interface DataDirLock {
  release(): void;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function acquireLock(path: string, dataDir: string): DataDirLock {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      fsyncSync(fd);
      closeSync(fd);
      let released = false;
      return {
        release() {
          if (released) return;
          released = true;
          try {
            if (readFileSync(path, 'utf8').trim() === String(process.pid)) unlinkSync(path);
          } catch {
            // already gone
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number.parseInt(readFileSafe(path), 10);
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && pidAlive(owner)) {
        throw new FabricError(
          'DATA_DIR_LOCKED',
          `data dir ${dataDir} is in use by a running daemon (pid ${owner}); stop it first or pick another --data-dir`,
        );
      }
      try {
        unlinkSync(path); // stale: its owner is gone
      } catch {
        // someone else removed it first; retry
      }
    }
  }
  throw new FabricError('DATA_DIR_LOCKED', `could not lock data dir ${dataDir}`);
}

function readFileSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
