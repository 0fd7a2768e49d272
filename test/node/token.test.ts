import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { decodeJoinToken, encodeJoinToken } from '../../src/node/token.ts';
import { isFabricError } from '../../src/core/index.ts';

const sample = { fabricId: 'fab-0123456789abcdef', swarmKey: new Uint8Array(32).map((_, i) => i), bootstrap: ['/ip4/127.0.0.1/tcp/7700/p2p/12D3KooWabc'] };

describe('join token', () => {
  test('round-trips fabric id, swarm key and bootstrap addresses', () => {
    const t = encodeJoinToken(sample);
    expect(t).toMatch(/^fab1_[A-Za-z0-9_-]+$/);
    const back = decodeJoinToken(`  ${t}\n`);
    expect(back.fabricId).toBe(sample.fabricId);
    expect([...back.swarmKey]).toEqual([...sample.swarmKey]);
    expect(back.bootstrap).toEqual(sample.bootstrap);
  });

  test('a foreign string is refused as not a token', () => {
    expect(() => decodeJoinToken('ghp_abcdef')).toThrow(/not a fabric join token/);
  });

  test('any single changed character is detected', () => {
    const t = encodeJoinToken(sample);
    fc.assert(
      fc.property(fc.integer({ min: 5, max: t.length - 1 }), fc.constantFrom(...'ABCxyz019-_'), (pos, ch) => {
        fc.pre(t[pos] !== ch);
        const bad = t.slice(0, pos) + ch + t.slice(pos + 1);
        try {
          decodeJoinToken(bad);
          // base64url's last character may carry padding bits only: then the bytes are unchanged
          return Buffer.from(bad.slice(5), 'base64url').equals(Buffer.from(t.slice(5), 'base64url'));
        } catch (err) {
          return isFabricError(err, 'BAD_TOKEN');
        }
      }),
    );
  });

  test('a token with a checksum but a wrong shape is refused', () => {
    const t = encodeJoinToken({ ...sample, bootstrap: ['x'] });
    expect(decodeJoinToken(t).bootstrap).toEqual(['x']);
    expect(() => encodeJoinToken({ ...sample, swarmKey: new Uint8Array(3) })).not.toThrow();
    expect(() => decodeJoinToken(encodeJoinToken({ ...sample, swarmKey: new Uint8Array(3) }))).toThrow(/swarm key must be 32 bytes/);
  });
});
