/**
 * A job's stdout and stderr on disk, capped, with the latest output always kept.
 *
 * Layout, per stream (`stdout`, `stderr`) in the job's log directory:
 *   stdout.log     the current segment, appended to (`tail -f` works on it)
 *   stdout.log.1   the previous segment
 * Each segment holds at most half of the stream's cap, so a stream never takes more than its cap
 * on disk (plus one header line per segment). When the current segment is full it becomes
 * `.1`, the old `.1` is dropped, and a new current segment starts. Cuts fall after a newline
 * where the chunk being written has one, so lines are rarely split across segments.
 *
 * Every segment but the very first starts with one header line:
 *   [fabric-log] continues at byte N (earlier output: stdout.log.1, older output dropped)
 * N is the segment's position in the whole stream. Readers use it to address output by stream
 * offset (bytes written since the job's first attempt): `readLogRange` returns what is still on
 * disk from any offset and says how much before it was dropped, and `followLog` streams new
 * output across rotations without losing or repeating a byte (as long as it polls at least once
 * per segment's worth of output; otherwise it reports the gap).
 */
import { closeSync, fstatSync, mkdirSync, openSync, readSync, renameSync, writeSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { FabricError, errorMessage } from '../core/index.ts';

export type LogStream = 'stdout' | 'stderr';

/** Smallest cap accepted: two segments of 4 KiB. */
export const MIN_LOG_MAX_BYTES = 8 * 1024;

const HEADER_RE = /^\[fabric-log\] continues at byte (\d+)[^\n]*\n/;
const HEADER_PEEK = 200;

export function logPath(dir: string, stream: LogStream): string {
  return join(dir, `${stream}.log`);
}

function previousPath(dir: string, stream: LogStream): string {
  return `${logPath(dir, stream)}.1`;
}

function headerLine(stream: LogStream, offset: number): string {
  return `[fabric-log] continues at byte ${offset} (earlier output: ${stream}.log.1, older output dropped)\n`;
}

/** Position of a segment in the stream and where its data begins in the file. */
function readHeader(fd: number): { start: number; headerBytes: number } {
  const buf = Buffer.alloc(HEADER_PEEK);
  const n = readSync(fd, buf, 0, HEADER_PEEK, 0);
  const m = HEADER_RE.exec(buf.subarray(0, n).toString('latin1'));
  if (!m) return { start: 0, headerBytes: 0 };
  return { start: Number(m[1]), headerBytes: Buffer.byteLength(m[0], 'latin1') };
}

function openIfExists(path: string): number | null {
  try {
    return openSync(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Appends one stream's output to its capped segments. Synchronous: it runs in the job's supervisor process. */
export class CappedLogWriter {
  readonly #dir: string;
  readonly #stream: LogStream;
  readonly #segmentBytes: number;
  #fd: number;
  /** Data bytes (header excluded) in the current segment. */
  #segmentData: number;
  /** Stream offset of the next byte written. */
  #offset: number;

  constructor(dir: string, stream: LogStream, maxBytes: number) {
    if (!Number.isInteger(maxBytes) || maxBytes < MIN_LOG_MAX_BYTES) {
      throw new FabricError('BAD_INPUT', `log cap must be at least ${MIN_LOG_MAX_BYTES} bytes, not ${maxBytes}`);
    }
    this.#dir = dir;
    this.#stream = stream;
    this.#segmentBytes = Math.floor(maxBytes / 2);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // Continue the stream of earlier attempts: the same files, the same offsets.
    this.#fd = openSync(logPath(dir, stream), 'a+', 0o600);
    const { start, headerBytes } = readHeader(this.#fd);
    this.#segmentData = fstatSync(this.#fd).size - headerBytes;
    this.#offset = start + this.#segmentData;
  }

  /** Stream offset after the last byte written. */
  get offset(): number {
    return this.#offset;
  }

  write(chunk: Uint8Array): void {
    let rest = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    while (rest.length > 0) {
      const room = this.#segmentBytes - this.#segmentData;
      if (room <= 0) {
        this.#rotate();
        continue;
      }
      if (rest.length <= room) {
        this.#append(rest);
        return;
      }
      const newline = rest.lastIndexOf(0x0a, room - 1);
      const cut = newline >= 0 ? newline + 1 : room;
      this.#append(rest.subarray(0, cut));
      this.#rotate();
      rest = rest.subarray(cut);
    }
  }

  close(): void {
    try {
      closeSync(this.#fd);
    } catch {
      // already closed
    }
  }

  #append(bytes: Buffer): void {
    let off = 0;
    while (off < bytes.length) off += writeSync(this.#fd, bytes, off, bytes.length - off);
    this.#segmentData += bytes.length;
    this.#offset += bytes.length;
  }

  /** New segment under a temporary name, then current → .1 (dropping the old .1), then new → current. */
  #rotate(): void {
    const current = logPath(this.#dir, this.#stream);
    const next = `${current}.next`;
    const fd = openSync(next, 'w+', 0o600);
    const header = Buffer.from(headerLine(this.#stream, this.#offset), 'latin1');
    writeSync(fd, header);
    closeSync(this.#fd);
    renameSync(current, previousPath(this.#dir, this.#stream));
    renameSync(next, current);
    this.#fd = fd;
    this.#segmentData = 0;
  }
}

interface Segment {
  fd: number;
  stat: Stats;
  start: number;
  headerBytes: number;
  length: number;
}

function segmentOf(fd: number): Segment {
  const stat = fstatSync(fd);
  const { start, headerBytes } = readHeader(fd);
  return { fd, stat, start, headerBytes, length: Math.max(0, stat.size - headerBytes) };
}

export interface LogRange {
  /** Stream offset of the first byte of `data`. */
  start: number;
  data: Buffer;
  /** Stream offset after `data`. */
  end: number;
  /** Bytes between the requested offset and `start` that are no longer on disk. */
  dropped: number;
  /** Stream offset after the last byte on disk (what a reader that caught up has seen). */
  size: number;
}

/**
 * Output from stream offset `from` on, at most `maxBytes` of it. Bytes no longer kept are skipped
 * and counted in `dropped`; an offset beyond the end gives no data. No files yet: an empty range.
 */
export function readLogRange(dir: string, stream: LogStream, from: number, maxBytes = 1024 * 1024): LogRange {
  // Current first, then previous: a rotation in between makes both the same file (seen by inode),
  // never a hole.
  const fds: number[] = [];
  try {
    const curFd = openIfExists(logPath(dir, stream));
    if (curFd !== null) fds.push(curFd);
    const prevFd = openIfExists(previousPath(dir, stream));
    if (prevFd !== null) fds.push(prevFd);
    const cur = curFd === null ? null : segmentOf(curFd);
    let prev = prevFd === null ? null : segmentOf(prevFd);
    if (prev && cur && prev.stat.ino === cur.stat.ino && prev.stat.dev === cur.stat.dev) prev = null;
    const segments = [prev, cur].filter((s): s is Segment => s !== null).sort((a, b) => a.start - b.start);
    if (segments.length === 0) return { start: from, data: Buffer.alloc(0), end: from, dropped: 0, size: 0 };
    const first = segments[0]!;
    const last = segments.at(-1)!;
    const size = last.start + last.length;
    let pos = Math.max(from, 0);
    let dropped = 0;
    if (pos < first.start) {
      dropped = first.start - pos;
      pos = first.start;
    }
    if (pos >= size) return { start: pos, data: Buffer.alloc(0), end: pos, dropped, size };
    const parts: Buffer[] = [];
    let budget = Math.max(0, maxBytes);
    for (const seg of segments) {
      if (budget === 0) break;
      const segEnd = seg.start + seg.length;
      if (pos >= segEnd) continue;
      if (pos < seg.start) {
        // Output between two segments is gone (several rotations between our two opens): data
        // before the hole is returned now, the hole is reported by the next read.
        if (parts.length > 0) break;
        dropped += seg.start - pos;
        pos = seg.start;
      }
      const want = Math.min(budget, segEnd - pos);
      const buf = Buffer.alloc(want);
      let got = 0;
      while (got < want) {
        const n = readSync(seg.fd, buf, got, want - got, seg.headerBytes + (pos - seg.start) + got);
        if (n === 0) break;
        got += n;
      }
      parts.push(buf.subarray(0, got));
      pos += got;
      budget -= got;
      if (got < want) break;
    }
    const data = Buffer.concat(parts);
    return { start: pos - data.length, data, end: pos, dropped, size };
  } catch (err) {
    throw new FabricError('NOT_FOUND', `cannot read ${stream} log in ${dir}: ${errorMessage(err)}`, { cause: err });
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}

/** The last `bytes` bytes of output still on disk (for `fabric logs` without -f). */
export function readLogTail(dir: string, stream: LogStream, bytes: number): LogRange {
  const { size } = readLogRange(dir, stream, Number.MAX_SAFE_INTEGER, 0);
  return readLogRange(dir, stream, Math.max(0, size - bytes), bytes);
}

export interface FollowOptions {
  /** Stream offset to start from (default 0: everything still on disk). */
  from?: number;
  /** How often the files are looked at. */
  pollMs?: number;
  signal: AbortSignal;
  /** New output, in order; `dropped` bytes before it were lost to rotation (0 normally). */
  onData: (data: Buffer, dropped: number) => void;
}

/**
 * Streams a log's output as it grows, across rotations and across attempts, until `signal`
 * aborts. Resolves with the offset reached (a later follow can resume from it).
 */
export async function followLog(dir: string, stream: LogStream, opts: FollowOptions): Promise<number> {
  let pos = opts.from ?? 0;
  const pollMs = opts.pollMs ?? 250;
  while (!opts.signal.aborted) {
    for (;;) {
      const r = readLogRange(dir, stream, pos, 1024 * 1024);
      if (r.data.length === 0 && r.dropped === 0) break;
      pos = r.end;
      opts.onData(r.data, r.dropped);
      if (r.end >= r.size) break;
    }
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, pollMs);
      function done() {
        clearTimeout(t);
        opts.signal.removeEventListener('abort', done);
        resolve();
      }
      opts.signal.addEventListener('abort', done, { once: true });
    });
  }
  return pos;
}
