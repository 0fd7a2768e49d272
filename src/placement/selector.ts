/**
 * Device selectors: a small, safe expression language over device attributes, in the spirit of
 * Kubernetes DRA device classes (which use CEL) but deliberately tiny: no functions, no loops, no
 * arithmetic, bounded length and depth, so a selector from an untrusted spec can be compiled and
 * evaluated against thousands of devices without risk.
 *
 * Grammar:
 *
 *   expr       := or
 *   or         := and ( "||" and )*
 *   and        := unary ( "&&" unary )*
 *   unary      := "!" unary | "(" expr ")" | test
 *   test       := ATTR                           (a boolean attribute)
 *               | ATTR OP literal                (OP: == != < <= > >= ~=)
 *               | ATTR "in" "[" literal ("," literal)* "]"
 *   literal    := "string" | 'string' | number | size (40GiB, 80GB) | true | false
 *   ATTR       := vendor | model | memory | computeCapability | architecture | interconnect
 *               | migCapable | migEnabled | numaNode | zone | region | cloud | spot
 *               | label.KEY  (KEY: letters, digits, . _ / -)
 *
 * Examples:
 *
 *   model ~= "H100" && memory >= 80GB
 *   computeCapability >= "8.0" && interconnect == "nvlink"
 *   vendor == "amd" || (migCapable && label.team in ["ml", "research"])
 *
 * Semantics: `~=` is the model match used by `models:` in a spec (case-insensitive, whole words:
 * "H100" matches "NVIDIA H100 80GB HBM3" but "T4" does not match "RTX 4090"); on `model`, `==`
 * and `in` match the same way; on other strings `==` ignores case. `memory` is the
 * device's memory in MiB and compares with sizes (a bare number is MiB). `computeCapability`
 * compares as a dotted version ("8.9" < "10.0"). A test on an attribute the device does not have
 * (an unknown compute capability, a missing label) is false, as a DRA selector that hits a missing
 * attribute does not match.
 */
import { parseMemoryMiB } from './quantity.ts';

/** What a selector sees of one device (and of the peer that holds it). */
export interface DeviceAttributes {
  vendor: string;
  model: string;
  memoryMiB: number;
  computeCapability: string | undefined;
  architecture: string | undefined;
  /** `nvlink` or `xgmi` when the device has such a link to another device of its host, else `pcie`. */
  interconnect: string;
  migCapable: boolean;
  migEnabled: boolean;
  numaNode: number | undefined;
  zone: string | undefined;
  region: string | undefined;
  cloud: string | undefined;
  spot: boolean;
  labels: Readonly<Record<string, string>>;
}

export type CompiledSelector = (device: DeviceAttributes) => boolean;

export const MAX_SELECTOR_LENGTH = 1024;
const MAX_DEPTH = 32;
const MAX_TESTS = 64;

type AttrKind = 'string' | 'model' | 'size' | 'number' | 'version' | 'bool';

const ATTRIBUTES: Readonly<Record<string, AttrKind>> = {
  vendor: 'string',
  model: 'model',
  memory: 'size',
  computeCapability: 'version',
  architecture: 'string',
  interconnect: 'string',
  migCapable: 'bool',
  migEnabled: 'bool',
  numaNode: 'number',
  zone: 'string',
  region: 'string',
  cloud: 'string',
  spot: 'bool',
};

function attributeValue(device: DeviceAttributes, name: string): string | number | boolean | undefined {
  if (name.startsWith('label.')) return device.labels[name.slice(6)];
  switch (name) {
    case 'vendor':
      return device.vendor;
    case 'model':
      return device.model;
    case 'memory':
      return device.memoryMiB;
    case 'computeCapability':
      return device.computeCapability;
    case 'architecture':
      return device.architecture;
    case 'interconnect':
      return device.interconnect;
    case 'migCapable':
      return device.migCapable;
    case 'migEnabled':
      return device.migEnabled;
    case 'numaNode':
      return device.numaNode;
    case 'zone':
      return device.zone;
    case 'region':
      return device.region;
    case 'cloud':
      return device.cloud;
    case 'spot':
      return device.spot;
    default:
      return undefined;
  }
}

// ---- model names ----

function modelTokens(name: string): string[] {
  return name
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((token) => token !== '');
}

/**
 * Whether a device model name matches a pattern from a spec: equal ignoring case, or the
 * pattern's words appear as consecutive words of the name ("A100-SXM4-80GB" matches
 * "NVIDIA A100-SXM4-80GB"; "H100" matches "NVIDIA H100 80GB HBM3"; "T4" does not match "RTX 4090").
 */
export function modelMatches(model: string, pattern: string): boolean {
  if (model.toLowerCase() === pattern.toLowerCase()) return true;
  const want = modelTokens(pattern);
  if (want.length === 0) return false;
  const have = modelTokens(model);
  outer: for (let start = 0; start + want.length <= have.length; start++) {
    for (let i = 0; i < want.length; i++) if (have[start + i] !== want[i]) continue outer;
    return true;
  }
  return false;
}

/** Compares dotted versions numerically ("8.9" < "10.0"); null when either is not a version. */
export function compareVersions(a: string, b: string): number | null {
  const re = /^\d+(\.\d+)*$/;
  if (!re.test(a) || !re.test(b)) return null;
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

// ---- lexer ----

type Token =
  | { t: 'ident'; v: string; at: number }
  | { t: 'string'; v: string; at: number }
  | { t: 'number'; v: string; at: number }
  | { t: 'op'; v: string; at: number }
  | { t: 'end'; at: number };

export class SelectorError extends Error {
  readonly position: number;
  constructor(message: string, position: number) {
    super(`${message} (at character ${position + 1})`);
    this.name = 'SelectorError';
    this.position = position;
  }
}

const OPERATORS = ['&&', '||', '==', '!=', '<=', '>=', '~=', '<', '>', '!', '(', ')', '[', ']', ','];

function lex(source: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < source.length) {
    const c = source[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < source.length && source[j] !== c) j++;
      if (j >= source.length) throw new SelectorError('unterminated string', i);
      tokens.push({ t: 'string', v: source.slice(i + 1, j), at: i });
      i = j + 1;
      continue;
    }
    if (/[0-9]/.test(c)) {
      const match = /^\d+(?:\.\d+)*[a-zA-Z]*/.exec(source.slice(i))!;
      tokens.push({ t: 'number', v: match[0], at: i });
      i += match[0].length;
      continue;
    }
    if (/[A-Za-z_]/.test(c)) {
      const match = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9][A-Za-z0-9._/-]*)?/.exec(source.slice(i))!;
      tokens.push({ t: 'ident', v: match[0], at: i });
      i += match[0].length;
      continue;
    }
    const op = OPERATORS.find((o) => source.startsWith(o, i));
    if (op === undefined) throw new SelectorError(`unexpected character "${c}"`, i);
    tokens.push({ t: 'op', v: op, at: i });
    i += op.length;
  }
  tokens.push({ t: 'end', at: source.length });
  return tokens;
}

// ---- parser → closures ----

type Literal = { kind: 'string' | 'number' | 'bool'; text: string; at: number };

class Parser {
  readonly #tokens: Token[];
  #pos = 0;
  #depth = 0;
  #tests = 0;

  constructor(tokens: Token[]) {
    this.#tokens = tokens;
  }

  #peek(): Token {
    return this.#tokens[this.#pos]!;
  }

  #take(): Token {
    return this.#tokens[this.#pos++]!;
  }

  #isOp(v: string): boolean {
    const token = this.#peek();
    return token.t === 'op' && token.v === v;
  }

  #expectOp(v: string): void {
    const token = this.#take();
    if (token.t !== 'op' || token.v !== v) throw new SelectorError(`expected "${v}"`, token.at);
  }

  parse(): CompiledSelector {
    const expr = this.#or();
    const rest = this.#peek();
    if (rest.t !== 'end') throw new SelectorError('unexpected text after the expression', rest.at);
    return expr;
  }

  #or(): CompiledSelector {
    const terms = [this.#and()];
    while (this.#isOp('||')) {
      this.#take();
      terms.push(this.#and());
    }
    return terms.length === 1 ? terms[0]! : (d) => terms.some((term) => term(d));
  }

  #and(): CompiledSelector {
    const terms = [this.#unary()];
    while (this.#isOp('&&')) {
      this.#take();
      terms.push(this.#unary());
    }
    return terms.length === 1 ? terms[0]! : (d) => terms.every((term) => term(d));
  }

  #unary(): CompiledSelector {
    const token = this.#peek();
    if (++this.#depth > MAX_DEPTH) throw new SelectorError(`nested deeper than ${MAX_DEPTH}`, token.at);
    try {
      if (this.#isOp('!')) {
        this.#take();
        const inner = this.#unary();
        return (d) => !inner(d);
      }
      if (this.#isOp('(')) {
        this.#take();
        const inner = this.#or();
        this.#expectOp(')');
        return inner;
      }
      return this.#test();
    } finally {
      this.#depth--;
    }
  }

  #test(): CompiledSelector {
    const token = this.#take();
    if (token.t !== 'ident') throw new SelectorError('expected an attribute name', token.at);
    if (++this.#tests > MAX_TESTS) throw new SelectorError(`more than ${MAX_TESTS} tests`, token.at);
    const name = token.v;
    const kind: AttrKind | undefined = name.startsWith('label.') ? 'string' : ATTRIBUTES[name];
    if (kind === undefined) {
      throw new SelectorError(`unknown attribute "${name}" (known: ${Object.keys(ATTRIBUTES).join(', ')}, label.KEY)`, token.at);
    }
    const next = this.#peek();
    if (next.t === 'ident' && next.v === 'in') {
      this.#take();
      this.#expectOp('[');
      const literals = [this.#literal()];
      while (this.#isOp(',')) {
        this.#take();
        literals.push(this.#literal());
      }
      this.#expectOp(']');
      const tests = literals.map((literal) => comparison(name, kind, '==', literal));
      return (d) => tests.some((test) => test(d));
    }
    if (next.t === 'op' && ['==', '!=', '<', '<=', '>', '>=', '~='].includes(next.v)) {
      this.#take();
      return comparison(name, kind, next.v, this.#literal());
    }
    if (kind !== 'bool') throw new SelectorError(`"${name}" is not true/false: compare it with a value`, next.at);
    return (d) => attributeValue(d, name) === true;
  }

  #literal(): Literal {
    const token = this.#take();
    if (token.t === 'string') return { kind: 'string', text: token.v, at: token.at };
    if (token.t === 'number') return { kind: 'number', text: token.v, at: token.at };
    if (token.t === 'ident' && (token.v === 'true' || token.v === 'false')) return { kind: 'bool', text: token.v, at: token.at };
    throw new SelectorError('expected a value (a "string", a number, a size such as 40GiB, true or false)', token.at);
  }
}

function comparison(name: string, kind: AttrKind, op: string, literal: Literal): CompiledSelector {
  const ordered = op === '<' || op === '<=' || op === '>' || op === '>=';
  const decide = (d: number): boolean => {
    switch (op) {
      case '==':
      case '~=':
        return d === 0;
      case '!=':
        return d !== 0;
      case '<':
        return d < 0;
      case '<=':
        return d <= 0;
      case '>':
        return d > 0;
      default:
        return d >= 0;
    }
  };

  if (op === '~=' && kind !== 'model' && kind !== 'string') {
    throw new SelectorError(`"~=" matches model names, not ${name}`, literal.at);
  }
  switch (kind) {
    case 'bool': {
      if (literal.kind !== 'bool') throw new SelectorError(`${name} is true or false`, literal.at);
      if (ordered) throw new SelectorError(`${name} cannot be ordered`, literal.at);
      const want = literal.text === 'true';
      return (d) => {
        const value = attributeValue(d, name);
        return typeof value === 'boolean' && decide(value === want ? 0 : 1);
      };
    }
    case 'size':
    case 'number': {
      if (literal.kind !== 'number') throw new SelectorError(`${name} compares with a number${kind === 'size' ? ' or a size' : ''}`, literal.at);
      let want: number;
      if (kind === 'size') {
        const mib = parseMemoryMiB(literal.text);
        if (typeof mib === 'string') throw new SelectorError(mib, literal.at);
        want = mib;
      } else {
        want = Number(literal.text);
        if (!Number.isFinite(want)) throw new SelectorError(`"${literal.text}" is not a number`, literal.at);
      }
      return (d) => {
        const value = attributeValue(d, name);
        return typeof value === 'number' && decide(value - want);
      };
    }
    case 'version': {
      if (literal.kind === 'bool') throw new SelectorError(`${name} compares with a version such as "8.0"`, literal.at);
      const want = literal.text;
      return (d) => {
        const value = attributeValue(d, name);
        if (typeof value !== 'string') return false;
        const c = compareVersions(value, want);
        if (c === null) return !ordered && decide(value.toLowerCase() === want.toLowerCase() ? 0 : 1);
        return decide(c);
      };
    }
    case 'model':
    case 'string': {
      if (literal.kind === 'bool') throw new SelectorError(`${name} compares with a "string"`, literal.at);
      if (ordered) throw new SelectorError(`${name} cannot be ordered; use == != ~= or in`, literal.at);
      const want = literal.text;
      const fuzzy = op === '~=' || kind === 'model';
      return (d) => {
        const value = attributeValue(d, name);
        if (typeof value !== 'string') return false;
        const same = fuzzy ? modelMatches(value, want) : value.toLowerCase() === want.toLowerCase();
        return decide(same ? 0 : 1);
      };
    }
  }
}

/** Compiles a selector; throws SelectorError naming the position of the first problem. */
export function compileSelector(source: string): CompiledSelector {
  if (source.length > MAX_SELECTOR_LENGTH) throw new SelectorError(`longer than ${MAX_SELECTOR_LENGTH} characters`, MAX_SELECTOR_LENGTH);
  if (source.trim() === '') throw new SelectorError('empty selector', 0);
  return new Parser(lex(source)).parse();
}

/** A selector's first problem, or null when it compiles. */
export function selectorProblem(source: string): string | null {
  try {
    compileSelector(source);
    return null;
  } catch (err) {
    if (err instanceof SelectorError) return err.message;
    throw err;
  }
}
