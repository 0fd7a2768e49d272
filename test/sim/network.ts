/**
 * A simulated network between endpoints (nodes and clients) with seeded faults: each message is
 * dropped, duplicated, or delivered after a random latency, so messages overtake one another
 * (reordering) and occasional spikes hold one back for long. Partitions split the nodes into
 * arbitrary groups, and single links can be cut one way; a message crosses only when its link is
 * up both when it is sent and when it arrives (a cut link also loses what was in flight on it).
 */
import type { Rng } from '../../src/core/index.ts';
import type { Scheduler } from './scheduler.ts';

export interface NetworkFaults {
  dropRate: number;
  duplicateRate: number;
  minLatencyMs: number;
  maxLatencyMs: number;
  /** Chance that a message is held back by up to `spikeMaxMs` more (strong reordering). */
  spikeRate: number;
  spikeMaxMs: number;
}

export const RELIABLE: NetworkFaults = {
  dropRate: 0,
  duplicateRate: 0,
  minLatencyMs: 1,
  maxLatencyMs: 5,
  spikeRate: 0,
  spikeMaxMs: 0,
};

export interface NetworkStats {
  sent: number;
  delivered: number;
  dropped: number;
  duplicated: number;
  cut: number;
}

export class SimNetwork<M> {
  readonly #scheduler: Scheduler;
  readonly #rng: Rng;
  readonly #deliver: (from: string, to: string, message: M) => void;
  /** Every delivery gets its own copy, as from a real wire: no object is shared between endpoints. */
  readonly #copy: (message: M) => M;
  #faults: NetworkFaults = RELIABLE;
  /** Endpoint → group number; endpoints absent from the map reach everyone (clients, when unpartitioned). */
  #groups = new Map<string, number>();
  /** One-way cuts, `from>to`: a node that can send but not hear, or hear but not be heard. */
  #oneWay = new Set<string>();
  readonly stats: NetworkStats = { sent: 0, delivered: 0, dropped: 0, duplicated: 0, cut: 0 };

  constructor(
    scheduler: Scheduler,
    rng: Rng,
    deliver: (from: string, to: string, message: M) => void,
    copy: (message: M) => M,
  ) {
    this.#scheduler = scheduler;
    this.#rng = rng;
    this.#deliver = deliver;
    this.#copy = copy;
  }

  setFaults(faults: NetworkFaults): void {
    this.#faults = faults;
  }

  faults(): NetworkFaults {
    return this.#faults;
  }

  /** Splits the listed endpoints into groups that cannot reach one another; unlisted ones reach all. */
  partition(groups: readonly (readonly string[])[]): void {
    this.#groups = new Map();
    groups.forEach((group, i) => {
      for (const endpoint of group) this.#groups.set(endpoint, i);
    });
  }

  /** Cuts the link from `from` to `to` only; messages the other way still pass. */
  cutOneWay(from: string, to: string): void {
    this.#oneWay.add(`${from}>${to}`);
  }

  heal(): void {
    this.#groups = new Map();
    this.#oneWay = new Set();
  }

  isPartitioned(): boolean {
    return this.#groups.size > 0 || this.#oneWay.size > 0;
  }

  /** The current groups, for traces and reports. */
  describePartition(): string {
    const oneWay = [...this.#oneWay].map((link) => link.replace('>', '-/->'));
    if (this.#groups.size === 0) return oneWay.length === 0 ? 'none' : oneWay.join(' ');
    const byGroup = new Map<number, string[]>();
    for (const [endpoint, group] of this.#groups) {
      const members = byGroup.get(group) ?? [];
      members.push(endpoint);
      byGroup.set(group, members);
    }
    return [[...byGroup.values()].map((g) => g.join(',')).join(' | '), ...oneWay].join(' ');
  }

  /** Whether a message from `a` reaches `b` now. */
  connected(a: string, b: string): boolean {
    if (this.#oneWay.size > 0 && this.#oneWay.has(`${a}>${b}`)) return false;
    const ga = this.#groups.get(a);
    const gb = this.#groups.get(b);
    return ga === undefined || gb === undefined || ga === gb;
  }

  /**
   * Sends a copy (two when duplicated) of `message`. `outcome`, when given, hears whether the
   * first copy arrived, when it arrives or is lost: what a sender learns from its connection.
   */
  send(from: string, to: string, message: M, outcome?: (delivered: boolean) => void): void {
    this.stats.sent++;
    const f = this.#faults;
    if (!this.connected(from, to)) {
      this.stats.cut++;
      outcome?.(false);
      return;
    }
    if (f.dropRate > 0 && this.#rng.next() < f.dropRate) {
      this.stats.dropped++;
      this.#scheduler.setTimer(this.#latency(), () => outcome?.(false));
      return;
    }
    let copies = 1;
    if (f.duplicateRate > 0 && this.#rng.next() < f.duplicateRate) {
      copies = 2;
      this.stats.duplicated++;
    }
    for (let i = 0; i < copies; i++) {
      const copy = this.#copy(message);
      const report = i === 0 ? outcome : undefined;
      this.#scheduler.setTimer(this.#latency(), () => {
        if (!this.connected(from, to)) {
          this.stats.cut++;
          report?.(false);
          return;
        }
        this.stats.delivered++;
        this.#deliver(from, to, copy);
        report?.(true);
      });
    }
  }

  #latency(): number {
    const f = this.#faults;
    let ms = f.minLatencyMs + this.#rng.int(Math.max(1, f.maxLatencyMs - f.minLatencyMs + 1));
    if (f.spikeRate > 0 && this.#rng.next() < f.spikeRate) ms += this.#rng.int(Math.max(1, f.spikeMaxMs));
    return ms;
  }
}
