/**
 * The Raft log as the core sees it: what storage holds durably, followed by entries (and
 * possibly a snapshot) not yet handed to storage ("unstable"). As etcd's raftLog/unstable.
 *
 *   storage:  [snapshot] firstIndex ............ storage.lastIndex
 *   unstable:                          offset ............ lastIndex
 *
 * Indexes: `committed` (known replicated on a quorum), `applying` (handed to the application
 * in a Ready), `applied` (acknowledged by `advance`): applied <= applying <= committed <= last.
 */
import { assert } from '../core/index.ts';
import type { Entry, LogStorage, Snapshot } from './types.ts';
import { limitSize } from './util.ts';

/** Entries and a snapshot the driver has not yet made durable. */
class Unstable {
  snapshot: Snapshot | undefined;
  entries: Entry[] = [];
  /** Index of `entries[0]`. */
  offset: number;
  /** Entries below this index were handed out in a Ready that has not been advanced yet. */
  offsetInProgress: number;
  snapshotInProgress = false;

  constructor(offset: number) {
    this.offset = offset;
    this.offsetInProgress = offset;
  }

  maybeFirstIndex(): number | undefined {
    return this.snapshot === undefined ? undefined : this.snapshot.metadata.index + 1;
  }

  maybeLastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot?.metadata.index;
  }

  maybeTerm(i: number): number | undefined {
    if (i < this.offset) {
      return this.snapshot !== undefined && this.snapshot.metadata.index === i ? this.snapshot.metadata.term : undefined;
    }
    return this.entries[i - this.offset]?.term;
  }

  nextEntries(): Entry[] {
    const start = this.offsetInProgress - this.offset;
    return start >= this.entries.length ? [] : this.entries.slice(start);
  }

  nextSnapshot(): Snapshot | undefined {
    return this.snapshotInProgress ? undefined : this.snapshot;
  }

  acceptInProgress(): void {
    if (this.entries.length > 0) this.offsetInProgress = this.offset + this.entries.length;
    if (this.snapshot !== undefined) this.snapshotInProgress = true;
  }

  /** Entries up to (i, t) are durable. Ignored when a later append replaced the entry at i. */
  stableTo(i: number, t: number): void {
    if (i < this.offset) return;
    const term = this.maybeTerm(i);
    if (term === undefined || term !== t) return;
    const n = i + 1 - this.offset;
    this.entries = this.entries.slice(n);
    this.offset = i + 1;
    this.offsetInProgress = Math.max(this.offsetInProgress, this.offset);
  }

  stableSnapTo(i: number): void {
    if (this.snapshot !== undefined && this.snapshot.metadata.index === i) {
      this.snapshot = undefined;
      this.snapshotInProgress = false;
    }
  }

  restore(s: Snapshot): void {
    this.offset = s.metadata.index + 1;
    this.offsetInProgress = this.offset;
    this.entries = [];
    this.snapshot = s;
    this.snapshotInProgress = false;
  }

  truncateAndAppend(entries: readonly Entry[]): void {
    const from = entries[0]!.index;
    if (from === this.offset + this.entries.length) {
      this.entries = this.entries.concat(entries);
    } else if (from <= this.offset) {
      // Replaces everything unstable (and, once persisted, a suffix of what storage holds).
      this.entries = [...entries];
      this.offset = from;
    } else {
      this.entries = this.entries.slice(0, from - this.offset).concat(entries);
    }
    this.offsetInProgress = Math.min(this.offsetInProgress, from);
  }

  slice(lo: number, hi: number): Entry[] {
    return this.entries.slice(lo - this.offset, hi - this.offset);
  }
}

export class RaftLog {
  readonly storage: LogStorage;
  readonly unstable: Unstable;
  committed: number;
  applying: number;
  applied: number;
  readonly #maxApplyingBytes: number | undefined;

  constructor(storage: LogStorage, maxApplyingBytes: number | undefined) {
    this.storage = storage;
    this.#maxApplyingBytes = maxApplyingBytes;
    const first = storage.firstIndex();
    this.unstable = new Unstable(storage.lastIndex() + 1);
    // Everything up to the snapshot is committed and applied by definition.
    this.committed = first - 1;
    this.applying = first - 1;
    this.applied = first - 1;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  /** The term of entry `i`, or undefined when it is compacted away or beyond the log. */
  term(i: number): number | undefined {
    // The entry before the first one (the snapshot's) still has a known term.
    if (i < this.firstIndex() - 1 || i > this.lastIndex()) return undefined;
    return this.unstable.maybeTerm(i) ?? this.storage.term(i);
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    assert(t !== undefined, 'the last entry has a term');
    return t;
  }

  matchTerm(i: number, t: number): boolean {
    return this.term(i) === t;
  }

  /** Whether a log ending at (lastIndex, lastTerm) is at least as up to date as ours (§5.4.1). */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /** Appends entries (truncating a conflicting unstable suffix); returns the new last index. */
  append(entries: readonly Entry[]): number {
    if (entries.length === 0) return this.lastIndex();
    const after = entries[0]!.index - 1;
    assert(after >= this.committed, `append after ${after} would overwrite committed entries up to ${this.committed}`);
    this.unstable.truncateAndAppend(entries);
    return this.lastIndex();
  }

  /**
   * A leader's append anchored at (prevIndex, prevTerm): when our log matches there, keeps our
   * entries that agree, replaces the first conflicting one and everything after, and advances
   * the commit index. Returns the index of the last entry the message covered, or undefined
   * when the anchor does not match.
   */
  maybeAppend(prevIndex: number, prevTerm: number, commit: number, entries: readonly Entry[]): number | undefined {
    if (!this.matchTerm(prevIndex, prevTerm)) return undefined;
    const lastNew = prevIndex + entries.length;
    const conflict = this.#findConflict(entries);
    if (conflict !== 0) {
      assert(conflict > this.committed, `entry ${conflict} conflicts with the committed log (committed ${this.committed})`);
      this.append(entries.slice(conflict - (prevIndex + 1)));
    }
    this.commitTo(Math.min(commit, lastNew));
    return lastNew;
  }

  /** The index of the first entry whose term differs from ours (or is new); 0 when all match. */
  #findConflict(entries: readonly Entry[]): number {
    for (const e of entries) if (!this.matchTerm(e.index, e.term)) return e.index;
    return 0;
  }

  /**
   * The largest index <= `index` whose term is <= `term`, with that term: the fast back-off
   * hint (a probe above it must fail, because terms only grow along a log). An index whose term
   * is unknown (compacted) is returned with term 0, meaning "may match".
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    for (let i = index; i > 0; i--) {
      const ours = this.term(i);
      if (ours === undefined) return { index: i, term: 0 };
      if (ours <= term) return { index: i, term: ours };
    }
    return { index: 0, term: 0 };
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    assert(index <= this.lastIndex(), `commit ${index} is beyond the last index ${this.lastIndex()}`);
    this.committed = index;
  }

  /** Commits up to `index` if its entry is of `term` (only entries of the leader's term commit by counting). */
  maybeCommit(index: number, term: number): boolean {
    if (term !== 0 && index > this.committed && this.matchTerm(index, term)) {
      this.commitTo(index);
      return true;
    }
    return false;
  }

  appliedTo(index: number): void {
    assert(index <= this.committed, `applied ${index} is beyond the commit index ${this.committed}`);
    if (index <= this.applied) return;
    this.applied = index;
    this.applying = Math.max(this.applying, index);
  }

  /** Entries in [lo, hi), at most `maxBytes` of payload (but at least one); throws if compacted. */
  slice(lo: number, hi: number, maxBytes?: number): Entry[] {
    if (lo >= hi) return [];
    assert(lo >= this.firstIndex(), `slice from ${lo} is below the first index ${this.firstIndex()}`);
    assert(hi <= this.lastIndex() + 1, `slice up to ${hi} is beyond the last index ${this.lastIndex()}`);
    const offset = this.unstable.offset;
    let stored: Entry[] = [];
    if (lo < offset) {
      const storedHi = Math.min(hi, offset);
      stored = this.storage.entries(lo, storedHi, maxBytes);
      // Storage stopped early for the size limit: the unstable part cannot follow.
      if (stored.length < storedHi - lo) return stored;
    }
    if (hi <= offset) return stored;
    const fresh = this.unstable.slice(Math.max(lo, offset), hi);
    return limitSize(stored.concat(fresh), maxBytes);
  }

  /** Entries from `lo` to the end of the log, for an append message; undefined when compacted. */
  entriesFrom(lo: number, maxBytes: number): Entry[] | undefined {
    if (lo < this.firstIndex()) return undefined;
    if (lo > this.lastIndex()) return [];
    return this.slice(lo, this.lastIndex() + 1, maxBytes);
  }

  hasNextOrInProgressSnapshot(): boolean {
    return this.unstable.snapshot !== undefined;
  }

  snapshot(): Snapshot {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }

  /** Installs a snapshot from the leader: the log restarts after it. */
  restore(s: Snapshot): void {
    this.committed = s.metadata.index;
    this.unstable.restore(s);
  }

  hasNextCommittedEntries(): boolean {
    // With a snapshot to install, entries wait: they apply on top of it.
    if (this.hasNextOrInProgressSnapshot()) return false;
    return this.committed > Math.max(this.applying, this.firstIndex() - 1);
  }

  /** Committed entries not yet handed to the application, bounded in size. */
  nextCommittedEntries(): Entry[] {
    if (!this.hasNextCommittedEntries()) return [];
    const lo = Math.max(this.applying + 1, this.firstIndex());
    return this.slice(lo, this.committed + 1, this.#maxApplyingBytes);
  }

  acceptApplying(index: number): void {
    this.applying = Math.max(this.applying, index);
  }
}
