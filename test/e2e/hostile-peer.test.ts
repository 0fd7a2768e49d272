/**
 * A peer that holds the swarm key but sends garbage: malformed and oversized frames on every
 * fabric protocol, junk and forged states on the gossip topic. The daemon drops and logs them,
 * keeps running, and its view holds nothing the intruder made up. A correctly signed state from
 * the same peer is then accepted (the channel itself works).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { lpStream } from '@libp2p/utils';
import { pack } from 'msgpackr';
import { Fabric, LOOPBACK, waitFor, type DaemonProcess } from './harness.ts';
import { createHost, type FabricHost } from '../../src/node/host.ts';
import { loadSwarmKey } from '../../src/node/identity.ts';
import { gossipTopic, SWIM_PROTOCOL, SYNC_PROTOCOL } from '../../src/node/gossip-transport.ts';
import { encodeState, stampForBroadcast } from '../../src/gossip/codec.ts';
import type { NodeState } from '../../src/gossip/state.ts';

describe('a hostile peer inside the private network', () => {
  const fabric = new Fabric();
  let d: DaemonProcess;
  let intruder: FabricHost;
  let intruderKey: Awaited<ReturnType<typeof generateKeyPair>>;
  const signAsIntruder = async (data: Uint8Array) => intruderKey.sign(data);
  let daemonId = '';
  let fabricId = '';

  beforeAll(async () => {
    d = fabric.daemon('target');
    const s = await d.start(['init', ...LOOPBACK, '--simulate-gpus', 'cpu-only']);
    daemonId = s.peerId;
    fabricId = s.fabricId;
    intruderKey = await generateKeyPair('Ed25519');
    intruder = await createHost({ privateKey: intruderKey, swarmKey: loadSwarmKey(join(d.dataDir, 'swarm.key')), listen: ['/ip4/127.0.0.1/tcp/0'] });
    await intruder.start();
    intruder.services.pubsub.subscribe(gossipTopic(fabricId));
    await intruder.dial(multiaddr(s.addrs.find((a) => a.startsWith('/ip4/127.0.0.1'))!));
    // gossipsub needs a heartbeat to graft the daemon into the intruder's mesh
    await waitFor('the daemon to subscribe', () => intruder.services.pubsub.getSubscribers(gossipTopic(fabricId)).length > 0 || undefined);
  }, 60_000);

  afterAll(async () => {
    await intruder?.stop();
    await fabric.cleanup();
  });

  const rawStream = async (protocol: string) => intruder.dialProtocol(peerIdFromString(daemonId), protocol);

  const stateOf = (peerId: string, seq: number): NodeState => ({
    v: 1, peerId, fabricId, incarnation: 1, seq, addrs: [], apiVersion: 'x',
    labels: { spot: false, extra: {} },
    inventory: { host: { cpuModel: 'x', cpuCores: 1, memoryMiB: 1 }, devices: [], links: [], warnings: [] },
    load: { allocatedDevices: [] }, updatedAtMs: 1,
  });

  test('garbage on the sync and swim protocols closes those streams, nothing else', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(SYNC_PROTOCOL, SWIM_PROTOCOL), fc.oneof(fc.uint8Array({ maxLength: 2048 }), fc.anything().map((v) => pack(v))), async (protocol, junk) => {
        const stream = await rawStream(protocol);
        const lp = lpStream(stream);
        try {
          await lp.write(junk);
          await lp.read({ signal: AbortSignal.timeout(2_000) });
        } catch {
          // the daemon closing the stream on us is the expected answer
        }
        stream.abort(new Error('done'));
      }),
      { numRuns: 40 },
    );
    // an oversized length prefix, then raw bytes that are not length-prefixed at all
    const big = await rawStream(SYNC_PROTOCOL);
    big.send(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
    big.send(randomBytes(4096));
    const raw = await rawStream(SWIM_PROTOCOL);
    raw.send(randomBytes(70_000));
    await new Promise((r) => setTimeout(r, 500));
    big.abort(new Error('done'));
    raw.abort(new Error('done'));
    const s = await d.status();
    expect(s.peerId).toBe(daemonId);
  });

  test('junk, forged and oversized states on the gossip topic are dropped', async () => {
    const topic = gossipTopic(fabricId);
    const before = (await d.status()).gossip.droppedFrames;
    // A state claiming the daemon's own identity, and one claiming a made-up peer, both signed by the intruder.
    const forgedSelf = stampForBroadcast(await encodeState(stateOf(daemonId, 999), signAsIntruder), 1);
    const other = (await generateKeyPair('Ed25519')).publicKey.toString();
    const forgedOther = stampForBroadcast(await encodeState(stateOf(other, 1), signAsIntruder), 2);
    const frames = [forgedSelf, forgedOther, randomBytes(100), pack({ t: 'state', p: randomBytes(50), s: randomBytes(64), n: 3 }), pack({ t: 'hb', p: 1, s: 2, n: 4 }), randomBytes(300 * 1024)];
    for (const f of frames) await intruder.services.pubsub.publish(topic, f);
    await waitFor('the daemon to drop the frames', async () => ((await d.status()).gossip.droppedFrames >= before + frames.length) || undefined, 10_000);
    const nodes = await d.nodes();
    expect(nodes.map((n) => n.peerId)).toEqual([daemonId]);
    expect(nodes[0]!.seq).toBeLessThan(999);
  });

  test('a correctly signed state from the same peer is accepted', async () => {
    const me = intruder.peerId.toString();
    const frame = stampForBroadcast(await encodeState(stateOf(me, 1), signAsIntruder), 10);
    await intruder.services.pubsub.publish(gossipTopic(fabricId), frame);
    await waitFor('the daemon to list the peer', async () => ((await d.nodes()).some((n) => n.peerId === me)) || undefined, 10_000);
  });
});
