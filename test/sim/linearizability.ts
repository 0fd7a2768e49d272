/**
 * A linearizability checker for the clients' history of a key-value store, in the manner of
 * Wing & Gong as refined by Lowe and by Porcupine: the history is split per key (a register per
 * key; linearizability is compositional), then a depth-first search tries to order the operations
 * so that each takes effect at one instant between its call and its return, memoizing the
 * (set of operations already placed, register value) pairs it has explored.
 *
 * An operation whose outcome is unknown (the client gave up or the run ended) may take effect at
 * any time after its call, or never: it has no return, so it never forces the search back.
 */

export type KvInput =
  | { kind: 'get' }
  | { kind: 'put'; value: string }
  | { kind: 'cas'; expected: string | null; value: string };

export type KvOutput =
  | { kind: 'get'; value: string | null }
  | { kind: 'put' }
  | { kind: 'cas'; ok: boolean }
  /** Unknown: it may have taken effect or not. */
  | { kind: 'unknown' }
  /** Failed for sure: it did not take effect (the checker leaves it out). */
  | { kind: 'fail' };

export interface Operation {
  client: string;
  key: string;
  input: KvInput;
  output: KvOutput;
  /** Logical time of the call; strictly ordered with every other call and return. */
  call: number;
  /** Logical time of the return; undefined when the outcome is unknown. */
  ret: number | undefined;
}

export type CheckResult =
  | { ok: true; keys: number; operations: number }
  | { ok: false; key: string; reason: string; operations: Operation[] };

/** Explored states beyond which a key's history is declared too hard (keep histories small instead). */
const DEFAULT_BUDGET = 2_000_000;

export function checkLinearizable(history: readonly Operation[], budget = DEFAULT_BUDGET): CheckResult {
  const byKey = new Map<string, Operation[]>();
  for (const op of history) {
    // A read that never returned says nothing; an operation that surely failed did nothing.
    if (op.output.kind === 'fail' || (op.input.kind === 'get' && op.output.kind === 'unknown')) continue;
    const ops = byKey.get(op.key) ?? [];
    ops.push(op);
    byKey.set(op.key, ops);
  }
  let operations = 0;
  for (const key of [...byKey.keys()].sort()) {
    const ops = byKey.get(key)!;
    operations += ops.length;
    const verdict = checkRegister(ops, budget);
    if (verdict !== 'linearizable') {
      return { ok: false, key, reason: verdict === 'budget' ? `search budget of ${budget} states exceeded` : 'no linearization exists', operations: ops };
    }
  }
  return { ok: true, keys: byKey.size, operations };
}

type Register = string | null;

/** One step of the register model; undefined when the observed output is impossible from `state`. */
function step(state: Register, input: KvInput, output: KvOutput): Register | undefined {
  switch (input.kind) {
    case 'get':
      return output.kind === 'get' && output.value === state ? state : undefined;
    case 'put':
      return input.value;
    case 'cas': {
      const succeeds = state === input.expected;
      if (output.kind === 'cas' && output.ok !== succeeds) return undefined;
      return succeeds ? input.value : state;
    }
  }
}

interface ListEntry {
  /** Operation number; the same for an operation's call and return entries. */
  id: number;
  isCall: boolean;
  time: number;
  /** For a call: its return entry (absent when the outcome is unknown). */
  match: ListEntry | undefined;
  prev: ListEntry | undefined;
  next: ListEntry | undefined;
}

function checkRegister(ops: readonly Operation[], budget: number): 'linearizable' | 'not' | 'budget' {
  const events: ListEntry[] = [];
  ops.forEach((op, id) => {
    const call: ListEntry = { id, isCall: true, time: op.call, match: undefined, prev: undefined, next: undefined };
    events.push(call);
    if (op.ret !== undefined) {
      if (op.ret < op.call) throw new Error(`operation returns before its call: ${JSON.stringify(op)}`);
      const ret: ListEntry = { id, isCall: false, time: op.ret, match: undefined, prev: undefined, next: undefined };
      call.match = ret;
      events.push(ret);
    }
  });
  // Calls sort before returns at equal times only through distinct logical times; keep it stable.
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.id - b.id : a.isCall ? 1 : -1));
  const head: ListEntry = { id: -1, isCall: false, time: -Infinity, match: undefined, prev: undefined, next: undefined };
  let tail = head;
  for (const e of events) {
    e.prev = tail;
    tail.next = e;
    tail = e;
  }

  const lift = (call: ListEntry): void => {
    call.prev!.next = call.next;
    if (call.next !== undefined) call.next.prev = call.prev;
    const ret = call.match;
    if (ret !== undefined) {
      ret.prev!.next = ret.next;
      if (ret.next !== undefined) ret.next.prev = ret.prev;
    }
  };
  const unlift = (call: ListEntry): void => {
    const ret = call.match;
    if (ret !== undefined) {
      ret.prev!.next = ret;
      if (ret.next !== undefined) ret.next.prev = ret;
    }
    call.prev!.next = call;
    if (call.next !== undefined) call.next.prev = call;
  };

  const words = Math.ceil(ops.length / 32);
  const linearized = new Uint32Array(words);
  const seen = new Set<string>();
  const stack: { call: ListEntry; state: Register }[] = [];
  let state: Register = null;
  let explored = 0;
  let entry = head.next;

  while (entry !== undefined) {
    if (entry.isCall) {
      const op = ops[entry.id]!;
      const next = step(state, op.input, op.output);
      if (next !== undefined) {
        linearized[entry.id >> 5]! ^= 1 << (entry.id & 31);
        const memo = `${linearized.join(',')}|${next === null ? '\u0000' : next}`;
        if (!seen.has(memo)) {
          seen.add(memo);
          if (++explored > budget) return 'budget';
          stack.push({ call: entry, state });
          state = next;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized[entry.id >> 5]! ^= 1 << (entry.id & 31);
      }
      entry = entry.next;
    } else {
      // A return whose operation is not placed yet: undo the last choice and try the next one.
      const top = stack.pop();
      if (top === undefined) return 'not';
      state = top.state;
      linearized[top.call.id >> 5]! ^= 1 << (top.call.id & 31);
      unlift(top.call);
      entry = top.call.next;
    }
  }
  // Every operation that returned is placed; the unknown ones left may all take effect "never".
  return 'linearizable';
}
