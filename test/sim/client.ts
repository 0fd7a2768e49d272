/**
 * A simulated client: one request at a time (put, compare-and-set or a linearizable get on a
 * few shared keys), sent to the node it believes leads, retried with the SAME request number on
 * a timeout (waiting longer each time) or a redirect, to another node when it has no better guess. It records every
 * operation's call and return (in the cluster's logical time) for the linearizability checker.
 */
import type { Rng } from '../../src/core/index.ts';
import type { KvInput, KvOutput, Operation } from './linearizability.ts';
import type { Scheduler } from './scheduler.ts';
import type { ClientOp, ClientResponse, Wire } from './wire.ts';

/** The longest a client waits for an answer before it tries again. */
const MAX_TIMEOUT_MS = 2000;

export interface ClientParams {
  keys: readonly string[];
  thinkMs: number;
  timeoutMs: number;
}

export interface ClientContext {
  readonly scheduler: Scheduler;
  readonly rng: Rng;
  send(from: string, to: string, wire: Wire): void;
  /** The nodes a client may address (the latest configuration's members). */
  members(): readonly string[];
  /** A strictly increasing logical time for call and return events. */
  logicalTime(): number;
  trace(line: string): void;
}

interface InFlight {
  seq: number;
  op: ClientOp;
  record: Operation;
  attempt: number;
  timer: { cancel(): void } | undefined;
}

export class SimClient {
  readonly id: string;
  readonly history: Operation[] = [];
  readonly #params: ClientParams;
  readonly #ctx: ClientContext;
  #seq = 0;
  #current: InFlight | undefined;
  #leaderHint: string | undefined;
  /** The last value this client saw per key: compare-and-set expects it, so some succeed. */
  #lastSeen = new Map<string, string | null>();
  /** Ops left before stopping; undefined while unbounded. */
  #remaining: number | undefined;
  completed = 0;
  retries = 0;

  constructor(id: string, params: ClientParams, ctx: ClientContext) {
    this.id = id;
    this.#params = params;
    this.#ctx = ctx;
  }

  start(): void {
    this.#scheduleNext();
  }

  /** Finish the request in flight, then issue `more` further ones, then stop. */
  wrapUp(more: number): void {
    this.#remaining = more;
  }

  idle(): boolean {
    return this.#current === undefined && this.#remaining === 0;
  }

  inFlight(): string | undefined {
    const c = this.#current;
    return c === undefined ? undefined : `${this.id}#${c.seq} ${c.op.kind} ${c.op.key} (try ${c.attempt})`;
  }

  /** The run is over: an operation still in flight has an unknown outcome. */
  abandon(): void {
    this.#current?.timer?.cancel();
    this.#current = undefined;
    this.#remaining = 0;
  }

  receive(response: ClientResponse): void {
    const c = this.#current;
    if (c === undefined || response.seq !== c.seq) return; // a duplicate, or an answer to an earlier request
    const answer = response.answer;
    if (answer.kind === 'redirect') {
      if (response.attempt !== c.attempt) return;
      c.timer?.cancel();
      this.#leaderHint = answer.leader ?? undefined;
      // Back off a little: an election may be under way.
      const attempt = c.attempt;
      c.timer = this.#ctx.scheduler.setTimer(5 + this.#ctx.rng.int(20), () => {
        if (this.#current === c && c.attempt === attempt) this.#sendTry(c);
      });
      return;
    }
    c.timer?.cancel();
    let output: KvOutput;
    if (answer.kind === 'read') {
      if (c.op.kind !== 'get') return;
      output = { kind: 'get', value: answer.value };
      this.#lastSeen.set(c.op.key, answer.value);
    } else {
      if (c.op.kind === 'get') return;
      output = c.op.kind === 'put' ? { kind: 'put' } : { kind: 'cas', ok: answer.ok };
      if (c.op.kind === 'put' || answer.ok) this.#lastSeen.set(c.op.key, c.op.value);
    }
    c.record.output = output;
    c.record.ret = this.#ctx.logicalTime();
    this.#ctx.trace(`${this.id}#${c.seq} ${describe(c.op)} → ${JSON.stringify(output)}`);
    this.#current = undefined;
    this.completed++;
    this.#scheduleNext();
  }

  #scheduleNext(): void {
    if (this.#remaining !== undefined) {
      if (this.#remaining === 0) return;
      this.#remaining--;
    }
    this.#ctx.scheduler.setTimer(this.#ctx.rng.int(this.#params.thinkMs + 1), () => this.#issue());
  }

  #issue(): void {
    const rng = this.#ctx.rng;
    const key = this.#params.keys[rng.int(this.#params.keys.length)]!;
    const seq = ++this.#seq;
    const value = `${this.id}.${seq}`;
    const roll = rng.next();
    let op: ClientOp;
    let input: KvInput;
    if (roll < 0.4) {
      op = { kind: 'get', key };
      input = { kind: 'get' };
    } else if (roll < 0.75) {
      op = { kind: 'put', key, value };
      input = { kind: 'put', value };
    } else {
      const expected = this.#lastSeen.get(key) ?? null;
      op = { kind: 'cas', key, expected, value };
      input = { kind: 'cas', expected, value };
    }
    const record: Operation = { client: this.id, key, input, output: { kind: 'unknown' }, call: this.#ctx.logicalTime(), ret: undefined };
    this.history.push(record);
    const c: InFlight = { seq, op, record, attempt: 0, timer: undefined };
    this.#current = c;
    this.#sendTry(c);
  }

  #sendTry(c: InFlight): void {
    const members = this.#ctx.members();
    const hint = this.#leaderHint;
    const target = hint !== undefined && members.includes(hint) ? hint : members[this.#ctx.rng.int(members.length)]!;
    c.attempt++;
    if (c.attempt > 1) this.retries++;
    const attempt = c.attempt;
    this.#ctx.send(this.id, target, { kind: 'request', request: { client: this.id, seq: c.seq, attempt, op: c.op } });
    // Exponential backoff: every retry of a write appends to the log again, and retrying faster
    // than the cluster commits would bury it under its own retries (congestion collapse).
    const backoff = Math.min(this.#params.timeoutMs * 2 ** Math.min(attempt - 1, 5), MAX_TIMEOUT_MS);
    const timeout = backoff + this.#ctx.rng.int(Math.max(1, backoff >> 2));
    c.timer = this.#ctx.scheduler.setTimer(timeout, () => {
      if (this.#current !== c || c.attempt !== attempt) return;
      this.#leaderHint = undefined; // the guess did not answer: try someone else
      this.#sendTry(c);
    });
  }
}

function describe(op: ClientOp): string {
  switch (op.kind) {
    case 'get':
      return `get ${op.key}`;
    case 'put':
      return `put ${op.key}=${op.value}`;
    case 'cas':
      return `cas ${op.key} ${op.expected ?? 'null'}→${op.value}`;
  }
}
