/**
 * The join token: `fab1_` + base64url(msgpack{fabricId, swarmKey, bootstrap}) + a 4-byte
 * SHA-256 check, so a garbled copy is told apart from a token of another kind. It carries the
 * swarm key, so it is a secret.
 */
import { createHash } from 'node:crypto';
import { pack, unpack } from 'msgpackr';
import { z } from 'zod';
import { FabricError } from '../core/index.ts';

const PREFIX = 'fab1_';
const CHECK_BYTES = 4;

export const JoinTokenSchema = z.object({
  fabricId: z.string().min(1).max(64),
  swarmKey: z.instanceof(Uint8Array).refine((k) => k.length === 32, 'swarm key must be 32 bytes'),
  bootstrap: z.array(z.string().min(1).max(512)).min(1).max(32),
});
export type JoinToken = z.infer<typeof JoinTokenSchema>;

function check(body: Uint8Array): Buffer {
  return createHash('sha256').update(body).digest().subarray(0, CHECK_BYTES);
}

export function encodeJoinToken(token: JoinToken): string {
  const body = pack({ f: token.fabricId, k: Buffer.from(token.swarmKey), b: token.bootstrap });
  return PREFIX + Buffer.concat([body, check(body)]).toString('base64url');
}

export function decodeJoinToken(text: string): JoinToken {
  const trimmed = text.trim();
  if (!trimmed.startsWith(PREFIX)) {
    throw new FabricError('BAD_TOKEN', `not a fabric join token: it should start with "${PREFIX}" (get one with \`fabric token\` on a member)`);
  }
  const raw = Buffer.from(trimmed.slice(PREFIX.length), 'base64url');
  if (raw.length <= CHECK_BYTES || !raw.subarray(raw.length - CHECK_BYTES).equals(check(raw.subarray(0, raw.length - CHECK_BYTES)))) {
    throw new FabricError('BAD_TOKEN', 'the join token is garbled (its checksum does not match): copy it again whole');
  }
  let fields: unknown;
  try {
    fields = unpack(raw.subarray(0, raw.length - CHECK_BYTES));
  } catch {
    throw new FabricError('BAD_TOKEN', 'the join token is garbled: its content cannot be decoded');
  }
  const f = (fields ?? {}) as Record<string, unknown>;
  const parsed = JoinTokenSchema.safeParse({
    fabricId: f['f'],
    swarmKey: f['k'] instanceof Uint8Array ? new Uint8Array(f['k']) : f['k'],
    bootstrap: f['b'],
  });
  if (!parsed.success) {
    throw new FabricError('BAD_TOKEN', `the join token is not valid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}
