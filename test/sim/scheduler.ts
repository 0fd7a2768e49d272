/**
 * Simulated time: a queue of events ordered by (time, insertion order). `runNext` jumps the clock
 * straight to the next event, so a simulated minute costs only the work done in it, and two runs
 * with the same seed process the same events in the same order.
 */
import type { Clock, Timer } from '../../src/core/index.ts';

interface SimEvent {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

export class Scheduler implements Clock {
  #now = 0;
  #seq = 0;
  /** Binary min-heap on (at, seq). */
  #heap: SimEvent[] = [];
  #live = 0;

  now(): number {
    return this.#now;
  }

  /** Runs `fn` at `now + delayMs` (never in the past). */
  setTimer(delayMs: number, fn: () => void): Timer {
    const event: SimEvent = { at: this.#now + Math.max(0, delayMs), seq: this.#seq++, fn, cancelled: false };
    this.#push(event);
    this.#live++;
    return {
      cancel: () => {
        if (!event.cancelled) {
          event.cancelled = true;
          this.#live--;
        }
      },
    };
  }

  /** Events still to run (cancelled ones not counted). */
  pending(): number {
    return this.#live;
  }

  /** Time of the next live event, or undefined when the queue is empty. */
  peekTime(): number | undefined {
    this.#dropCancelledHead();
    return this.#heap[0]?.at;
  }

  /** Jumps to the next event and runs it; false when there is none. */
  runNext(): boolean {
    this.#dropCancelledHead();
    const event = this.#pop();
    if (event === undefined) return false;
    this.#live--;
    event.cancelled = true;
    this.#now = event.at;
    event.fn();
    return true;
  }

  #dropCancelledHead(): void {
    while (this.#heap.length > 0 && this.#heap[0]!.cancelled) this.#pop();
  }

  #push(event: SimEvent): void {
    const heap = this.#heap;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  #pop(): SimEvent | undefined {
    const heap = this.#heap;
    if (heap.length === 0) return undefined;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let smallest = i;
        if (l < heap.length && before(heap[l]!, heap[smallest]!)) smallest = l;
        if (r < heap.length && before(heap[r]!, heap[smallest]!)) smallest = r;
        if (smallest === i) break;
        [heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!];
        i = smallest;
      }
    }
    return top;
  }
}

function before(a: SimEvent, b: SimEvent): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}
