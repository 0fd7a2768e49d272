/**
 * A peer that holds the swarm key but sends garbage: malformed and oversized frames on every
 * fabric protocol, junk and forged states on the gossip topic. The daemon drops and logs them,
 * keeps running, and its view holds nothing the intruder made up; raft and rpc frames that are
 * malformed, oversized, from a non-member or speaking for someone else change no Raft state. A correctly signed state from
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
import { RAFT_PROTOCOL } from '../../src/node/raft-wire.ts';
import { RPC_PROTOCOL } from '../../src/node/rpc.ts';
import { FabricClient } from '../../src/client/client.ts';

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

  test('bad raft and rpc frames are dropped: the term, the leader and the log are untouched', async () => {
    const before = (await d.status()).raft;
    expect(before.role).toBe('leader');
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(RAFT_PROTOCOL, RPC_PROTOCOL), fc.oneof(fc.uint8Array({ maxLength: 2048 }), fc.anything().map((v) => pack(v))), async (protocol, junk) => {
        const stream = await rawStream(protocol);
        const lp = lpStream(stream);
        try {
          await lp.write(junk);
          await lp.read({ signal: AbortSignal.timeout(1_000) });
        } catch {
          // closed on us: expected
        }
        stream.abort(new Error('done'));
      }),
      { numRuns: 30 },
    );
    const me = intruder.peerId.toString();
    const message = (over: Record<string, unknown>) => ({
      type: 'vote', from: me, to: daemonId, term: 1_000, logTerm: 1_000, index: 1_000_000, entries: [], commit: 0, reject: false, rejectHint: 0, ...over,
    });
    const frames = [
      pack({ msgs: [message({})] }), // a well-formed vote from a non-member with a huge term
      pack({ msgs: [message({ from: before.voters[0] })] }), // speaking for the daemon itself
      pack({ msgs: [message({ type: 'app', entries: [{ term: 1_000, index: 1_000_000, type: 'normal', data: randomBytes(8) }] })] }),
      pack({ msgs: [message({ to: 'someone-else' })] }),
    ];
    for (const frame of frames) {
      const stream = await rawStream(RAFT_PROTOCOL);
      const lp = lpStream(stream, { maxDataLength: 64 * 1024 * 1024 });
      await lp.write(frame).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 100));
      stream.abort(new Error('done'));
    }
    // an oversized raft frame: a length prefix over the 64 MiB cap
    const big = await rawStream(RAFT_PROTOCOL);
    big.send(Uint8Array.from([0x80, 0x80, 0x80, 0x40]));
    big.send(randomBytes(4096));
    // an rpc proposal whose command is not a valid command
    const rpc = lpStream(await rawStream(RPC_PROTOCOL));
    await rpc.write(pack({ t: 'propose', command: pack({ type: 'job.submit', jobId: 1 }) }));
    const reply = (await import('msgpackr')).unpack((await rpc.read({ signal: AbortSignal.timeout(5_000) })).subarray()) as { ok: boolean; code: string };
    expect(reply).toMatchObject({ ok: false, code: 'BAD_INPUT' });
    await new Promise((r) => setTimeout(r, 300));
    big.abort(new Error('done'));

    const after = (await d.status()).raft;
    expect(after.role).toBe('leader');
    expect(after.term).toBe(before.term);
    expect(after.voters).toEqual(before.voters);
    expect(after.commit).toBe(before.commit);
    // and the group still commits
    const job = await FabricClient.fromDataDir(d.dataDir).submitJob({ spec: { name: 'after-the-garbage', gpus: 1, waitForCapacity: true, command: ['true'] } });
    expect(job.state).toBe('queued');
    expect((await d.status()).raft.commit).toBeGreaterThan(before.commit);
    expect(d.child?.exitCode).toBeNull();
  });

  test('a correctly signed state from the same peer is accepted', async () => {
    const me = intruder.peerId.toString();
    const frame = stampForBroadcast(await encodeState(stateOf(me, 1), signAsIntruder), 10);
    await intruder.services.pubsub.publish(gossipTopic(fabricId), frame);
    await waitFor('the daemon to list the peer', async () => ((await d.nodes()).some((n) => n.peerId === me)) || undefined, 10_000);
  });
});
