import { afterEach, describe, expect, test } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CappedLogWriter, followLog, logPath, readLogRange, readLogTail } from '../../src/node/job-logs.ts';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'fabric-logs-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** `count` numbered lines of some width, as the job would print them. */
function lines(from: number, count: number): string {
  let s = '';
  for (let i = from; i < from + count; i++) s += `line ${String(i).padStart(6, '0')} ${'x'.repeat(i % 37)}\n`;
  return s;
}

const CAP = 8 * 1024;

describe('capped log files', () => {
  test('small output stays in one plain file', () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stdout', CAP);
    w.write(Buffer.from('hello\nworld\n'));
    w.close();
    expect(readFileSync(logPath(dir, 'stdout'), 'utf8')).toBe('hello\nworld\n');
    expect(existsSync(`${logPath(dir, 'stdout')}.1`)).toBe(false);
    expect(readLogRange(dir, 'stdout', 0)).toMatchObject({ start: 0, end: 12, dropped: 0, size: 12 });
  });

  test('a big stream keeps at most its cap on disk, the newest output whole, and counts what it dropped', () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stderr', CAP);
    const text = lines(0, 3000);
    // Write in uneven chunks, as pipes deliver them.
    for (let off = 0, n = 1; off < text.length; off += n, n = (n * 7 + 13) % 1500 + 1) w.write(Buffer.from(text.slice(off, off + n)));
    w.close();
    const cur = statSync(logPath(dir, 'stderr')).size;
    const prev = statSync(`${logPath(dir, 'stderr')}.1`).size;
    expect(cur + prev).toBeLessThanOrEqual(CAP + 2 * 120);
    expect(w.offset).toBe(text.length);
    const r = readLogRange(dir, 'stderr', 0, 1 << 20);
    expect(r.size).toBe(text.length);
    expect(r.dropped).toBe(r.start);
    expect(r.dropped).toBeGreaterThan(0);
    expect(r.data.toString()).toBe(text.slice(r.start));
    // Rotation cuts after a newline: the kept output starts at a line.
    expect(text[r.start - 1]).toBe('\n');
    expect(readFileSync(logPath(dir, 'stderr'), 'utf8')).toMatch(/^\[fabric-log\] continues at byte \d+ \(earlier output: stderr\.log\.1, older output dropped\)\n/);
  });

  test('a later attempt continues the same stream at the same offsets', () => {
    const dir = tempDir();
    const a = lines(0, 400);
    const b = lines(400, 400);
    const w1 = new CappedLogWriter(dir, 'stdout', CAP);
    w1.write(Buffer.from(a));
    w1.close();
    const w2 = new CappedLogWriter(dir, 'stdout', CAP);
    expect(w2.offset).toBe(a.length);
    w2.write(Buffer.from(b));
    w2.close();
    const r = readLogRange(dir, 'stdout', 0, 1 << 20);
    expect(r.size).toBe(a.length + b.length);
    expect(r.data.toString()).toBe((a + b).slice(r.start));
  });

  test('a reader that keeps up gets every byte exactly once across many rotations', () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stdout', CAP);
    const text = lines(0, 5000);
    let pos = 0;
    let got = '';
    for (let off = 0; off < text.length; off += 1000) {
      w.write(Buffer.from(text.slice(off, off + 1000)));
      // A small budget per read: the reader crosses segment boundaries mid-read too.
      for (;;) {
        const r = readLogRange(dir, 'stdout', pos, 700);
        expect(r.dropped).toBe(0);
        got += r.data.toString();
        pos = r.end;
        if (r.end >= r.size) break;
      }
    }
    w.close();
    expect(got).toBe(text);
  });

  test('a reader that falls behind is told how much it missed, then continues', () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stdout', CAP);
    const text = lines(0, 2000);
    w.write(Buffer.from(text));
    w.close();
    const r = readLogRange(dir, 'stdout', 100, 1 << 20);
    expect(r.dropped).toBe(r.start - 100);
    expect(r.data.toString()).toBe(text.slice(r.start));
    expect(readLogRange(dir, 'stdout', text.length + 50)).toMatchObject({ data: Buffer.alloc(0), dropped: 0 });
  });

  test('tail gives the last bytes; a stream with no file yet is empty', () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stdout', CAP);
    const text = lines(0, 1000);
    w.write(Buffer.from(text));
    w.close();
    expect(readLogTail(dir, 'stdout', 100).data.toString()).toBe(text.slice(-100));
    expect(readLogRange(dir, 'stderr', 0)).toMatchObject({ size: 0, dropped: 0 });
    expect(readLogRange(join(dir, 'nothing-here'), 'stdout', 0)).toMatchObject({ size: 0 });
  });

  test('a cap below the minimum is refused', () => {
    expect(() => new CappedLogWriter(tempDir(), 'stdout', 100)).toThrow(/at least/);
  });
});

describe('following a log', () => {
  test('streams output as it is written, across rotations, until aborted', async () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stdout', CAP);
    const ctl = new AbortController();
    let got = '';
    let dropped = 0;
    const followed = followLog(dir, 'stdout', {
      signal: ctl.signal,
      pollMs: 5,
      onData: (data, d) => {
        got += data.toString();
        dropped += d;
      },
    });
    const text = lines(0, 3000);
    const until = async (cond: () => boolean) => {
      const deadline = Date.now() + 20_000;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error('follower did not catch up');
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    // Each write is less than a segment, and the next waits for the follower: nothing can be missed.
    for (let off = 0; off < text.length; off += 2500) {
      w.write(Buffer.from(text.slice(off, off + 2500)));
      const want = Math.min(text.length, off + 2500);
      await until(() => got.length >= want);
    }
    ctl.abort();
    expect(await followed).toBe(text.length);
    w.close();
    expect(dropped).toBe(0);
    expect(got).toBe(text);
  });

  test('a follow can resume where an earlier one stopped', async () => {
    const dir = tempDir();
    const w = new CappedLogWriter(dir, 'stdout', CAP);
    w.write(Buffer.from('first\nsecond\n'));
    const ctl = new AbortController();
    let got = '';
    const followed = followLog(dir, 'stdout', { from: 6, signal: ctl.signal, pollMs: 5, onData: (d) => (got += d.toString()) });
    const deadline = Date.now() + 20_000;
    while (got !== 'second\n' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    ctl.abort();
    expect(await followed).toBe(13);
    expect(got).toBe('second\n');
    w.close();
  });
});
