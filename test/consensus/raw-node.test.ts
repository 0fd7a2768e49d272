import { describe, expect, test } from 'vitest';
import { FabricError, isFabricError } from '../../src/core/index.ts';
import { bootstrapLog } from '../../src/consensus/bootstrap.ts';
import { MemoryStorage } from '../../src/consensus/memory-storage.ts';
import { decodeConfChange, encodeConfChange, RawNode } from '../../src/consensus/raw-node.ts';
import { newMessage } from '../../src/consensus/raft.ts';
import type { Ready, RaftConfig } from '../../src/consensus/types.ts';
import { InteractionEnv } from './interaction-env.ts';

const bytes = (s: string) => new TextEncoder().encode(s);

function config(overrides: Partial<RaftConfig> = {}): RaftConfig {
  return {
    id: '1',
    electionTick: 10,
    heartbeatTick: 2,
    storage: new MemoryStorage({ confState: { voters: ['1'], learners: [] } }),
    applied: 0,
    randomInt: () => 0,
    preVote: true,
    checkQuorum: true,
    maxSizePerMsg: 1024,
    maxInflightMsgs: 4,
    ...overrides,
  };
}

function errorCode(fn: () => void): string | undefined {
  try {
    fn();
  } catch (err) {
    return isFabricError(err) ? err.code : 'OTHER';
  }
  return undefined;
}

/** Persists and "applies" a Ready the way a driver does. */
function handle(node: RawNode, storage: MemoryStorage): Ready {
  const rd = node.ready();
  if (rd.snapshot) storage.applySnapshot(rd.snapshot);
  storage.append(rd.entries);
  if (rd.hardState) storage.setHardState(rd.hardState);
  node.advance(rd);
  return rd;
}

/** A 3-voter group with 1 elected (entry 3 committed everywhere). */
function electedGroup(): InteractionEnv {
  const env = new InteractionEnv();
  env.handle('add-nodes 3 voters=(1,2,3) index=2');
  env.handle('campaign 1');
  env.handle('stabilize');
  return env;
}

describe('RawNode', () => {
  test('refuses a bad configuration', () => {
    expect(errorCode(() => new RawNode(config({ id: '' })))).toBe('BAD_INPUT');
    expect(errorCode(() => new RawNode(config({ electionTick: 2, heartbeatTick: 2 })))).toBe('BAD_INPUT');
    expect(errorCode(() => new RawNode(config({ maxInflightMsgs: 0 })))).toBe('BAD_INPUT');
    expect(errorCode(() => new RawNode(config({ applied: 5 })))).toBe('BAD_INPUT'); // beyond the commit index
  });

  test('learnerHeartbeatTick: optional, an integer no shorter than heartbeatTick', () => {
    // config() has heartbeatTick 2.
    expect(errorCode(() => new RawNode(config()))).toBeUndefined();
    expect(errorCode(() => new RawNode(config({ learnerHeartbeatTick: 2 })))).toBeUndefined();
    expect(errorCode(() => new RawNode(config({ learnerHeartbeatTick: 40 })))).toBeUndefined(); // beyond electionTick is fine
    for (const bad of [1, 0, -3, 2.5, Number.NaN]) {
      expect(errorCode(() => new RawNode(config({ learnerHeartbeatTick: bad })))).toBe('BAD_INPUT');
    }
  });

  test('a single voter elects itself and commits a proposal in one Ready', () => {
    const storage = new MemoryStorage({ confState: { voters: ['1'], learners: [] } });
    const node = new RawNode(config({ storage }));
    expect(node.hasReady()).toBe(false);
    node.campaign();
    const rd1 = handle(node, storage);
    expect(rd1.softState).toEqual({ leader: '1', role: 'leader' });
    expect(rd1.hardState).toEqual({ term: 1, vote: '1', commit: 1 });
    node.propose(bytes('x'));
    const rd2 = handle(node, storage);
    expect(rd2.entries.map((e) => e.index)).toEqual([2]);
    expect(rd2.committedEntries.map((e) => new TextDecoder().decode(e.data))).toEqual(['x']);
    expect(rd2.messages).toEqual([]);
    expect(node.hasReady()).toBe(false);
    expect(node.status()).toMatchObject({ role: 'leader', term: 1, commit: 2, applied: 2, lastIndex: 2 });
  });

  test('a second ready() before advance hands out only what is new', () => {
    const storage = new MemoryStorage({ confState: { voters: ['1'], learners: [] } });
    const node = new RawNode(config({ storage }));
    node.campaign();
    handle(node, storage);
    node.propose(bytes('a'));
    const first = node.ready();
    node.propose(bytes('b'));
    const second = node.ready();
    expect(first.entries.map((e) => e.index)).toEqual([2]);
    expect(second.entries.map((e) => e.index)).toEqual([3]);
    expect(first.committedEntries.map((e) => e.index)).toEqual([2]);
    expect(second.committedEntries.map((e) => e.index)).toEqual([3]);
    for (const rd of [first, second]) {
      storage.append(rd.entries);
      node.advance(rd);
    }
    expect(node.hasReady()).toBe(false);
    expect(node.status().applied).toBe(3);
  });

  test('the election timeout is randomized through config.randomInt', () => {
    let asked = 0;
    const node = new RawNode(config({ randomInt: (n) => ((asked = n), n - 1) }));
    expect(asked).toBe(10);
    for (let i = 0; i < 18; i++) node.tick();
    expect(node.status().role).toBe('follower');
    node.tick(); // 19 = electionTick + (electionTick - 1)
    expect(node.status().role).toBe('leader');
  });

  test('propose: NOT_LEADER without a leader, BAD_INPUT for empty data; errors are FabricErrors', () => {
    const node = new RawNode(config({ storage: new MemoryStorage({ confState: { voters: ['1', '2', '3'], learners: [] } }) }));
    expect(errorCode(() => node.propose(bytes('x')))).toBe('NOT_LEADER');
    expect(errorCode(() => node.propose(new Uint8Array(0)))).toBe('BAD_INPUT');
    expect(errorCode(() => node.readIndex(bytes('r')))).toBe('NOT_LEADER');
    expect(errorCode(() => node.readIndex(new Uint8Array(0)))).toBe('BAD_INPUT');
    node.campaign(); // a pre-candidate: an election is under way
    try {
      node.propose(bytes('x'));
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(FabricError);
      expect((err as FabricError).code).toBe('NOT_LEADER');
    }
  });

  test('a new leader refuses a conf change until it has committed an entry of its term', () => {
    const env = new InteractionEnv();
    env.handle('add-nodes 3 voters=(1,2,3) pre-vote=false');
    env.handle('campaign 1');
    env.handle('process-ready 1');
    env.handle('deliver-msgs 2 3');
    env.handle('process-ready 2 3');
    env.handle('deliver-msgs 1');
    const leader = env.nodes.get('1')!.raw;
    expect(leader.status().role).toBe('leader');
    expect(errorCode(() => leader.proposeConfChange({ type: 'add-learner', node: '4' }))).toBe('PROPOSAL_DROPPED');
    env.handle('stabilize');
    leader.proposeConfChange({ type: 'add-learner', node: '4' });
    expect(errorCode(() => leader.proposeConfChange({ type: 'add-voter', node: '4' }))).toBe('PROPOSAL_DROPPED');
  });

  test('a follower forwards proposals; a leader under transfer drops forwarded ones silently', () => {
    const env = electedGroup();
    env.handle('partition (1,2) (3)');
    env.handle('transfer-leadership from=1 to=3');
    env.handle('propose 2 forwarded');
    const out = env.handle('stabilize');
    expect(out).toContain('2->1 prop term=0 entries=["forwarded"]');
    expect(env.nodes.get('1')!.raw.status().lastIndex).toBe(3); // not appended
    expect(errorCode(() => env.nodes.get('1')!.raw.propose(bytes('local')))).toBe('PROPOSAL_DROPPED');
  });

  test('step ignores messages for another node, posing as this one, or without a term', () => {
    const env = electedGroup();
    const follower = env.nodes.get('2')!.raw;
    const before = follower.status();
    follower.step(newMessage('heartbeat', '3', { from: '1', term: 9 }));
    follower.step(newMessage('heartbeat', '2', { from: '2', term: 9 }));
    follower.step(newMessage('heartbeat', '2', { from: '1', term: 0 }));
    expect(follower.status()).toEqual(before);
    expect(follower.hasReady()).toBe(false);
  });

  test('a stale leader is answered with the current term and steps down', () => {
    const env = electedGroup();
    env.handle('partition (1) (2,3)');
    env.handle('tick-election 3');
    env.handle('stabilize');
    env.handle('tick-election 2');
    env.handle('stabilize');
    expect(env.nodes.get('3')!.raw.status()).toMatchObject({ term: 3, lead: '2' });
    env.handle('heal');
    env.handle('tick-heartbeat 1'); // old leader's heartbeat at term 2
    const out = env.handle('stabilize');
    expect(out).toContain('2->1 app-resp term=3 index=0');
    expect(env.nodes.get('1')!.raw.status()).toMatchObject({ role: 'follower', term: 3 });
  });

  test('a learner receives the log but never campaigns', () => {
    const env = new InteractionEnv();
    env.handle('add-nodes 3 voters=(1,2) learners=(3) index=2');
    env.handle('campaign 3');
    env.handle('tick-election 3');
    expect(env.handle('stabilize')).toBe('ok');
    env.handle('campaign 1');
    env.handle('stabilize');
    env.handle('propose 1 x');
    env.handle('stabilize');
    expect(env.nodes.get('3')!.raw.status()).toMatchObject({ role: 'follower', lead: '1', commit: 4 });
    expect(env.nodes.get('1')!.raw.status().progress.find((p) => p.id === '3')).toMatchObject({ learner: true, match: 4 });
  });

  test('reportUnreachable sends a replicating peer back to probing; reportSnapshot ends snapshot state', () => {
    const env = electedGroup();
    const leader = env.nodes.get('1')!.raw;
    const peer = (id: string) => leader.status().progress.find((p) => p.id === id)!;
    expect(peer('2').state).toBe('replicate');
    leader.reportUnreachable('2');
    expect(peer('2').state).toBe('probe');

    env.handle('partition (1,2) (3)');
    env.handle('propose 1 a');
    env.handle('stabilize');
    env.handle('compact 1 4');
    env.handle('heal');
    env.handle('tick-heartbeat 1');
    env.handle('process-ready 1');
    env.handle('deliver-msgs 3');
    env.handle('process-ready 3');
    env.handle('deliver-msgs 1');
    env.handle('process-ready 1');
    env.handle('deliver-msgs 3');
    env.handle('process-ready 3');
    env.handle('deliver-msgs 1');
    expect(peer('3')).toMatchObject({ state: 'snapshot', pendingSnapshot: 4 });
    leader.reportSnapshot('3', false);
    expect(peer('3')).toMatchObject({ state: 'probe', next: 4 });
  });

  test('status shows progress on the leader only', () => {
    const env = electedGroup();
    expect(env.nodes.get('1')!.raw.status().progress.map((p) => [p.id, p.match, p.state])).toEqual([
      ['1', 3, 'replicate'],
      ['2', 3, 'replicate'],
      ['3', 3, 'replicate'],
    ]);
    expect(env.nodes.get('2')!.raw.status().progress).toEqual([]);
  });
});

describe('ConfChange encoding', () => {
  test('round-trips and refuses anything else with BAD_INPUT', () => {
    for (const type of ['add-voter', 'remove-voter', 'add-learner'] as const) {
      expect(decodeConfChange(encodeConfChange({ type, node: 'peer-x' }))).toEqual({ type, node: 'peer-x' });
    }
    for (const bad of ['', 'nope', '[]', '{"type":"add-witness","node":"a"}', '{"type":"add-voter","node":""}', '{"type":"add-voter"}']) {
      expect(errorCode(() => decodeConfChange(bytes(bad)))).toBe('BAD_INPUT');
    }
    expect(errorCode(() => decodeConfChange(new Uint8Array([0xff, 0xfe])))).toBe('BAD_INPUT');
  });
});

describe('bootstrap', () => {
  const entry = (index: number, term: number, text = `e${index}`) => ({ index, term, type: 'normal' as const, data: bytes(text) });

  test('bootstrapLog: canonical committed conf-change entries 1..n at term 1; an empty configuration gives an empty log', () => {
    const a = bootstrapLog({ voters: ['3', '1', '2', '1'], learners: ['4', '2'] });
    const b = bootstrapLog({ voters: ['2', '3', '1'], learners: ['4'] });
    expect(a).toEqual(b); // every founder writes the same entries (log matching)
    expect(a.entries.map((e) => [e.index, e.term, e.type, decodeConfChange(e.data)])).toEqual([
      [1, 1, 'conf-change', { type: 'add-voter', node: '1' }],
      [2, 1, 'conf-change', { type: 'add-voter', node: '2' }],
      [3, 1, 'conf-change', { type: 'add-voter', node: '3' }],
      [4, 1, 'conf-change', { type: 'add-learner', node: '4' }],
    ]);
    expect(a.hardState).toEqual({ term: 1, vote: null, commit: 4 });
    expect(bootstrapLog({ voters: [], learners: [] })).toEqual({ entries: [], hardState: { term: 0, vote: null, commit: 0 } });
    expect(errorCode(() => bootstrapLog({ voters: [], learners: ['1'] }))).toBe('BAD_INPUT');
    expect(errorCode(() => bootstrapLog({ voters: [''], learners: [] }))).toBe('BAD_INPUT');
    expect(errorCode(() => new MemoryStorage({ confState: { voters: ['1'], learners: [] }, bootstrap: { voters: ['1'], learners: [] } }))).toBe('BAD_INPUT');
  });

  test('a bootstrapped single voter learns its configuration by applying entry 1, then elects itself', () => {
    const storage = new MemoryStorage({ bootstrap: { voters: ['1'], learners: [] } });
    expect(storage.snapshot().metadata.confState).toEqual({ voters: [], learners: [] });
    const node = new RawNode(config({ storage }));
    expect(node.status()).toMatchObject({ term: 1, commit: 1, applied: 0, lastIndex: 1, config: { voters: [], learners: [] } });
    node.campaign(); // not a voter yet: nothing happens
    const rd = node.ready();
    expect(rd.messages).toEqual([]);
    expect(rd.committedEntries.map((e) => e.index)).toEqual([1]);
    expect(node.applyConfChange(decodeConfChange(rd.committedEntries[0]!.data))).toEqual({ voters: ['1'], learners: [] });
    node.advance(rd);
    node.campaign();
    handle(node, storage);
    expect(node.status()).toMatchObject({ role: 'leader', term: 2 });
  });

  test('with the configuration only in the index-0 snapshot, an empty joiner fed the log from index 1 never learns the founder (why bootstrap writes it into the log)', () => {
    // The founder's log after it elected itself, added '2' and committed that.
    const founderLog = [entry(1, 2, ''), { index: 2, term: 2, type: 'conf-change' as const, data: encodeConfChange({ type: 'add-learner', node: '2' }) }];
    const joinerConfig = (founderStorage: 'snapshot' | 'bootstrap'): unknown => {
      const storage = new MemoryStorage();
      const joiner = new RawNode(config({ id: '2', storage }));
      const prefix = founderStorage === 'bootstrap' ? bootstrapLog({ voters: ['1'], learners: [] }).entries : [];
      const shift = prefix.length;
      const log = [...prefix, ...founderLog.map((e) => ({ ...e, index: e.index + shift }))];
      joiner.step(newMessage('app', '2', { from: '1', term: 2, logTerm: 0, index: 0, commit: log.length, entries: log }));
      const rd = joiner.ready();
      let conf: unknown;
      for (const e of rd.committedEntries) if (e.type === 'conf-change') conf = joiner.applyConfChange(decodeConfChange(e.data));
      return conf;
    };
    expect(joinerConfig('snapshot')).toEqual({ voters: [], learners: ['2'] }); // the founder '1' is missing
    expect(joinerConfig('bootstrap')).toEqual({ voters: ['1'], learners: ['2'] });
  });
});

describe('loading the stored state (a restart)', () => {
  const entry = (index: number, term: number) => ({ index, term, type: 'normal' as const, data: bytes(`e${index}`) });
  const three = { voters: ['1', '2', '3'], learners: [] };

  test('a term below the last entry\'s (entries kept, their hard state lost) is raised to it, the vote cleared', () => {
    const storage = new MemoryStorage({ bootstrap: three });
    storage.append([entry(4, 3), entry(5, 3)]);
    storage.setHardState({ term: 2, vote: '2', commit: 3 });
    const node = new RawNode(config({ storage }));
    expect(node.status()).toMatchObject({ term: 3, vote: null, commit: 3 });
    // It never voted in term 3 (that vote would have been durable with term 3): it may now.
    node.step(newMessage('vote', '1', { from: '3', term: 3, logTerm: 3, index: 5 }));
    const rd = node.ready();
    expect(rd.hardState).toEqual({ term: 3, vote: '3', commit: 3 });
    expect(rd.messages.map((m) => [m.type, m.term, m.reject])).toEqual([['vote-resp', 3, false]]);
  });

  test('a term at or above the last entry\'s is kept with its vote, and nothing new is to persist', () => {
    const storage = new MemoryStorage({ bootstrap: three });
    storage.append([entry(4, 3)]);
    storage.setHardState({ term: 4, vote: '2', commit: 4 });
    const node = new RawNode(config({ storage }));
    expect(node.status()).toMatchObject({ term: 4, vote: '2', commit: 4 });
    node.step(newMessage('vote', '1', { from: '3', term: 4, logTerm: 3, index: 4 }));
    expect(node.ready().messages.map((m) => [m.type, m.reject])).toEqual([['vote-resp', true]]);
  });

  test('a snapshot kept without its hard state: term raised to the snapshot\'s, commit to its index', () => {
    const storage = new MemoryStorage({ bootstrap: three });
    storage.applySnapshot({ metadata: { index: 9, term: 4, confState: three }, data: new Uint8Array() });
    storage.setHardState({ term: 2, vote: '3', commit: 3 });
    const node = new RawNode(config({ storage, applied: 9 }));
    expect(node.status()).toMatchObject({ term: 4, vote: null, commit: 9, applied: 9, lastIndex: 9, config: three });
  });

  test('a commit index beyond the last index (committed entries missing) is refused with CORRUPT_STORAGE', () => {
    const storage = new MemoryStorage({ bootstrap: three });
    storage.append([entry(4, 2), entry(5, 2)]);
    storage.setHardState({ term: 2, vote: null, commit: 7 });
    let caught: unknown;
    try {
      new RawNode(config({ storage }));
    } catch (err) {
      caught = err;
    }
    expect(isFabricError(caught, 'CORRUPT_STORAGE')).toBe(true);
    expect((caught as FabricError).message).toMatch(/commit index 7 is beyond the log's last index 5/);
    // At the last index itself it is fine.
    storage.setHardState({ term: 2, vote: null, commit: 5 });
    expect(new RawNode(config({ storage })).status().commit).toBe(5);
  });
});
