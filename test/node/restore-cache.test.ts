import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/index.ts';
import type { Checkpoint } from '../../src/placement/fsm/index.ts';
import { RestoreCache } from '../../src/node/restore-cache.ts';

const checkpoint = (step: number, manifestId = `m${step}`): Checkpoint => ({ manifestId, step, epoch: 1, holders: ['a', 'b'], bytes: 5, committedAt: 0 }) as unknown as Checkpoint;

let dir: string;
let now = 0;
let calls: string[] = [];
let fail = false;

function cache(): RestoreCache {
  return new RestoreCache({
    jobsDir: dir,
    materialize: async (c, target) => {
      calls.push(`${c.manifestId}->${target}`);
      await new Promise((r) => setTimeout(r, 5));
      if (fail) throw new Error('no holder answered');
      mkdirSync(target, { recursive: true });
      writeFileSync(join(target, 'state'), c.manifestId);
    },
    log: silentLogger,
    now: () => now,
    keepMs: 1_000,
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'restore-cache-'));
  now = 0;
  calls = [];
  fail = false;
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('restore cache', () => {
  it('a checkpoint restored ahead of need is taken as it is, without a second restore', async () => {
    const c = cache();
    c.prepare('j1', checkpoint(20));
    c.prepare('j1', checkpoint(20)); // once per checkpoint
    const got = await c.take('j1', checkpoint(20));
    expect(got).toBe(join(dir, 'j1', 'restore-20'));
    expect(readFileSync(join(got, 'state'), 'utf8')).toBe('m20');
    expect(calls).toHaveLength(1);
    expect(c.preparedJobs()).toEqual([]);
  });

  it('a copy of another checkpoint is not used: the one asked for is restored, the other removed', async () => {
    const c = cache();
    c.prepare('j1', checkpoint(20));
    const got = await c.take('j1', checkpoint(40));
    expect(got).toBe(join(dir, 'j1', 'restore-40'));
    expect(readFileSync(join(got, 'state'), 'utf8')).toBe('m40');
    expect(existsSync(join(dir, 'j1', 'restore-20'))).toBe(false);
  });

  it('a failed preparation falls back to restoring when the job is placed', async () => {
    const c = cache();
    fail = true;
    c.prepare('j1', checkpoint(20));
    await new Promise((r) => setTimeout(r, 20));
    fail = false;
    const got = await c.take('j1', checkpoint(20));
    expect(readFileSync(join(got, 'state'), 'utf8')).toBe('m20');
    expect(calls).toHaveLength(2);
  });

  it('restores left by an earlier attempt or a crash are removed before restoring', async () => {
    mkdirSync(join(dir, 'j1', 'restore-20'), { recursive: true });
    writeFileSync(join(dir, 'j1', 'restore-20', 'half-written'), 'x');
    mkdirSync(join(dir, 'j1', 'restore-0'), { recursive: true });
    const got = await cache().take('j1', checkpoint(20));
    expect(existsSync(join(got, 'half-written'))).toBe(false);
    expect(existsSync(join(dir, 'j1', 'restore-0'))).toBe(false);
  });

  it('a copy no job claims is removed after keepMs', async () => {
    const c = cache();
    c.prepare('j1', checkpoint(20));
    await new Promise((r) => setTimeout(r, 20));
    c.sweep();
    expect(existsSync(join(dir, 'j1', 'restore-20'))).toBe(true);
    now = 1_001;
    c.sweep();
    expect(existsSync(join(dir, 'j1', 'restore-20'))).toBe(false);
    expect(c.preparedJobs()).toEqual([]);
  });
});
