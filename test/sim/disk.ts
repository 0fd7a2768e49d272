/**
 * A simulated disk for one node: the Raft log storage (`LogStorage` for the core to read, plus
 * the write API the driver uses) with a durable part and an unsynced part, like a file behind a
 * page cache. Writes land in the unsynced part at once (reads see them); `sync()` makes them
 * durable. A crash keeps only the durable part, plus possibly a prefix of the unsynced writes in
 * order, the last of them torn (an append keeps only its first entries), which is what a
 * checksummed write-ahead log recovers after a power cut.
 *
 * Every stored entry also carries a chain hash of the log prefix ending at it, reported to a
 * `LogObserver`: the invariant checker compares chains across nodes (log matching) in O(1) per entry.
 */
import { FabricError, type Rng } from '../../src/core/index.ts';
import { bootstrapLog } from '../../src/consensus/bootstrap.ts';
import type { ConfState, Entry, HardState, LogStorage, Snapshot } from '../../src/consensus/types.ts';
import { limitSize } from '../../src/consensus/util.ts';
import { compactedError, unavailableError } from './core-errors.ts';
import { chainHash } from './hash.ts';

export interface LogObserver {
  /** A node's log now holds `index` at `term` with this prefix chain. */
  appended(node: string, index: number, term: number, chain: number): void;
  /** The chain of the prefix ending at (index, term), for a snapshot received from a peer. */
  chainOf(index: number, term: number): number;
}

type DiskWrite =
  | { kind: 'append'; entries: Entry[] }
  | { kind: 'hard-state'; hardState: HardState }
  | { kind: 'snapshot'; snapshot: Snapshot; chain: number }
  | { kind: 'create-snapshot'; index: number; confState: ConfState; data: Uint8Array }
  | { kind: 'compact'; index: number };

interface LogImage {
  hardState: HardState;
  snapshot: Snapshot;
  snapshotChain: number;
  /** The log starts after `offset` (the last compacted index, ≤ the snapshot's index). */
  offset: number;
  offsetTerm: number;
  offsetChain: number;
  entries: Entry[];
  chains: number[];
}

export interface DiskOptions {
  /** Broken on purpose (to prove the checkers bite): `sync()` returns without making writes durable. */
  syncLies?: boolean;
  /**
   * Each sync writes one checksummed record, as src/node's DiskRaftStore does: a crash keeps the
   * unsynced writes whole or loses them whole (a torn record is truncated away). Without it, a
   * crash may keep any prefix of them and tear an append inside it, as a log of one record per
   * write would (entries durable, the hard state written after them lost).
   */
  atomicSyncs?: boolean;
}

export interface CrashReport {
  lostWrites: number;
  keptWrites: number;
  /** Entries of a torn append that survived, or -1 when nothing was torn. */
  tornKept: number;
}

export class SimDisk implements LogStorage {
  readonly node: string;
  readonly #observer: LogObserver;
  readonly #syncLies: boolean;
  readonly #atomicSyncs: boolean;
  #durable: LogImage;
  #view: LogImage;
  #unsynced: DiskWrite[] = [];

  /**
   * A new disk, as `DiskRaftStore.open` makes one for a new directory: `bootstrap` is the group's
   * first configuration, written (durably) into the log as the core's bootstrap entries 1..n,
   * committed at term 1; an empty one leaves the disk empty (a node waiting to be added).
   */
  constructor(node: string, bootstrap: ConfState, observer: LogObserver, options: DiskOptions = {}) {
    this.node = node;
    this.#observer = observer;
    this.#syncLies = options.syncLies ?? false;
    this.#atomicSyncs = options.atomicSyncs ?? false;
    const boot = bootstrapLog(bootstrap);
    this.#view = emptyImage();
    if (boot.entries.length > 0) applyWrite(this.#view, { kind: 'append', entries: boot.entries }, node, observer);
    this.#view.hardState = boot.hardState;
    this.#durable = cloneImage(this.#view);
  }

  // ---- LogStorage (what the core reads: the latest writes, synced or not) ----

  /**
   * The hard state as stored, even when a crash left it behind the log written with it (a
   * commit index below the snapshot's, a term below the last entry's): the core repairs that
   * at load, and the simulation exercises the repair.
   */
  initialState(): { hardState: HardState; confState: ConfState } {
    const v = this.#view;
    return { hardState: { ...v.hardState }, confState: cloneConf(v.snapshot.metadata.confState) };
  }

  entries(lo: number, hi: number, maxBytes?: number): Entry[] {
    const v = this.#view;
    if (lo <= v.offset) throw compactedError(`entries from ${lo}: compacted up to ${v.offset}`);
    const last = lastIndexOf(v);
    if (hi > last + 1) throw unavailableError(`entries up to ${hi - 1}: the log ends at ${last}`);
    if (lo >= hi) return [];
    return limitSize(v.entries.slice(lo - v.offset - 1, hi - v.offset - 1), maxBytes);
  }

  term(i: number): number {
    const v = this.#view;
    if (i === v.offset) return v.offsetTerm;
    if (i < v.offset) throw compactedError(`term of ${i}: compacted up to ${v.offset}`);
    if (i > lastIndexOf(v)) throw unavailableError(`term of ${i}: the log ends at ${lastIndexOf(v)}`);
    return v.entries[i - v.offset - 1]!.term;
  }

  firstIndex(): number {
    return this.#view.offset + 1;
  }

  lastIndex(): number {
    return lastIndexOf(this.#view);
  }

  snapshot(): Snapshot {
    return this.#view.snapshot;
  }

  // ---- Writes (unsynced until `sync()`) ----

  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const copy = entries.map((e) => Object.freeze({ ...e }));
    this.#write({ kind: 'append', entries: copy });
  }

  setHardState(hardState: HardState): void {
    this.#write({ kind: 'hard-state', hardState: { ...hardState } });
  }

  applySnapshot(snapshot: Snapshot): void {
    const m = snapshot.metadata;
    if (m.index <= this.#view.snapshot.metadata.index) {
      throw new FabricError('SNAPSHOT_OUT_OF_DATE', `snapshot at ${m.index} is not newer than ${this.#view.snapshot.metadata.index}`);
    }
    const chain = this.#observer.chainOf(m.index, m.term);
    this.#write({ kind: 'snapshot', snapshot: cloneSnapshot(snapshot), chain });
  }

  /** Records the state machine's snapshot at `index` (≤ last index, newer than the current one). */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): Snapshot {
    const current = this.#view.snapshot.metadata.index;
    if (index <= current) throw new FabricError('SNAPSHOT_OUT_OF_DATE', `snapshot at ${index} is not newer than ${current}`);
    if (index > this.lastIndex()) throw unavailableError(`snapshot at ${index}: the log ends at ${this.lastIndex()}`);
    this.#write({ kind: 'create-snapshot', index, confState: cloneConf(confState), data });
    return this.#view.snapshot;
  }

  /** Drops the entries up to `index`, which the snapshot must already cover. */
  compact(index: number): void {
    if (index <= this.#view.offset) throw compactedError(`compact to ${index}: already compacted up to ${this.#view.offset}`);
    this.#write({ kind: 'compact', index });
  }

  /** fsync: everything written so far becomes durable. */
  sync(): void {
    if (this.#syncLies) return;
    for (const w of this.#unsynced) applyWrite(this.#durable, w, this.node, undefined);
    this.#unsynced = [];
  }

  hasUnsynced(): boolean {
    return this.#unsynced.length > 0;
  }

  /**
   * Power loss: the unsynced writes are lost, except that a seeded prefix of them may have reached
   * the platter, the last one possibly torn (with `atomicSyncs`: all of them or none). What
   * survives becomes the whole disk.
   */
  crash(rng: Rng): CrashReport {
    const pending = this.#unsynced;
    this.#unsynced = [];
    const loseAll = rng.next() < 0.5;
    const keep = loseAll ? 0 : this.#atomicSyncs ? pending.length : rng.int(pending.length + 1);
    let tornKept = -1;
    for (let i = 0; i < keep; i++) applyWrite(this.#durable, pending[i]!, this.node, undefined);
    const next = pending[keep];
    if (next !== undefined && next.kind === 'append' && next.entries.length > 1 && !this.#atomicSyncs && rng.next() < 0.5) {
      tornKept = 1 + rng.int(next.entries.length - 1);
      applyWrite(this.#durable, { kind: 'append', entries: next.entries.slice(0, tornKept) }, this.node, undefined);
    }
    this.#view = cloneImage(this.#durable);
    return { lostWrites: pending.length - keep, keptWrites: keep, tornKept };
  }

  // ---- What survives a crash, for the invariant checkers ----

  /** True when a crash now would still leave the prefix ending at (index, chain), or a snapshot past it. */
  durablyHolds(index: number, chain: number): boolean {
    const d = this.#durable;
    if (d.snapshot.metadata.index >= index) return true;
    return chainAtOf(d, index) === chain;
  }

  /** The chain of the (unsynced or durable) log prefix ending at `index`; undefined when not held. */
  chainAt(index: number): number | undefined {
    return chainAtOf(this.#view, index);
  }

  hardState(): HardState {
    return { ...this.#view.hardState };
  }

  #write(w: DiskWrite): void {
    applyWrite(this.#view, w, this.node, this.#observer);
    this.#unsynced.push(w);
  }
}

function emptyImage(): LogImage {
  return {
    hardState: { term: 0, vote: null, commit: 0 },
    snapshot: { metadata: { index: 0, term: 0, confState: { voters: [], learners: [] } }, data: new Uint8Array() },
    snapshotChain: 0,
    offset: 0,
    offsetTerm: 0,
    offsetChain: 0,
    entries: [],
    chains: [],
  };
}

function lastIndexOf(image: LogImage): number {
  return image.offset + image.entries.length;
}

function chainAtOf(image: LogImage, index: number): number | undefined {
  if (index === image.snapshot.metadata.index) return image.snapshotChain;
  if (index === image.offset) return image.offsetChain;
  if (index < image.offset || index > lastIndexOf(image)) return undefined;
  return image.chains[index - image.offset - 1];
}

/** Applies one write to an image; the observer (view only) hears of every new entry. */
function applyWrite(image: LogImage, w: DiskWrite, node: string, observer: LogObserver | undefined): void {
  switch (w.kind) {
    case 'append': {
      let entries = w.entries;
      // Entries the log already compacted are committed and equal by log matching: skip them.
      if (entries[0]!.index <= image.offset) entries = entries.filter((e) => e.index > image.offset);
      if (entries.length === 0) return;
      const first = entries[0]!.index;
      const last = lastIndexOf(image);
      if (first > last + 1) throw new Error(`${node}: append at ${first} leaves a gap after ${last}`);
      const keep = first - image.offset - 1;
      image.entries.length = keep;
      image.chains.length = keep;
      let previous = keep === 0 ? image.offsetChain : image.chains[keep - 1]!;
      for (const e of entries) {
        if (e.index !== image.offset + image.entries.length + 1) throw new Error(`${node}: append of non-contiguous entries`);
        const chain = chainHash(previous, e.term, e.type, e.data);
        image.entries.push(e);
        image.chains.push(chain);
        observer?.appended(node, e.index, e.term, chain);
        previous = chain;
      }
      return;
    }
    case 'hard-state':
      image.hardState = { ...w.hardState };
      return;
    case 'snapshot': {
      const m = w.snapshot.metadata;
      image.snapshot = w.snapshot;
      image.snapshotChain = w.chain;
      image.offset = m.index;
      image.offsetTerm = m.term;
      image.offsetChain = w.chain;
      image.entries = [];
      image.chains = [];
      return;
    }
    case 'create-snapshot': {
      const current = image.snapshot.metadata.index;
      if (w.index <= current) throw new Error(`${node}: snapshot at ${w.index} is not newer than ${current}`);
      if (w.index > lastIndexOf(image)) throw new Error(`${node}: snapshot at ${w.index} beyond last index ${lastIndexOf(image)}`);
      const at = w.index - image.offset - 1;
      image.snapshot = {
        metadata: { index: w.index, term: image.entries[at]!.term, confState: cloneConf(w.confState) },
        data: w.data,
      };
      image.snapshotChain = image.chains[at]!;
      return;
    }
    case 'compact': {
      if (w.index <= image.offset) return;
      if (w.index > image.snapshot.metadata.index) {
        throw new Error(`${node}: compact to ${w.index} past the snapshot at ${image.snapshot.metadata.index}`);
      }
      const drop = w.index - image.offset;
      image.offsetTerm = image.entries[drop - 1]!.term;
      image.offsetChain = image.chains[drop - 1]!;
      image.entries = image.entries.slice(drop);
      image.chains = image.chains.slice(drop);
      image.offset = w.index;
      return;
    }
  }
}

function cloneImage(image: LogImage): LogImage {
  return {
    ...image,
    hardState: { ...image.hardState },
    entries: image.entries.slice(),
    chains: image.chains.slice(),
  };
}

function cloneConf(conf: ConfState): ConfState {
  return { voters: [...conf.voters], learners: [...conf.learners] };
}

function cloneSnapshot(s: Snapshot): Snapshot {
  return { metadata: { ...s.metadata, confState: cloneConf(s.metadata.confState) }, data: s.data };
}
