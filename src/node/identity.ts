/**
 * The daemon's secrets: its Ed25519 identity key (its peer id) and the fabric's swarm key
 * (libp2p private network). Both are files of mode 0600 in the data dir.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { FabricError, errorMessage } from '../core/index.ts';
import { writeFileDurable } from './files.ts';

export async function createIdentityKey(path: string): Promise<PrivateKey> {
  const key = await generateKeyPair('Ed25519');
  writeFileDurable(path, privateKeyToProtobuf(key), 0o600);
  return key;
}

export function loadIdentityKey(path: string): PrivateKey {
  checkSecretFileMode(path);
  try {
    return privateKeyFromProtobuf(readFileSync(path));
  } catch (err) {
    throw new FabricError('BAD_INPUT', `identity key ${path} cannot be read: ${errorMessage(err)}`, { cause: err });
  }
}

const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/\n/base16/\n';

export function newSwarmKey(): Uint8Array<ArrayBuffer> {
  return new Uint8Array(randomBytes(32));
}

/** The libp2p pnet file format: a header, then the 32-byte key in hex. */
export function swarmKeyFileText(key: Uint8Array): string {
  return SWARM_KEY_HEADER + Buffer.from(key).toString('hex');
}

export function writeSwarmKey(path: string, key: Uint8Array): void {
  writeFileDurable(path, swarmKeyFileText(key), 0o600);
}

export function loadSwarmKey(path: string): Uint8Array<ArrayBuffer> {
  checkSecretFileMode(path);
  const text = readFileSync(path, 'utf8');
  const hex = text.startsWith(SWARM_KEY_HEADER) ? text.slice(SWARM_KEY_HEADER.length).trim() : '';
  if (!/^[0-9a-f]{64}$/i.test(hex)) {
    throw new FabricError('BAD_INPUT', `swarm key ${path} is not in the libp2p pnet format (${SWARM_KEY_HEADER.replaceAll('\n', '\\n')}<64 hex digits>)`);
  }
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

/** A secret readable by others is refused, as ssh refuses a private key with loose permissions. */
function checkSecretFileMode(path: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode & 0o777;
  } catch (err) {
    throw new FabricError('DATA_DIR_MISSING', `cannot read ${path}: ${errorMessage(err)}`, { cause: err });
  }
  if ((mode & 0o077) !== 0) {
    throw new FabricError('BAD_INPUT', `${path} has mode ${mode.toString(8)}; it is a secret and must be 0600 (chmod 600 ${path})`);
  }
}
