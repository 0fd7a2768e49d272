/**
 * Time as a port. Pure modules never read the wall clock or start timers themselves; the
 * composition root hands them a Clock, the deterministic simulation hands them a simulated one.
 */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since some fixed origin; monotonic. */
  now(): number;
  /** Runs `fn` once after `ms`; the returned timer cancels it. */
  setTimer(ms: number, fn: () => void): Timer;
}

/** A manually advanced clock for unit tests and the simulation: `advance` fires due timers in order. */
export class ManualClock implements Clock {
  #now: number;
  #seq = 0;
  #timers = new Map<number, { at: number; seq: number; fn: () => void }>();

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimer(ms: number, fn: () => void): Timer {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), seq: id, fn });
    return { cancel: () => void this.#timers.delete(id) };
  }

  /** Moves time forward by `ms`, firing every timer that falls due, earliest first. */
  advance(ms: number): void {
    const target = this.#now + ms;
    for (;;) {
      let next: { id: number; at: number; seq: number; fn: () => void } | undefined;
      for (const [id, t] of this.#timers) {
        if (t.at <= target && (next === undefined || t.at < next.at || (t.at === next.at && t.seq < next.seq))) {
          next = { id, ...t };
        }
      }
      if (next === undefined) break;
      this.#timers.delete(next.id);
      this.#now = Math.max(this.#now, next.at);
      next.fn();
    }
    this.#now = target;
  }

  pendingTimers(): number {
    return this.#timers.size;
  }
}
