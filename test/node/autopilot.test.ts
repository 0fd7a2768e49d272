import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { planVoterChange, voterTarget, type AutopilotInput, type AutopilotPeer } from '../../src/node/autopilot.ts';

const peer = (peerId: string, zone: string, health: AutopilotPeer['health'] = 'alive', healthForMs = 60_000): AutopilotPeer => ({ peerId, zone, health, healthForMs });

function input(over: Partial<AutopilotInput>): AutopilotInput {
  return { self: 'a', voters: ['a'], learners: [], match: new Map(), lastIndex: 10, peers: [peer('a', 'z1')], deadGraceMs: 30_000, ...over };
}

describe('autopilot', () => {
  test('targets: 1 voter below 3 peers, 3 below 5, then 5', () => {
    expect([1, 2, 3, 4, 5, 9].map((n) => voterTarget(n))).toEqual([1, 1, 3, 3, 5, 5]);
  });

  test('every healthy peer becomes a learner; with two peers there stays one voter (two would stall on either loss)', () => {
    expect(planVoterChange(input({ peers: [peer('a', 'z1'), peer('b', 'z1')] }))).toMatchObject({ type: 'add-learner', peer: 'b' });
    expect(planVoterChange(input({ learners: ['b'], match: new Map([['b', 10]]), peers: [peer('a', 'z1'), peer('b', 'z1')] }))).toBeNull();
  });

  test('voters are promoted from the least represented zone', () => {
    const peers = [peer('a', 'z1'), peer('b', 'z1'), peer('c', 'z2'), peer('d', 'z1')];
    const match = new Map([['b', 10], ['c', 10], ['d', 10]]);
    expect(planVoterChange(input({ learners: ['b', 'c', 'd'], match, peers }))).toMatchObject({ type: 'promote', peer: 'c' });
  });

  test('a learner is promoted only once caught up', () => {
    const peers = [peer('a', 'z1'), peer('b', 'z2'), peer('c', 'z3')];
    expect(planVoterChange(input({ learners: ['b', 'c'], peers, catchUpEntries: 5, match: new Map([['b', 0], ['c', 2]]) }))).toBeNull();
    expect(planVoterChange(input({ learners: ['b', 'c'], peers, catchUpEntries: 5, match: new Map([['b', 10], ['c', 2]]) }))).toMatchObject({ type: 'promote', peer: 'b' });
  });

  test('a dead voter is kept during the grace period, then replaced before it is removed', () => {
    const voters = ['a', 'b', 'c'];
    const base = { voters, learners: ['d'], match: new Map([['b', 10], ['c', 10], ['d', 10]]) };
    const deadRecently = [peer('a', 'z1'), peer('b', 'z2'), peer('c', 'z3', 'dead', 5_000), peer('d', 'z3')];
    expect(planVoterChange(input({ ...base, peers: deadRecently }))).toBeNull();
    const deadLong = [peer('a', 'z1'), peer('b', 'z2'), peer('c', 'z3', 'dead', 40_000), peer('d', 'z3')];
    expect(planVoterChange(input({ ...base, peers: deadLong }))).toMatchObject({ type: 'promote', peer: 'd' });
    expect(planVoterChange(input({ ...base, voters: [...voters, 'd'], learners: [], peers: deadLong }))).toMatchObject({ type: 'remove', peer: 'c' });
  });

  test('with nobody to replace it, a long-dead voter is removed', () => {
    const peers = [peer('a', 'z1'), peer('b', 'z2'), peer('c', 'z3', 'dead', 40_000)];
    expect(planVoterChange(input({ voters: ['a', 'b', 'c'], peers }))).toMatchObject({ type: 'remove', peer: 'c' });
  });

  test('a replaced voter that comes back alive makes one voter too many: one is demoted, never the leader, only when all are alive', () => {
    const voters = ['a', 'b', 'c', 'd', 'e', 'f'];
    const match = new Map(voters.map((v) => [v, 10]));
    const peers = [peer('a', 'z1'), peer('b', 'z1'), peer('c', 'z1'), peer('d', 'z2'), peer('e', 'z3'), peer('f', 'z2')];
    // z1 holds three voters, one of them the leader: one of the other two goes.
    expect(planVoterChange(input({ voters, match, peers }))).toMatchObject({ type: 'demote', peer: 'c' });
    const doubtful = peers.map((p) => (p.peerId === 'd' ? { ...p, health: 'suspect' as const } : p));
    expect(planVoterChange(input({ voters, match, peers: doubtful }))).toBeNull();
    expect(planVoterChange(input({ voters: voters.slice(0, 5), learners: ['f'], match, peers }))).toBeNull();
  });

  test('suspect or unknown voters are never removed', () => {
    const peers = [peer('a', 'z1'), peer('b', 'z2', 'suspect', 999_999)];
    expect(planVoterChange(input({ voters: ['a', 'b', 'c'], match: new Map([['b', 10], ['c', 10]]), peers }))).toBeNull();
  });

  test('property: never removes a voter that is not dead past grace, never removes itself, one change at a time', () => {
    const ids = ['a', 'b', 'c', 'd', 'e', 'f', 'g'];
    fc.assert(
      fc.property(
        fc.subarray(ids.slice(1)),
        fc.subarray(ids.slice(1)),
        fc.array(fc.record({ health: fc.constantFrom('alive', 'suspect', 'dead'), forMs: fc.integer({ min: 0, max: 100_000 }), zone: fc.constantFrom('z1', 'z2', 'z3'), match: fc.integer({ min: 0, max: 20 }) }), { minLength: ids.length, maxLength: ids.length }),
        (otherVoters, learnersRaw, facts) => {
          const voters = ['a', ...otherVoters];
          const learners = learnersRaw.filter((l) => !voters.includes(l));
          const peers = ids.map((id, i) => ({ peerId: id, health: id === 'a' ? 'alive' : facts[i]!.health, healthForMs: facts[i]!.forMs, zone: facts[i]!.zone }) as AutopilotPeer);
          const match = new Map(ids.map((id, i) => [id, facts[i]!.match]));
          const action = planVoterChange({ self: 'a', voters, learners, match, lastIndex: 20, peers, deadGraceMs: 30_000, catchUpEntries: 5 });
          if (action === null) return;
          const p = peers.find((x) => x.peerId === action.peer)!;
          if (action.type === 'remove') {
            expect(action.peer).not.toBe('a');
            expect(p.health).toBe('dead');
            expect(p.healthForMs).toBeGreaterThanOrEqual(30_000);
          } else if (action.type === 'demote') {
            // Only with every voter alive, and more of them than the target; never itself.
            expect(action.peer).not.toBe('a');
            expect(voters).toContain(action.peer);
            for (const v of voters) expect(peers.find((x) => x.peerId === v)!.health).toBe('alive');
            expect(voters.length).toBeGreaterThan(voterTarget(peers.filter((x) => x.health === 'alive').length));
          } else {
            expect(p.health).toBe('alive');
            if (action.type === 'promote') expect(learners).toContain(action.peer);
            else expect([...voters, ...learners]).not.toContain(action.peer);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});
