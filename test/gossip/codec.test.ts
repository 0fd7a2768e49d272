import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { MAX_FRAME_BYTES, decodeFrame, encodeState, encodeSuspicion, stampForBroadcast } from '../../src/gossip/codec.ts';
import { FABRIC_ID, KeyRing, makeState } from './mem-transport.ts';

const packr = new Packr({ useRecords: false });
const keys = new KeyRing();
const signA = keys.signerFor('peer-a');
const signB = keys.signerFor('peer-b');

describe('codec: valid frames', () => {
  it('round-trips a state frame and hands back a private copy of the signed bytes', async () => {
    const state = makeState('peer-a', { seq: 3 });
    const frame = await encodeState(state, signA);
    const decoded = await decodeFrame(frame, keys.verify, FABRIC_ID);
    expect(decoded.ok).toBe(true);
    if (!decoded.ok || decoded.kind !== 'state') throw new Error('expected a state');
    expect(decoded.state).toEqual(state);
    expect(Buffer.compare(decoded.frame, frame)).toBe(0);
    frame[frame.length - 1] = frame[frame.length - 1]! ^ 0xff; // the transport reusing its buffer must not touch what we keep
    expect(Buffer.compare(decoded.frame, frame)).not.toBe(0);
  });

  it('round-trips a suspicion announcement, which stays small', async () => {
    const suspicion = { peerId: 'peer-a', fabricId: FABRIC_ID, target: 'peer-b', incarnation: 2 };
    const frame = await encodeSuspicion(suspicion, signA);
    expect(frame.byteLength).toBeLessThan(200);
    expect(await decodeFrame(frame, keys.verify, FABRIC_ID)).toEqual({ ok: true, kind: 'suspect', suspicion });
    await expect(encodeSuspicion({ ...suspicion, target: '' }, signA)).rejects.toThrow(/invalid suspicion/);
  });

  it('stamps broadcasts so that repeats differ byte for byte yet decode to the same content', async () => {
    const suspicion = { peerId: 'peer-a', fabricId: FABRIC_ID, target: 'peer-b', incarnation: 2 };
    const frame = await encodeSuspicion(suspicion, signA);
    const first = stampForBroadcast(frame, 1);
    const second = stampForBroadcast(frame, 2);
    expect(Buffer.compare(first, second)).not.toBe(0);
    for (const stamped of [first, second]) {
      expect(await decodeFrame(stamped, keys.verify, FABRIC_ID)).toEqual({ ok: true, kind: 'suspect', suspicion });
    }
    const badStamp = packr.pack({ ...(packr.unpack(frame) as object), n: 'x' });
    expect(await decodeFrame(badStamp, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'bad-envelope' });
  });

  it('refuses to encode a state peers would refuse', async () => {
    const bad = { ...makeState('peer-a'), seq: -1 };
    await expect(encodeState(bad, signA)).rejects.toSatisfy((err) => isFabricError(err, 'BAD_INPUT'));
    const huge = makeState('peer-a', { addrs: Array.from({ length: 32 }, () => 'x'.repeat(512)) });
    huge.inventory.warnings = Array.from({ length: 16 }, () => 'w'.repeat(512));
    huge.load.allocatedDevices = Array.from({ length: 512 }, () => 'd'.repeat(128));
    huge.labels.extra = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, 'v'.repeat(255)]));
    huge.inventory.devices = Array.from({ length: 64 }, (_, i) => ({
      index: i,
      uuid: 'u'.repeat(128),
      vendor: 'nvidia' as const,
      model: 'm'.repeat(128),
      memoryMiB: 1,
      migEnabled: true,
      migInstances: Array.from({ length: 20 }, () => ({ uuid: 'M'.repeat(128), profile: 'p'.repeat(64), gpuInstanceId: 1, memoryMiB: 1 })),
    }));
    await expect(encodeState(huge, signA)).rejects.toThrow(/limit/);
  });
});

describe('codec: refusals', () => {
  it('refuses a frame of another fabric', async () => {
    const frame = await encodeState(makeState('peer-a', { fabricId: 'other-fabric' }), signA);
    expect(await decodeFrame(frame, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'wrong-fabric' });
  });

  it('refuses a state that claims another peer than its signer', async () => {
    // peer-b signs a state that says it is peer-a: the signature is checked against peer-a's key.
    const forged = await encodeState(makeState('peer-a'), signB);
    expect(await decodeFrame(forged, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'bad-signature' });
    const forgedNotice = await encodeSuspicion({ peerId: 'peer-a', fabricId: FABRIC_ID, target: 'peer-c', incarnation: 9 }, signB);
    expect(await decodeFrame(forgedNotice, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'bad-signature' });
  });

  it('refuses a payload signed for another kind of frame (domain separation)', async () => {
    // A valid announcement payload, signed as if it were a state: the domain tag differs.
    const payload = packr.pack({ peerId: 'peer-a', fabricId: FABRIC_ID, target: 'peer-b', incarnation: 1 });
    const asState = new Uint8Array([...new TextEncoder().encode('fabric/gossip/state/1\n'), ...payload]);
    const frame = packr.pack({ t: 'suspect', p: payload, s: await signA(asState) });
    expect(await decodeFrame(frame, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'bad-signature' });
  });

  it('refuses an altered payload under the original signature', async () => {
    const frame = await encodeState(makeState('peer-a', { seq: 1 }), signA);
    const envelope = packr.unpack(frame) as { t: string; p: Uint8Array; s: Uint8Array };
    const tampered = packr.pack({ ...envelope, p: packr.pack(makeState('peer-a', { seq: 99 })) });
    expect(await decodeFrame(tampered, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'bad-signature' });
  });

  it('refuses frames over the size limit before decoding them', async () => {
    const oversized = new Uint8Array(MAX_FRAME_BYTES + 1);
    expect(await decodeFrame(oversized, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'too-large' });
  });

  it('refuses malformed envelopes and payloads', async () => {
    const cases: [Uint8Array, string][] = [
      [new Uint8Array(0), 'malformed'],
      [new Uint8Array([0xdc, 0x00]), 'malformed'],
      [new Uint8Array([0xc1]), 'bad-envelope'],
      [packr.pack({ t: 'state', p: 'not bytes', s: new Uint8Array(64) }), 'bad-envelope'],
      [packr.pack({ t: 'gossip', p: new Uint8Array(1), s: new Uint8Array(64) }), 'bad-envelope'],
      [packr.pack({ t: 'suspect', p: new Uint8Array([0xc1]), s: new Uint8Array(64) }), 'bad-payload'],
      [packr.pack({ t: 'suspect', p: packr.pack({ peerId: 'x' }), s: new Uint8Array(64) }), 'bad-payload'],
      [packr.pack({ t: 'suspect', p: new Uint8Array(1), s: new Uint8Array(0) }), 'bad-envelope'],
      [packr.pack({ t: 'hb', p: new Uint8Array(1), s: new Uint8Array(64) }), 'bad-envelope'],
    ];
    for (const [bytes, reason] of cases) {
      expect(await decodeFrame(bytes, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason });
    }
    expect(await decodeFrame('text' as unknown as Uint8Array, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'not-bytes' });
  });

  it('survives a Verify port that throws or rejects, refusing the frame', async () => {
    const frame = await encodeState(makeState('peer-a'), signA);
    const throwing = () => {
      throw new Error('boom');
    };
    expect(await decodeFrame(frame, throwing, FABRIC_ID)).toMatchObject({ ok: false, reason: 'bad-signature' });
    expect(await decodeFrame(frame, async () => Promise.reject(new Error('x')), FABRIC_ID)).toMatchObject({ ok: false });
  });

  it('refuses deeply nested data without blowing the stack', async () => {
    const nested = new Uint8Array(MAX_FRAME_BYTES).fill(0x91); // [[[[...
    expect(await decodeFrame(nested, keys.verify, FABRIC_ID)).toMatchObject({ ok: false });
  });
});

describe('codec: fuzz', () => {
  const validState = makeState('peer-a', { seq: 4 });
  const validFramePromise = encodeState(validState, signA);
  const validNotice = { peerId: 'peer-a', fabricId: FABRIC_ID, target: 'peer-b', incarnation: 4 };
  const validNoticePromise = encodeSuspicion(validNotice, signA);

  it('random bytes never throw and are never accepted', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 2048 }), async (bytes) => {
        const decoded = await decodeFrame(bytes, keys.verify, FABRIC_ID);
        expect(decoded.ok).toBe(false);
      }),
      { numRuns: 400 },
    );
  });

  it('random msgpack objects and envelope-shaped junk are never accepted', async () => {
    const junkEnvelope = fc.record({
      t: fc.oneof(fc.constantFrom('state', 'suspect'), fc.string()),
      p: fc.oneof(
        fc.uint8Array({ maxLength: 256 }),
        fc.anything().map((v) => packr.pack(v)),
        fc.constant(packr.pack(validState)),
      ),
      s: fc.oneof(fc.uint8Array({ maxLength: 128 }), fc.anything()),
    });
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.anything(), junkEnvelope), async (value) => {
        let bytes: Uint8Array;
        try {
          bytes = packr.pack(value);
        } catch {
          return; // not encodable by msgpackr; nothing to send
        }
        const decoded = await decodeFrame(bytes, keys.verify, FABRIC_ID);
        expect(decoded.ok).toBe(false);
      }),
      { numRuns: 400 },
    );
  });

  it('mutated valid frames never throw, and anything accepted carries the signed content unchanged', async () => {
    const validFrame = await validFramePromise;
    const validNoticeFrame = await validNoticePromise;
    const mutation = fc.record({
      which: fc.boolean(),
      edits: fc.array(fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 4 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
    });
    await fc.assert(
      fc.asyncProperty(mutation, async ({ which, edits, cut }) => {
        const original = which ? validFrame : validNoticeFrame;
        let bytes = new Uint8Array(original);
        for (const { at, byte } of edits) bytes[at % bytes.length] = byte;
        if (cut !== undefined) bytes = bytes.subarray(0, cut % (bytes.length + 1));
        const decoded = await decodeFrame(bytes, keys.verify, FABRIC_ID);
        if (!decoded.ok) return;
        // A mutation may only have hit bytes outside what the signature covers (e.g. a no-op edit).
        if (decoded.kind === 'state') expect(decoded.state).toEqual(validState);
        else expect(decoded.suspicion).toEqual(validNotice);
        expect(decoded.kind).toBe(which ? 'state' : 'suspect');
      }),
      { numRuns: 600 },
    );
  });

  it('a valid payload under a random signature is never accepted', async () => {
    const payload = packr.pack(validState);
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 128 }), async (sig) => {
        const decoded = await decodeFrame(packr.pack({ t: 'state', p: payload, s: sig }), keys.verify, FABRIC_ID);
        expect(decoded).toMatchObject({ ok: false, reason: 'bad-signature' });
      }),
      { numRuns: 200 },
    );
  });

  it('oversized frames of any content are refused by size', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 4096 }), fc.integer({ min: 0, max: 255 }), async (extra, fill) => {
        const bytes = new Uint8Array(MAX_FRAME_BYTES + extra).fill(fill);
        expect(await decodeFrame(bytes, keys.verify, FABRIC_ID)).toMatchObject({ ok: false, reason: 'too-large' });
      }),
      { numRuns: 50 },
    );
  });
});
