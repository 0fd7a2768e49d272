/**
 * The Raft group of real daemons on loopback: the `fabric init` peer starts alone, the autopilot
 * grows the group to 3 then 5 voters spread over zones (the sixth peer holds a replica as a
 * learner), every peer's API takes writes and
 * linearizable reads; under a steady stream of writes the leader is killed with kill -9 again
 * and again: a new leader every time, no acknowledged write lost, none applied twice.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Fabric, LOOPBACK, waitFor, type DaemonProcess } from './harness.ts';
import { FabricClient } from '../../src/client/client.ts';
import type { RaftPeersResponse, StatusResponse } from '../../src/api/schemas.ts';

const ZONES = ['z1', 'z1', 'z2', 'z2', 'z3', 'z3'];
const GRACE_S = '2';
/** Writes for these tests: a job asking for a GPU on a fabric without any waits in the queue, placed nowhere. */
const PARKED = (name: string) => ({ name, gpus: 1, waitForCapacity: true, command: ['true'] });

describe('consensus across six daemons', () => {
  const fabric = new Fabric();
  const daemons: DaemonProcess[] = [];
  const peerIds = new Map<DaemonProcess, string>();

  const client = (d: DaemonProcess) => FabricClient.fromDataDir(d.dataDir);
  const alive = () => daemons.filter((d) => d.child !== undefined && d.child.exitCode === null && d.child.signalCode === null);
  const statusOf = async (d: DaemonProcess): Promise<StatusResponse> => client(d).status();
  const leaderDaemon = (leader: string) => daemons.find((d) => peerIds.get(d) === leader);

  beforeAll(async () => {
    const first = fabric.daemon('d0');
    daemons.push(first);
    const s = await first.start(['init', ...LOOPBACK, '--zone', ZONES[0]!, '--dead-voter-grace', GRACE_S, '--simulate-gpus', 'cpu-only']);
    peerIds.set(first, s.peerId);
    expect(s.raft).toMatchObject({ member: 'voter', role: 'leader', voters: [s.peerId] });
    const token = (await first.cli(['token'])).stdout.trim();
    await Promise.all(
      ZONES.slice(1).map(async (zone, i) => {
        const d = fabric.daemon(`d${i + 1}`);
        daemons.push(d);
        const st = await d.start(['join', token, ...LOOPBACK, '--zone', zone, '--dead-voter-grace', GRACE_S, '--simulate-gpus', 'cpu-only']);
        peerIds.set(d, st.peerId);
      }),
    );
  }, 90_000);

  afterAll(async () => {
    await fabric.cleanup();
  });

  test('the autopilot grows the group to five voters over every zone and a learner; every daemon agrees on the leader', async () => {
    const group = await waitFor('five voters and a learner', async () => {
      const r = await client(daemons[0]!).raftPeers();
      return r.peers.filter((p) => p.role === 'voter').length === 5 && r.peers.filter((p) => p.role === 'learner').length === 1 ? r : undefined;
    }, 60_000, 300);
    expect(new Set(group.peers.filter((p) => p.role === 'voter').map((p) => p.zone))).toEqual(new Set(['z1', 'z2', 'z3']));
    expect(group.peers.filter((p) => p.leader)).toHaveLength(1);
    const statuses = await waitFor('every daemon to know the leader', async () => {
      const all = await Promise.all(daemons.map(statusOf));
      // each daemon's own view catches up with the leader's (a promotion is applied everywhere)
      const settled = all.every((s) => s.raft.leader === group.leader && s.raft.member !== 'none') && all.filter((s) => s.raft.member === 'voter').length === 5;
      return settled ? all : undefined;
    }, 30_000, 300);
    expect(new Set(statuses.map((s) => s.raft.term)).size).toBe(1);
    expect(statuses.filter((s) => s.raft.member === 'learner')).toHaveLength(1);
    // the human forms of both commands
    const table = await daemons[3]!.cli(['raft', 'peers']);
    expect(table.code).toBe(0);
    expect(table.stdout.trim().split('\n')).toHaveLength(1 + 6 + 1);
    expect(table.stdout).toContain('leader');
    const status = await daemons[2]!.cli(['status']);
    expect(status.stdout).toMatch(/raft\s+(voter|learner)/);
    expect(status.stdout).toContain(group.leader!);
  }, 90_000);

  test('writes from any daemon land once; a retried request id returns the first answer; reads see every acknowledged write', async () => {
    const requestId = `rq-${randomBytes(8).toString('hex')}`;
    const a = await client(daemons[4]!).submitJob({ requestId, spec: PARKED('once') });
    const b = await client(daemons[1]!).submitJob({ requestId, spec: PARKED('once') });
    expect(b.jobId).toBe(a.jobId);
    for (const d of daemons) {
      const jobs = await client(d).jobs(true);
      expect(jobs.filter((j) => j.name === 'once').map((j) => j.id)).toEqual([a.jobId]);
    }
    const detail = await client(daemons[2]!).job(a.jobId);
    expect(detail).toMatchObject({ id: a.jobId, state: 'queued', spec: { name: 'once' }, checkpoints: [] });
    await expect(client(daemons[3]!).job('j-nope')).rejects.toThrow(/no job j-nope/);
    const cancelled = await client(daemons[3]!).cancelJob(a.jobId, { reason: 'test' });
    expect(cancelled.state).toBe('cancelled');
    await expect(client(daemons[0]!).cancelJob(a.jobId)).rejects.toThrow(/ILLEGAL_TRANSITION|cancel/);
  }, 60_000);

  test('kill -9 the leader again and again under a stream of writes: a new leader each time, nothing acknowledged lost, nothing twice', async () => {
    const acked = new Map<string, string>(); // job name → job id
    let stop = false;
    let attempts = 0;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `w${i}`;
        const requestId = `rq-${name}-${randomBytes(6).toString('hex')}`;
        // Retry the same request id until some daemon acknowledges it.
        for (;;) {
          const targets = alive();
          const d = targets[(i + attempts) % targets.length]!;
          attempts++;
          try {
            const r = await client(d).submitJob({ requestId, spec: PARKED(name) });
            acked.set(name, r.jobId);
            break;
          } catch {
            if (stop) return;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
    })();

    const leaders: string[] = [];
    try {
      for (let round = 0; round < 3; round++) {
        const before = acked.size;
        await waitFor('writes to flow', () => acked.size >= before + 5 || undefined, 30_000, 100);
        const leader = await waitFor('a known leader', async () => (await statusOf(alive()[0]!)).raft.leader ?? undefined, 30_000, 100);
        leaders.push(leader);
        const victim = leaderDaemon(leader)!;
        await victim.kill9();
        const next = await waitFor('a new leader', async () => {
          const s = await statusOf(alive()[0]!);
          return s.raft.leader !== null && s.raft.leader !== leader ? s.raft.leader : undefined;
        }, 30_000, 100);
        expect(next).not.toBe(leader);
        const afterKill = acked.size;
        await waitFor('writes to flow again', () => acked.size >= afterKill + 3 || undefined, 30_000, 100);
        // Bring the host back: it rejoins under the same identity and the autopilot takes it in again.
        await victim.start(['agent']);
      }
    } finally {
      stop = true;
      await writer;
    }
    expect(new Set(leaders).size).toBeGreaterThanOrEqual(2);

    // Every acknowledged write is there exactly once, on every daemon's linearizable read.
    for (const d of alive()) {
      const jobs = await client(d).jobs(true);
      const byName = new Map<string, string[]>();
      for (const j of jobs) if (/^w\d+$/.test(j.name)) byName.set(j.name, [...(byName.get(j.name) ?? []), j.id]);
      for (const [name, id] of acked) expect(byName.get(name), `job ${name}`).toEqual([id]);
      for (const [name, ids] of byName) expect(ids, `job ${name}`).toHaveLength(1);
    }
    // The restarted hosts are voters again: the group is back to five.
    let last = '';
    const group = await waitFor('five voters again', async () => {
      const r: RaftPeersResponse = await client(alive()[0]!).raftPeers();
      last = JSON.stringify(r.peers.map((p) => [p.peerId.slice(-6), p.role, p.health, p.lag]));
      return r.peers.filter((p) => p.role === 'voter' && p.health === 'alive').length === 5 ? r : undefined;
    }, 120_000, 300).catch((err: unknown) => {
      throw new Error(`${String(err)}; group last seen ${last}`);
    });
    expect(group.peers.filter((p) => p.leader)).toHaveLength(1);
  }, 240_000);

  test('a voter dead past the grace period is replaced; restarted, it drops its stale replica and rejoins', async () => {
    const group = await client(alive()[0]!).raftPeers();
    const victimId = group.peers.find((p) => p.role === 'voter' && !p.leader)!.peerId;
    const victim = daemons.find((d) => peerIds.get(d) === victimId)!;
    await victim.kill9();
    let seen = '';
    const without = await waitFor('the dead voter to be replaced and removed', async () => {
      const r = await client(alive()[0]!).raftPeers();
      seen = JSON.stringify(r.peers.map((p) => [p.peerId.slice(-6), p.role, p.health, p.lag]));
      return !r.peers.some((p) => p.peerId === victimId) && r.peers.filter((p) => p.role === 'voter').length === 5 ? r : undefined;
    }, 60_000, 300).catch((err: unknown) => {
      throw new Error(`${String(err)}; victim ${victimId.slice(-6)}, group last seen ${seen}`);
    });
    expect(without.peers.filter((p) => p.role === 'voter' && p.health === 'alive')).toHaveLength(5);
    await victim.start(['agent']);
    const back = await waitFor('the restarted peer to hold a replica again', async () => {
      const s = await statusOf(victim);
      const now = await client(daemons.find((d) => d !== victim && alive().includes(d))!).raftPeers();
      return s.raft.member !== 'none' && s.raft.leader === now.leader && s.raft.applied >= without.commit ? s : undefined;
    }, 60_000, 300);
    expect(back.raft.member).toBe('learner');
    // It reads the fabric state from its own replica again: every job is there.
    expect((await client(victim).jobs(true)).length).toBe((await client(alive()[0]!).jobs(true)).length);
  }, 120_000);
});
