/**
 * One follower voter of the committed-placement benchmark (placement-commit.ts), on a worker
 * thread of its own: its own libp2p host on loopback, its own Raft log on disk, its own replica
 * of the fabric state, its own event loop and heap, as on a machine of its own. It joins empty;
 * the leader's autopilot adds it as a learner and promotes it to voter.
 *
 * Messages: it posts `up` (peer id, addresses) once listening; `peers` tells it the group (every
 * member's addresses, for dialing); `stop` ends it (`stopped` answers).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { silentLogger } from '../src/core/index.ts';
import { ControlPlane, type ControlPlanePeer } from '../src/node/control-plane.ts';
import { createHost } from '../src/node/host.ts';

export interface VoterData {
  swarmKey: Uint8Array;
  dir: string;
}

export interface GroupMember {
  peerId: string;
  addrs: string[];
  zone: string;
}

export type ToVoter = { t: 'peers'; members: GroupMember[] } | { t: 'stop' };
export type FromVoter = { t: 'up'; peerId: string; addrs: string[] } | { t: 'stopped' } | { t: 'failed'; error: string };

const port = parentPort!;
const data = workerData as VoterData;

async function main(): Promise<void> {
  const host = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey: data.swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
  let members: ControlPlanePeer[] = [];
  const control = new ControlPlane({
    host,
    dir: data.dir,
    log: silentLogger,
    bootstrap: false,
    deadVoterGraceMs: 3_600_000,
    peers: () => members,
    publishHint: () => undefined,
    wallNow: () => Date.now(),
  });
  await control.start();
  const self = host.peerId.toString();
  port.on('message', (msg: ToVoter) => {
    if (msg.t === 'peers') {
      members = msg.members.map((m) => ({ peerId: m.peerId, health: 'alive', healthForMs: 60_000, zone: m.zone, hint: undefined }));
      for (const m of msg.members) {
        if (m.peerId !== self) void host.peerStore.patch(peerIdFromString(m.peerId), { multiaddrs: m.addrs.map((a) => multiaddr(a)) });
      }
      return;
    }
    void (async () => {
      await control.stop().catch(() => undefined);
      await Promise.resolve(host.stop()).catch(() => undefined);
      port.postMessage({ t: 'stopped' } satisfies FromVoter);
    })();
  });
  port.postMessage({ t: 'up', peerId: self, addrs: host.getMultiaddrs().map(String) } satisfies FromVoter);
}

main().catch((err: unknown) => port.postMessage({ t: 'failed', error: err instanceof Error ? err.message : String(err) } satisfies FromVoter));
