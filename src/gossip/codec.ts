/**
 * Gossip wire frames. Two kinds travel, both msgpack envelopes `{t, p, s}` where `p` is the
 * msgpack payload and `s` the sender's identity-key signature over it:
 *
 * - `state`: a full NodeState (sent on change, now and then as repair, and in pulls);
 * - `suspect`: `{peerId, fabricId, target, incarnation}`, the announcement by `peerId` that its
 *   probes of `target` (in that incarnation) failed; receivers probe `target` themselves.
 *
 * The signature covers a short domain tag followed by `p`: the tag keeps a signed announcement
 * from being replayed as a state (or as anything else the same key signs elsewhere), and
 * signing `p` itself rather than a re-encoding lets any peer relay a frame byte for byte.
 *
 * Every broadcast also carries `n`, a per-sender broadcast counter outside the signature. It
 * means nothing to us, but gossipsub (with StrictNoSign) names messages by a hash of their
 * bytes and drops repeats for minutes: without it, every periodic full-state rebroadcast and a
 * second announcement of the same suspicion would be discarded as duplicates.
 *
 * `decodeFrame` is the only door in from the wire: size limit first, then msgpack, then zod on
 * the envelope and the payload, then the fabric id, then the signature against the peer id the
 * payload CLAIMS — so nobody can speak for another peer. It never throws, whatever the bytes.
 */
import { Packr } from 'msgpackr';
import { z } from 'zod';
import { FabricError, errorMessage } from '../core/index.ts';
import type { Sign, Verify } from './ports.ts';
import { NodeStateSchema, type NodeState } from './state.ts';

/** Largest frame accepted or produced. A NodeState with 64 GPUs and a full link matrix fits well. */
export const MAX_FRAME_BYTES = 256 * 1024;

/** Room kept under MAX_FRAME_BYTES for the broadcast counter `n` (key + uint64 = 11 bytes). */
const STAMP_ALLOWANCE_BYTES = 16;

/** ed25519 signatures are 64 bytes; leave room for other key types without inviting junk. */
const MAX_SIGNATURE_BYTES = 1024;

const packr = new Packr({ useRecords: false });

const utf8 = new TextEncoder();
const SIGNING_DOMAIN = {
  state: utf8.encode('fabric/gossip/state/1\n'),
  suspect: utf8.encode('fabric/gossip/suspect/1\n'),
} as const;

export type FrameKind = keyof typeof SIGNING_DOMAIN;

export const SuspicionSchema = z.object({
  /** Who suspects: the signer. */
  peerId: z.string().min(1).max(128),
  fabricId: z.string().min(1).max(64),
  target: z.string().min(1).max(128),
  /** The target's incarnation as the announcer knew it. */
  incarnation: z.number().int().min(0),
});
export type Suspicion = z.infer<typeof SuspicionSchema>;

const BytesSchema = (maxBytes: number) =>
  z
    .custom<Uint8Array>((value) => value instanceof Uint8Array, 'expected bytes')
    .refine((value) => value.byteLength <= maxBytes, `at most ${maxBytes} bytes`);

const EnvelopeSchema = z.object({
  t: z.enum(['state', 'suspect']),
  p: BytesSchema(MAX_FRAME_BYTES),
  s: BytesSchema(MAX_SIGNATURE_BYTES).refine((sig) => sig.byteLength > 0, 'empty signature'),
  /** Broadcast counter; unsigned, only there to make each broadcast's bytes unique. */
  n: z.number().int().min(0).optional(),
});

/** Why a frame was refused; stable strings for logs and drop counters. */
export type DropReason =
  | 'not-bytes'
  | 'too-large'
  | 'malformed'
  | 'bad-envelope'
  | 'bad-payload'
  | 'wrong-fabric'
  | 'bad-signature';

export type DecodedFrame =
  /** `frame` is a private copy of the signed bytes, safe to store and relay verbatim. */
  | { ok: true; kind: 'state'; state: NodeState; frame: Uint8Array }
  | { ok: true; kind: 'suspect'; suspicion: Suspicion }
  | { ok: false; reason: DropReason; detail?: string };

/** Bytes of the message a frame's signature covers: domain tag, then the payload. */
function signedMessage(kind: FrameKind, payload: Uint8Array): Uint8Array {
  const domain = SIGNING_DOMAIN[kind];
  const message = new Uint8Array(domain.byteLength + payload.byteLength);
  message.set(domain, 0);
  message.set(payload, domain.byteLength);
  return message;
}

/** msgpackr packs into a shared scratch buffer; callers get bytes of their own. */
function pack(value: unknown): Uint8Array {
  return new Uint8Array(packr.pack(value));
}

async function encodeFrame(kind: FrameKind, payloadValue: unknown, sign: Sign): Promise<Uint8Array> {
  const payload = pack(payloadValue);
  const signature = await sign(signedMessage(kind, payload));
  const frame = pack({ t: kind, p: payload, s: signature });
  if (frame.byteLength + STAMP_ALLOWANCE_BYTES > MAX_FRAME_BYTES) {
    throw new FabricError('BAD_INPUT', `${kind} frame is ${frame.byteLength} bytes, over the ${MAX_FRAME_BYTES}-byte limit`);
  }
  return frame;
}

/**
 * Signs and frames this daemon's own state. Throws FabricError BAD_INPUT when the state would
 * be refused by receivers (schema or size), so a bad state is caught here, not on every peer.
 */
export async function encodeState(state: NodeState, sign: Sign): Promise<Uint8Array> {
  const parsed = NodeStateSchema.safeParse(state);
  if (!parsed.success) {
    throw new FabricError('BAD_INPUT', `invalid node state: ${parsed.error.message}`);
  }
  return encodeFrame('state', parsed.data, sign);
}

export async function encodeSuspicion(suspicion: Suspicion, sign: Sign): Promise<Uint8Array> {
  const parsed = SuspicionSchema.safeParse(suspicion);
  if (!parsed.success) {
    throw new FabricError('BAD_INPUT', `invalid suspicion: ${parsed.error.message}`);
  }
  return encodeFrame('suspect', parsed.data, sign);
}

/**
 * The same signed frame with broadcast counter `n` set in its envelope, so that no two
 * broadcasts of one sender are byte-identical (see the top of this file). For our own frames.
 */
export function stampForBroadcast(frame: Uint8Array, n: number): Uint8Array {
  const envelope = packr.unpack(frame) as { t: FrameKind; p: Uint8Array; s: Uint8Array };
  return pack({ t: envelope.t, p: envelope.p, s: envelope.s, n });
}

/**
 * What a frame claims to be, read WITHOUT any check: for skipping the signature check of a
 * relayed frame that could change nothing even if authentic. Never trust it for anything else.
 * Undefined when the frame does not even look like one of ours.
 */
export function peekClaim(bytes: Uint8Array): { kind: FrameKind; peerId: string; incarnation: number; seq: number } | undefined {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength > MAX_FRAME_BYTES) return undefined;
  const outer = unpack(bytes);
  if (!outer.ok) return undefined;
  const envelope = outer.value as { t?: unknown; p?: unknown } | null;
  if (typeof envelope !== 'object' || envelope === null || !(envelope.p instanceof Uint8Array)) return undefined;
  if (envelope.t !== 'state') return undefined;
  const inner = unpack(envelope.p);
  if (!inner.ok) return undefined;
  const claim = inner.value as { peerId?: unknown; incarnation?: unknown; seq?: unknown } | null;
  if (typeof claim !== 'object' || claim === null) return undefined;
  const { peerId, incarnation, seq } = claim;
  if (typeof peerId !== 'string' || typeof incarnation !== 'number' || typeof seq !== 'number') return undefined;
  return { kind: envelope.t, peerId, incarnation, seq };
}

function fail(reason: DropReason, detail?: string): DecodedFrame {
  return detail === undefined ? { ok: false, reason } : { ok: false, reason, detail };
}

function unpack(bytes: Uint8Array): { ok: true; value: unknown } | { ok: false; detail: string } {
  try {
    return { ok: true, value: packr.unpack(bytes) as unknown };
  } catch (err) {
    // Truncated data, trailing bytes, absurd lengths, stack exhaustion on deep nesting: all land here.
    return { ok: false, detail: errorMessage(err).slice(0, 200) };
  }
}

/** The fabric check and the signature check against the identity the payload claims. */
async function checkClaim(
  kind: FrameKind,
  claimed: { peerId: string; fabricId: string },
  payload: Uint8Array,
  signature: Uint8Array,
  verify: Verify,
  expectedFabricId: string,
): Promise<DecodedFrame | undefined> {
  if (claimed.fabricId !== expectedFabricId) return fail('wrong-fabric', claimed.fabricId);
  let authentic = false;
  try {
    authentic = (await verify(claimed.peerId, signedMessage(kind, payload), signature)) === true;
  } catch {
    authentic = false; // the port promises not to throw; a broken one must not let a frame in
  }
  return authentic ? undefined : fail('bad-signature', claimed.peerId);
}

/**
 * Decodes and authenticates one frame. Resolves (never rejects) to the verified content or to
 * the reason it was refused.
 */
export async function decodeFrame(bytes: Uint8Array, verify: Verify, expectedFabricId: string): Promise<DecodedFrame> {
  try {
    if (!(bytes instanceof Uint8Array)) return fail('not-bytes');
    if (bytes.byteLength > MAX_FRAME_BYTES) return fail('too-large', `${bytes.byteLength} bytes`);

    const outer = unpack(bytes);
    if (!outer.ok) return fail('malformed', outer.detail);
    const envelope = EnvelopeSchema.safeParse(outer.value);
    if (!envelope.success) return fail('bad-envelope', envelope.error.issues[0]?.message);
    const { t: kind, p: payload, s: signature } = envelope.data;

    const inner = unpack(payload);
    if (!inner.ok) return fail('bad-payload', inner.detail);

    if (kind === 'state') {
      const state = NodeStateSchema.safeParse(inner.value);
      if (!state.success) return fail('bad-payload', state.error.issues[0]?.message);
      const refusal = await checkClaim(kind, state.data, payload, signature, verify, expectedFabricId);
      return refusal ?? { ok: true, kind, state: state.data, frame: new Uint8Array(bytes) };
    }
    const suspicion = SuspicionSchema.safeParse(inner.value);
    if (!suspicion.success) return fail('bad-payload', suspicion.error.issues[0]?.message);
    const refusal = await checkClaim(kind, suspicion.data, payload, signature, verify, expectedFabricId);
    return refusal ?? { ok: true, kind, suspicion: suspicion.data };
  } catch (err) {
    // Defensive: nothing above should throw, but a frame must never take the daemon down.
    return fail('malformed', errorMessage(err).slice(0, 200));
  }
}
