/**
 * ConfChange as entry data: a small JSON document, so that a conf-change entry is readable in
 * a log dump and needs no schema library inside the core.
 */
import { FabricError } from '../core/index.ts';
import type { ConfChange } from './types.ts';

const CONF_CHANGE_TYPES: ReadonlySet<string> = new Set(['add-voter', 'remove-voter', 'add-learner']);

export function encodeConfChange(cc: ConfChange): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ type: cc.type, node: cc.node }));
}

/** Throws FabricError BAD_INPUT on anything that is not an encoded ConfChange. */
export function decodeConfChange(data: Uint8Array): ConfChange {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data));
  } catch (err) {
    throw new FabricError('BAD_INPUT', 'conf change: not JSON', { cause: err });
  }
  if (typeof value !== 'object' || value === null) throw new FabricError('BAD_INPUT', 'conf change: not an object');
  const { type, node } = value as Record<string, unknown>;
  if (typeof type !== 'string' || !CONF_CHANGE_TYPES.has(type)) throw new FabricError('BAD_INPUT', `conf change: unknown type ${String(type)}`);
  if (typeof node !== 'string' || node.length === 0) throw new FabricError('BAD_INPUT', 'conf change: node must be a non-empty string');
  return { type: type as ConfChange['type'], node };
}
