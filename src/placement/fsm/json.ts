/**
 * Plain JSON values: what the replicated state may hold of a user's own data (a job's spec).
 * Checked explicitly because msgpack can carry more than JSON (bytes, extension types, dates)
 * and such values would not survive the API, YAML or a snapshot in the same shape.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

/** Deepest nesting accepted in a spec; deeper is a mistake or an attack, never a job. */
export const MAX_JSON_DEPTH = 32;

const utf8 = new TextEncoder();

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** The first reason `value` is not plain JSON, with the path to it; null when it is. */
export function jsonProblem(value: unknown, path = '$', depth = 0): string | null {
  if (depth > MAX_JSON_DEPTH) return `${path}: nested deeper than ${MAX_JSON_DEPTH} levels`;
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return null;
  if (typeof value === 'number') return Number.isFinite(value) ? null : `${path}: ${value} is not a finite number`;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = jsonProblem(value[i], `${path}[${i}]`, depth + 1);
      if (problem !== null) return problem;
    }
    return null;
  }
  if (isPlainObject(value)) {
    for (const [key, item] of Object.entries(value)) {
      const problem = jsonProblem(item, `${path}.${key}`, depth + 1);
      if (problem !== null) return problem;
    }
    return null;
  }
  return `${path}: ${typeof value === 'object' ? (value.constructor?.name ?? 'object') : typeof value} is not a JSON value`;
}

/** Why `value` is not a JSON object of at most `maxBytes` (as compact JSON); null when it is. */
export function jsonObjectProblem(value: unknown, maxBytes: number): string | null {
  if (!isPlainObject(value)) return 'expected a JSON object';
  const problem = jsonProblem(value);
  if (problem !== null) return problem;
  const bytes = utf8.encode(JSON.stringify(value)).byteLength;
  return bytes > maxBytes ? `${bytes} bytes as JSON, over the ${maxBytes}-byte limit` : null;
}

/**
 * A deep copy with every object's keys in code-unit order and undefined members dropped: the one
 * shape of a value, so that equal states encode to equal bytes whatever order they were built in.
 */
export function canonical<T>(value: T): T {
  if (Array.isArray(value)) return value.map((item: unknown) => canonical(item)) as T;
  if (value instanceof Uint8Array || typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record).sort(compareCodeUnits)) {
    const item = record[key];
    if (item !== undefined) out[key] = canonical(item);
  }
  return out as T;
}

/** String order by UTF-16 code units: the same on every machine, unlike localeCompare. */
export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
