/**
 * The replicated state machine of the simulation: a key-value store with put and compare-and-set,
 * and a session table for exactly-once writes (Raft dissertation §6.3): each client numbers its
 * requests and retries a request with the same number, so a write proposed twice (a retry after a
 * leader change, a duplicated message) takes effect once and the retry gets the first answer.
 */

export type KvOp =
  | { kind: 'put'; key: string; value: string }
  | { kind: 'cas'; key: string; expected: string | null; value: string };

export interface KvCommand {
  client: string;
  /** The client's request number, its idempotency id; a client has one request open at a time. */
  seq: number;
  op: KvOp;
}

/** put: always ok; cas: ok when the current value was the expected one. */
export interface KvResult {
  ok: boolean;
}

interface Session {
  seq: number;
  result: KvResult;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeCommand(command: KvCommand): Uint8Array {
  return encoder.encode(JSON.stringify(command));
}

export function decodeCommand(data: Uint8Array): KvCommand {
  return JSON.parse(decoder.decode(data)) as KvCommand;
}

export interface ApplyOutcome {
  command: KvCommand;
  /** The answer for the client; undefined for a stale duplicate (the client has moved on). */
  result: KvResult | undefined;
  /** False when the session table recognised a retry. */
  executed: boolean;
}

export class KvStore {
  #data = new Map<string, string>();
  #sessions = new Map<string, Session>();

  get(key: string): string | null {
    return this.#data.get(key) ?? null;
  }

  apply(command: KvCommand): ApplyOutcome {
    const session = this.#sessions.get(command.client);
    if (session !== undefined && command.seq <= session.seq) {
      return { command, result: command.seq === session.seq ? session.result : undefined, executed: false };
    }
    const op = command.op;
    let result: KvResult;
    if (op.kind === 'put') {
      this.#data.set(op.key, op.value);
      result = { ok: true };
    } else {
      const current = this.#data.get(op.key) ?? null;
      result = { ok: current === op.expected };
      if (result.ok) this.#data.set(op.key, op.value);
    }
    this.#sessions.set(command.client, { seq: command.seq, result });
    return { command, result, executed: true };
  }

  /** Deterministic bytes (keys sorted), so equal states give equal snapshots. */
  snapshot(): Uint8Array {
    const data = [...this.#data.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const sessions = [...this.#sessions.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return encoder.encode(JSON.stringify({ data, sessions }));
  }

  static restore(bytes: Uint8Array): KvStore {
    const kv = new KvStore();
    if (bytes.length === 0) return kv;
    const parsed = JSON.parse(decoder.decode(bytes)) as { data: [string, string][]; sessions: [string, Session][] };
    kv.#data = new Map(parsed.data);
    kv.#sessions = new Map(parsed.sessions);
    return kv;
  }
}
