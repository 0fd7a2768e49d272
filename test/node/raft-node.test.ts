/**
 * RaftNode over real libp2p on loopback: several nodes in this process, each with its own host
 * and data dir, replicating a tiny state machine (the list of applied commands). The tests run
 * in order on one cluster: bootstrap → grow to 3 voters → bad input → leader killed → restart
 * with catch-up by snapshot.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { lpStream } from '@libp2p/utils';
import { afterAll, describe, expect, it } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { createHost, type FabricHost } from '../../src/node/host.ts';
import { newSwarmKey } from '../../src/node/identity.ts';
import { RaftNode, type StateMachine } from '../../src/node/raft-node.ts';
import { MAX_RAFT_FRAME_BYTES, RAFT_PROTOCOL } from '../../src/node/raft-wire.ts';
import { encodeFrame } from '../../src/node/wire.ts';
import { recordingLogger, type LogLine } from '../support/logger.ts';

/** The replicated state: every applied command, in order. */
class HistoryMachine implements StateMachine {
  history: string[] = [];
  restores = 0;

  apply(_index: number, data: Uint8Array): unknown {
    this.history.push(new TextDecoder().decode(data));
    return this.history.length;
  }

  snapshot(): Uint8Array {
    return new TextEncoder().encode(JSON.stringify(this.history));
  }

  restore(data: Uint8Array): void {
    this.restores++;
    this.history = JSON.parse(new TextDecoder().decode(data)) as string[];
  }
}


interface Member {
  name: string;
  key: PrivateKey;
  dir: string;
  host: FabricHost;
  node: RaftNode;
  sm: HistoryMachine;
  logs: LogLine[];
}

const swarmKey = newSwarmKey();
const root = mkdtempSync(join(tmpdir(), 'fabric-raft-node-'));
const members = new Map<string, Member>();
const extraHosts: FabricHost[] = [];

/** Small snapshot interval so that a node down for a few dozen entries needs a snapshot. */
const SNAPSHOT_EVERY = 10;
const COMPACT_KEEP = 2;

async function startMember(name: string, opts: { key?: PrivateKey; bootstrap?: boolean } = {}): Promise<Member> {
  const key = opts.key ?? (await generateKeyPair('Ed25519'));
  const host = await createHost({ privateKey: key, swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
  const dir = join(root, name);
  const sm = new HistoryMachine();
  const logs: LogLine[] = [];
  const node = new RaftNode({
    host,
    dir,
    stateMachine: sm,
    log: recordingLogger(logs),
    ...(opts.bootstrap === true ? { bootstrap: { voters: [host.peerId.toString()] } } : {}),
    snapshotEvery: SNAPSHOT_EVERY,
    snapshotLogRatio: 0, // by count alone: the toy state machine's snapshot is its whole history
    compactKeep: COMPACT_KEEP,
  });
  await node.start();
  const m: Member = { name, key, dir, host, node, sm, logs };
  members.set(name, m);
  await introduceAll();
  return m;
}

/** Every host learns every other host's current address (the daemon's discovery does this). */
async function introduceAll(): Promise<void> {
  const hosts = [...[...members.values()].map((m) => m.host), ...extraHosts];
  for (const a of hosts) {
    for (const b of hosts) {
      if (a === b) continue;
      await a.peerStore.patch(b.peerId, { multiaddrs: b.getMultiaddrs() });
    }
  }
}

/** The member that crashed loses its host at once; the node object is dropped (stopped to free its timer). */
async function kill(m: Member): Promise<void> {
  await m.host.stop();
  await m.node.stop();
  members.delete(m.name);
}

async function waitFor<T>(what: string, fn: () => T | undefined | false, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function leaderOf(ms: Iterable<Member>): Member | undefined {
  for (const m of ms) if (m.node.status().role === 'leader') return m;
  return undefined;
}

async function waitForLeader(timeoutMs = 5_000): Promise<Member> {
  return waitFor('a leader', () => leaderOf(members.values()), timeoutMs);
}

/** Conf changes are refused while one is pending or before the leader committed in its term: retry. */
async function retryRefused<T>(what: string, fn: () => Promise<T>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!isFabricError(err, 'PROPOSAL_DROPPED') || Date.now() > deadline) throw new Error(`${what}: ${String(err)}`, { cause: err });
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function propose(leader: Member, text: string): Promise<{ index: number; result: unknown }> {
  return leader.node.propose(new TextEncoder().encode(text), { signal: AbortSignal.timeout(5_000) });
}

function expectSameHistories(ms: Member[], length: number): void {
  const first = ms[0]!.sm.history;
  expect(first.length).toBe(length);
  for (const m of ms) expect(m.sm.history, m.name).toEqual(first);
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

async function waitApplied(ms: Member[], index: number): Promise<void> {
  await waitFor(`applied >= ${index} on ${ms.map((m) => m.name).join(',')}`, () => ms.every((m) => m.node.status().applied >= index));
}

afterAll(async () => {
  for (const m of members.values()) {
    await m.node.stop();
    await m.host.stop();
  }
  for (const h of extraHosts) await h.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('RaftNode over libp2p', () => {
  it('a single-voter group elects itself and commits', async () => {
    const a = await startMember('a', { bootstrap: true });
    await waitForLeader();
    const out = await propose(a, 'a1');
    expect(out.result).toBe(1);
    expect(a.sm.history).toEqual(['a1']);
    const st = a.node.status();
    expect(st).toMatchObject({ leader: a.node.id, role: 'leader', voters: [a.node.id], learners: [] });
    expect(st.applied).toBeGreaterThanOrEqual(out.index);
    // A linearizable read on the leader: everything applied before it is visible.
    const { index } = await a.node.read({ signal: AbortSignal.timeout(2_000) });
    expect(index).toBeGreaterThanOrEqual(out.index);
  });

  it('grows to 3 voters (learner, then promoted) and every node applies the same entries in order', async () => {
    const a = members.get('a')!;
    const b = await startMember('b');
    const c = await startMember('c');
    // An empty node is no member and never campaigns.
    expect(b.node.status()).toMatchObject({ role: 'follower', voters: [], leader: null });
    const changes: string[] = [];
    const name = (id: string): string => [a, b, c].find((m) => m.node.id === id)?.name ?? '?';
    b.node.onConfChange((e) => changes.push(`${e.change.type} ${name(e.change.node)}`));

    for (const m of [b, c]) {
      await retryRefused('add learner', () => a.node.addLearner(m.node.id, { signal: AbortSignal.timeout(5_000) }));
      await waitFor(`${m.name} to catch up`, () => m.node.status().applied >= a.node.status().commit);
      const promoted = await retryRefused('promote', () => a.node.promote(m.node.id, { signal: AbortSignal.timeout(5_000) }));
      expect((promoted.result as { voters: string[] }).voters).toContain(m.node.id);
    }
    const conf = a.node.status();
    expect([...conf.voters].sort()).toEqual([a.node.id, b.node.id, c.node.id].sort());
    expect(conf.learners).toEqual([]);

    // Pipelined proposals, all in flight at once, are applied everywhere in one order.
    const results = await Promise.all(Array.from({ length: 25 }, (_, i) => propose(a, `x${i}`)));
    expect(new Set(results.map((r) => r.index)).size).toBe(25);
    const last = Math.max(...results.map((r) => r.index));
    await waitApplied([a, b, c], last);
    expectSameHistories([a, b, c], 26);
    // b replicates the founder's bootstrap entry from index 1 (src/consensus/bootstrap.ts)
    expect(changes).toEqual(['add-voter a', 'add-learner b', 'add-voter b', 'add-learner c', 'add-voter c']);
    // The leader sees both followers caught up.
    const peers = a.node.status().peers;
    expect(peers.map((p) => p.id).sort()).toEqual([b.node.id, c.node.id].sort());
    for (const p of peers) expect(p.lag).toBe(0);
  });

  it('refuses proposals on a follower with NOT_LEADER naming the leader; a follower read sees the leader\'s writes', async () => {
    const leader = await waitForLeader();
    const follower = [...members.values()].find((m) => m !== leader)!;
    const err = await follower.node.propose(new Uint8Array([1])).catch((e: unknown) => e);
    expect(isFabricError(err, 'NOT_LEADER')).toBe(true);
    expect((err as { details: { leader: string } }).details.leader).toBe(leader.node.id);

    const w = await propose(leader, 'before-read');
    const { index } = await follower.node.read({ signal: AbortSignal.timeout(2_000) });
    expect(index).toBeGreaterThanOrEqual(w.index);
    expect(follower.sm.history.at(-1)).toBe('before-read');
  });

  it('drops a malformed frame, a forged sender and a non-member, logs it, and keeps working', async () => {
    const leader = await waitForLeader();
    const termBefore = leader.node.status().term;
    const outsider = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
    extraHosts.push(outsider);
    await introduceAll();
    const outsiderId = outsider.peerId.toString();
    const otherMember = [...members.values()].find((m) => m !== leader)!;

    const sendRaw = async (bytes: Uint8Array, opts: { unframed?: boolean } = {}): Promise<void> => {
      const stream = await outsider.dialProtocol(leader.host.peerId, RAFT_PROTOCOL, { signal: AbortSignal.timeout(2_000) });
      const closed = new Promise<void>((resolve) => stream.addEventListener('close', () => resolve(), { once: true }));
      if (opts.unframed === true) stream.send(bytes);
      else await lpStream(stream).write(bytes);
      // The receiver aborts the stream of a bad frame.
      await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('stream not closed by the receiver')), 3_000))]);
    };
    const vote = (from: string) => ({
      type: 'vote', from, to: leader.node.id, term: termBefore + 50, logTerm: 1000, index: 1_000_000, entries: [], commit: 0, reject: false, rejectHint: 0,
    });

    await sendRaw(new Uint8Array([0xc1, 0xff, 0x00, 0x13])); // not msgpack
    await sendRaw(new Uint8Array([...varint(MAX_RAFT_FRAME_BYTES + 1), 1, 2, 3]), { unframed: true }); // announces an oversized frame
    await sendRaw(encodeFrame({ msgs: [{ type: 'app', from: outsiderId }] })); // fails the schema
    await sendRaw(encodeFrame({ msgs: [vote(otherMember.node.id)] })); // speaks for another peer
    await sendRaw(encodeFrame({ msgs: [vote(outsiderId)] })); // well-formed, but not a member

    // Logged once per peer and reason in a window (rate-limited): the rest are counted, not logged.
    const dropped = leader.logs.filter((l) => l.msg === 'raft frame dropped, stream closed').map((l) => l.fields['code']);
    expect(dropped).toEqual(['BAD_FRAME', 'UNAUTHORIZED']);
    // Nothing reached the core: no term bump, still the leader, still committing.
    const after = leader.node.status();
    expect(after.term).toBe(termBefore);
    expect(after.role).toBe('leader');
    const w = await propose(leader, 'after-bad-input');
    await waitApplied([...members.values()], w.index);
  });

  let killedKey: PrivateKey;
  let killedName = '';
  let killedLastIndex = 0;
  it('elects a new leader that commits when the leader is killed', async () => {
    const old = await waitForLeader();
    killedKey = old.key;
    killedName = old.name;
    killedLastIndex = old.node.status().lastIndex;
    const t0 = performance.now();
    await kill(old);
    const killedAfterMs = performance.now() - t0;
    const next = await waitForLeader(5_000);
    const electedAfterMs = performance.now() - t0;
    expect(next).not.toBe(old);
    const w = await propose(next, 'after-failover');
    const failoverMs = performance.now() - t0;
    // Not a benchmark (bench/ measures that); just a sanity bound on the timing parameters.
    expect(failoverMs).toBeLessThan(3_000);
    await waitApplied([...members.values()], w.index);
    expectSameHistories([...members.values()], 29);
    const st = next.node.status();
    expect(st.voters).toHaveLength(3); // the dead voter is still a voter: 2 of 3 is a quorum
    console.log(`failover: host stopped after ${killedAfterMs.toFixed(0)} ms, new leader after ${electedAfterMs.toFixed(0)} ms, committed after ${failoverMs.toFixed(0)} ms`);
  });

  it('a restarted node catches up from its data dir, via a snapshot after the log was compacted', async () => {
    const leader = await waitForLeader();
    // Far more entries than the leader keeps behind its snapshots while the node is away.
    for (let i = 0; i < 3 * SNAPSHOT_EVERY; i++) await propose(leader, `while-down-${i}`);
    expect(leader.node.status().snapshotIndex).toBeGreaterThan(killedLastIndex + COMPACT_KEEP);

    const back = await startMember(killedName, { key: killedKey });
    // It came back with what it had on disk: its own earlier state, not an empty one.
    expect(back.node.status().lastIndex).toBeGreaterThanOrEqual(killedLastIndex);
    const restoresAtStart = back.sm.restores;
    const target = leader.node.status().commit;
    await waitApplied([back], target);
    expect(back.sm.restores).toBeGreaterThan(restoresAtStart); // caught up by the leader's snapshot
    const all = [...members.values()];
    const w = await propose(leader, 'all-back');
    await waitApplied(all, w.index);
    expectSameHistories(all, 29 + 3 * SNAPSHOT_EVERY + 1);
    expect(leader.node.status().peers.every((p) => p.recentActive)).toBe(true);
  });

  it('transfers leadership to a chosen voter', async () => {
    const leader = await waitForLeader();
    const target = [...members.values()].find((m) => m !== leader)!;
    await leader.node.transferLeadership(target.node.id, { signal: AbortSignal.timeout(3_000) });
    await waitFor('the transferee to lead', () => target.node.status().role === 'leader');
    const w = await propose(target, 'after-transfer');
    await waitApplied([...members.values()], w.index);
  });

  it('snapshots once the log since the last one is as large as it (snapshotLogRatio 1)', async () => {
    const host = await createHost({ privateKey: await generateKeyPair('Ed25519'), swarmKey, listen: ['/ip4/127.0.0.1/tcp/0'] });
    extraHosts.push(host);
    const logs: LogLine[] = [];
    const sm = new HistoryMachine();
    const node = new RaftNode({ host, dir: join(root, 'solo'), stateMachine: sm, log: recordingLogger(logs), bootstrap: { voters: [host.peerId.toString()] }, snapshotEvery: 10, snapshotLogRatio: 1 });
    await node.start();
    try {
      await waitFor('the solo node to lead', () => node.status().role === 'leader');
      for (let i = 0; i < 120; i++) await node.propose(new TextEncoder().encode(`entry-${String(i).padStart(4, '0')}`), { signal: AbortSignal.timeout(5_000) });
      const taken = logs.filter((l) => l.msg === 'snapshot taken, log compacted').map((l) => l.fields['index'] as number);
      // The snapshot (the whole history) grows with every entry, so once it outweighs ten
      // entries the log between two snapshots must grow with it; by count alone there would be 12.
      expect(taken.length).toBeGreaterThanOrEqual(3);
      expect(taken.length).toBeLessThan(12);
      const gaps = taken.slice(1).map((index, i) => index - taken[i]!);
      for (let i = 1; i < gaps.length; i++) expect(gaps[i]!).toBeGreaterThanOrEqual(gaps[i - 1]!);
      expect(gaps.at(-1)!).toBeGreaterThan(10);
      expect(node.status().snapshotIndex).toBe(taken.at(-1));
    } finally {
      await node.stop();
    }
  });
});
