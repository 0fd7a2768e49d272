/**
 * MemoryStorage: the log-storage port held in memory, as etcd's MemoryStorage. Tests and the
 * deterministic simulation use it; the daemon uses the durable store in `src/node`.
 *
 * Layout: `#entries[0]` is a dummy entry standing for the snapshot (its index and term), so
 * the term of the snapshot's index stays answerable after compaction. Real entries follow it.
 */
import { FabricError } from '../core/index.ts';
import { bootstrapLog } from './bootstrap.ts';
import type { ConfState, Entry, HardState, LogStorage, Snapshot } from './types.ts';
import { limitSize } from './util.ts';

export class MemoryStorage implements LogStorage {
  #hardState: HardState = { term: 0, vote: null, commit: 0 };
  #snapshot: Snapshot;
  #entries: Entry[];

  /**
   * `bootstrap`: a founder of a new group; its configuration is written into the log as
   * committed conf-change entries 1..n (see bootstrap.ts), so that a node added later with an
   * empty storage learns it by replication.
   * `confState`: the snapshot at index 0 holds this configuration instead. Only for a group
   * whose EVERY node, including any added later, starts with that same snapshot (the scripted
   * tests, as etcd's do): a node that starts empty and gets the log from index 1 never learns it.
   */
  constructor(init: { confState?: ConfState; bootstrap?: ConfState } = {}) {
    if (init.confState !== undefined && init.bootstrap !== undefined) {
      throw new FabricError('BAD_INPUT', 'a storage starts from a snapshot configuration or a bootstrap log, not both');
    }
    const confState = copyConfState(init.confState ?? { voters: [], learners: [] });
    this.#snapshot = { metadata: { index: 0, term: 0, confState }, data: new Uint8Array(0) };
    this.#entries = [dummyEntry(0, 0)];
    if (init.bootstrap !== undefined) {
      const boot = bootstrapLog(init.bootstrap);
      this.#entries.push(...boot.entries);
      this.#hardState = boot.hardState;
    }
  }

  initialState(): { hardState: HardState; confState: ConfState } {
    return { hardState: { ...this.#hardState }, confState: copyConfState(this.#snapshot.metadata.confState) };
  }

  /** The hard state last persisted (for tests and the simulation's checks). */
  hardState(): HardState {
    return { ...this.#hardState };
  }

  setHardState(hs: HardState): void {
    this.#hardState = { ...hs };
  }

  entries(lo: number, hi: number, maxBytes?: number): Entry[] {
    const offset = this.#offset();
    if (lo <= offset) throw new FabricError('LOG_COMPACTED', `entries from ${lo}: compacted up to ${offset}`);
    if (hi > this.lastIndex() + 1) throw new FabricError('LOG_UNAVAILABLE', `entries up to ${hi - 1}: the log ends at ${this.lastIndex()}`);
    if (lo >= hi) return [];
    return limitSize(this.#entries.slice(lo - offset, hi - offset), maxBytes);
  }

  term(i: number): number {
    const offset = this.#offset();
    if (i < offset) throw new FabricError('LOG_COMPACTED', `term of ${i}: compacted up to ${offset}`);
    const entry = this.#entries[i - offset];
    if (entry === undefined) throw new FabricError('LOG_UNAVAILABLE', `term of ${i}: the log ends at ${this.lastIndex()}`);
    return entry.term;
  }

  firstIndex(): number {
    return this.#offset() + 1;
  }

  lastIndex(): number {
    return this.#offset() + this.#entries.length - 1;
  }

  snapshot(): Snapshot {
    return copySnapshot(this.#snapshot);
  }

  /**
   * Appends entries that follow on the log or overwrite a conflicting suffix of it (a new
   * leader's entries replace what a deposed one left behind). Entries below the first index
   * are already covered by the snapshot and are skipped.
   */
  append(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    const firstIndex = this.firstIndex();
    const lastNew = first.index + entries.length - 1;
    if (lastNew < firstIndex) return;
    const fresh = first.index < firstIndex ? entries.slice(firstIndex - first.index) : entries;
    const start = fresh[0]!.index - this.#offset();
    if (start > this.#entries.length) {
      throw new FabricError('LOG_UNAVAILABLE', `append at ${fresh[0]!.index} leaves a gap after ${this.lastIndex()}`);
    }
    this.#entries = this.#entries.slice(0, start).concat(fresh);
  }

  /** Replaces the whole log with a snapshot received from the leader. */
  applySnapshot(snap: Snapshot): void {
    if (snap.metadata.index <= this.#snapshot.metadata.index) {
      throw new FabricError('SNAPSHOT_OUT_OF_DATE', `snapshot at ${snap.metadata.index} is not newer than ${this.#snapshot.metadata.index}`);
    }
    this.#snapshot = copySnapshot(snap);
    this.#entries = [dummyEntry(snap.metadata.index, snap.metadata.term)];
  }

  /**
   * Records a snapshot of the state machine taken at `index` (at most the applied index, which
   * the caller knows). Log entries stay until `compact`.
   */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): Snapshot {
    if (index <= this.#snapshot.metadata.index) {
      throw new FabricError('SNAPSHOT_OUT_OF_DATE', `snapshot at ${index} is not newer than ${this.#snapshot.metadata.index}`);
    }
    if (index > this.lastIndex()) throw new FabricError('LOG_UNAVAILABLE', `snapshot at ${index}: the log ends at ${this.lastIndex()}`);
    this.#snapshot = { metadata: { index, term: this.term(index), confState: copyConfState(confState) }, data };
    return this.snapshot();
  }

  /** Discards entries up to and including `index`; its term stays known (as the new dummy). */
  compact(index: number): void {
    const offset = this.#offset();
    if (index <= offset) throw new FabricError('LOG_COMPACTED', `compact to ${index}: already compacted up to ${offset}`);
    if (index > this.lastIndex()) throw new FabricError('LOG_UNAVAILABLE', `compact to ${index}: the log ends at ${this.lastIndex()}`);
    const term = this.term(index);
    this.#entries = [dummyEntry(index, term), ...this.#entries.slice(index - offset + 1)];
  }

  #offset(): number {
    return this.#entries[0]!.index;
  }
}

function dummyEntry(index: number, term: number): Entry {
  return { index, term, type: 'normal', data: new Uint8Array(0) };
}

function copyConfState(cs: ConfState): ConfState {
  return { voters: [...cs.voters], learners: [...cs.learners] };
}

function copySnapshot(snap: Snapshot): Snapshot {
  return { metadata: { ...snap.metadata, confState: copyConfState(snap.metadata.confState) }, data: snap.data };
}
