/**
 * Restores ahead of need. When a host dies, the leader places its jobs again only once the dead
 * host's lease has run out (job-agent.ts: seconds, so that a host that is merely cut off has
 * stopped them first), and it tries the peers holding a job's latest checkpoint first. Those
 * holders use the wait: each materializes the checkpoint into the job's restore directory at
 * once, so that when the job lands here its restore is already done (for a 1 GiB checkpoint,
 * seconds of restart time). Nothing here runs a job or changes the fabric's state; a prepared
 * copy that no job claims is removed after a while.
 */
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { errorMessage, type Logger } from '../core/index.ts';
import type { Checkpoint } from '../placement/fsm/index.ts';

export interface RestoreCacheOptions {
  /** Where jobs live on this host (`<jobsDir>/<jobId>/restore-<step>`, see job-agent.ts). */
  jobsDir: string;
  /** Writes `checkpoint` as the directory `dir` (missing or empty), fetching chunks as needed. */
  materialize(checkpoint: Readonly<Checkpoint>, dir: string): Promise<void>;
  log: Logger;
  now(): number;
  /** A prepared copy no job claimed for this long (ms) is removed by `sweep`. */
  keepMs?: number;
}

interface Prepared {
  manifestId: string;
  dir: string;
  /** Settles true when the copy is complete, false when preparing it failed. */
  done: Promise<boolean>;
  settled: boolean;
  at: number;
}

const DEFAULT_KEEP_MS = 120_000;

export class RestoreCache {
  readonly #o: RestoreCacheOptions;
  readonly #prepared = new Map<string, Prepared>();

  constructor(opts: RestoreCacheOptions) {
    this.#o = opts;
  }

  /** Starts materializing `checkpoint` for `jobId` ahead of need; once per checkpoint. */
  prepare(jobId: string, checkpoint: Readonly<Checkpoint>): void {
    const known = this.#prepared.get(jobId);
    if (known !== undefined && (known.manifestId === checkpoint.manifestId || !known.settled)) return;
    if (known !== undefined) rmSync(known.dir, { recursive: true, force: true });
    const dir = this.#dirFor(jobId, checkpoint);
    const entry: Prepared = { manifestId: checkpoint.manifestId, dir, done: Promise.resolve(false), settled: false, at: this.#o.now() };
    entry.done = (async () => {
      this.#clear(jobId);
      await this.#o.materialize(checkpoint, dir);
      this.#o.log.info({ jobId, step: checkpoint.step }, 'checkpoint restored ahead of need (its host is dead)');
      return true;
    })()
      .catch((err: unknown) => {
        this.#o.log.warn({ jobId, step: checkpoint.step, err: errorMessage(err) }, 'restoring ahead of need failed');
        rmSync(dir, { recursive: true, force: true });
        return false;
      })
      .finally(() => {
        entry.settled = true;
      });
    this.#prepared.set(jobId, entry);
  }

  /**
   * The job's restore directory for `checkpoint`: the copy prepared ahead of need when there is
   * one for this very checkpoint, else restored now. Earlier restores of the job are removed.
   */
  async take(jobId: string, checkpoint: Readonly<Checkpoint>): Promise<string> {
    const known = this.#prepared.get(jobId);
    this.#prepared.delete(jobId);
    if (known !== undefined) {
      const ok = await known.done;
      if (ok && known.manifestId === checkpoint.manifestId) return known.dir;
    }
    const dir = this.#dirFor(jobId, checkpoint);
    this.#clear(jobId);
    await this.#o.materialize(checkpoint, dir);
    return dir;
  }

  /** Removes prepared copies no job has claimed for `keepMs`. */
  sweep(): void {
    const keepMs = this.#o.keepMs ?? DEFAULT_KEEP_MS;
    for (const [jobId, p] of this.#prepared) {
      if (!p.settled || this.#o.now() - p.at < keepMs) continue;
      this.#prepared.delete(jobId);
      rmSync(p.dir, { recursive: true, force: true });
      this.#o.log.debug({ jobId, dir: p.dir }, 'unclaimed restore removed');
    }
  }

  /** Prepared copies, for status and tests. */
  preparedJobs(): string[] {
    return [...this.#prepared.keys()];
  }

  #dirFor(jobId: string, checkpoint: Readonly<Checkpoint>): string {
    return join(this.#o.jobsDir, jobId, `restore-${checkpoint.step}`);
  }

  /** Removes every restore directory of the job: stale, or half written before a crash. */
  #clear(jobId: string): void {
    const base = join(this.#o.jobsDir, jobId);
    let names: string[];
    try {
      names = readdirSync(base);
    } catch {
      return;
    }
    for (const name of names) if (name.startsWith('restore-')) rmSync(join(base, name), { recursive: true, force: true });
  }
}
