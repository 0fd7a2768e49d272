/**
 * Five daemons as separate processes on loopback: every one lists all five with the right
 * simulated devices; kill -9 one, every other marks it dead; restart it from its data dir, it
 * is back under the same peer id; a daemon with a wrong swarm key is never listed.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Fabric, LOOPBACK, waitFor, type DaemonProcess } from './harness.ts';
import { encodeJoinToken, decodeJoinToken } from '../../src/node/token.ts';
import type { NodeView } from '../../src/api/schemas.ts';

const PROFILES = [
  { name: 'a', profile: 'h100-sxm-8', zone: 'eu-1', gpus: 8, model: /H100/, nvlinkPairs: 28 },
  { name: 'b', profile: 'a100-sxm-8', zone: 'eu-1', gpus: 8, model: /A100/, nvlinkPairs: 28 },
  { name: 'c', profile: 'h100-mig', zone: 'us-1', gpus: 1, model: /H100/, nvlinkPairs: 0 },
  { name: 'd', profile: 'mi300x-4', zone: 'us-1', gpus: 4, model: /MI300X/, nvlinkPairs: 0 },
  { name: 'e', profile: 'cpu-only', zone: 'us-2', gpus: 0, model: /.*/, nvlinkPairs: 0 },
] as const;

describe('a five-daemon fabric on loopback', () => {
  const fabric = new Fabric();
  const daemons = new Map<string, DaemonProcess>();
  const peerIds = new Map<string, string>();
  let token = '';

  beforeAll(async () => {
    const first = PROFILES[0];
    const a = fabric.daemon(first.name);
    const s = await a.start(['init', ...LOOPBACK, '--zone', first.zone, '--simulate-gpus', first.profile]);
    daemons.set(first.name, a);
    peerIds.set(first.name, s.peerId);
    const t = await a.cli(['token']);
    expect(t.code).toBe(0);
    token = t.stdout.trim();
    await Promise.all(
      PROFILES.slice(1).map(async (p) => {
        const d = fabric.daemon(p.name);
        const st = await d.start(['join', token, ...LOOPBACK, '--zone', p.zone, '--simulate-gpus', p.profile, '--label', `team=${p.name}`]);
        daemons.set(p.name, d);
        peerIds.set(p.name, st.peerId);
      }),
    );
  }, 90_000);

  afterAll(() => fabric.cleanup());

  const allAlive = (nodes: NodeView[], n: number) => nodes.length === n && nodes.every((x) => x.state === 'alive' && x.updatedAtMs !== null);

  test('every daemon lists all five, alive, with the right simulated devices', async () => {
    for (const [name, d] of daemons) {
      const nodes = await waitFor(`${name} to see 5 alive peers`, async () => {
        const ns = await d.nodes();
        return allAlive(ns, 5) ? ns : undefined;
      }, 30_000);
      for (const p of PROFILES) {
        const view = nodes.find((x) => x.peerId === peerIds.get(p.name));
        expect(view, `${name} lists ${p.name}`).toBeDefined();
        expect(view!.zone).toBe(p.zone);
        expect(view!.devices).toHaveLength(p.gpus);
        for (const dev of view!.devices) expect(dev.model).toMatch(p.model);
        expect(view!.links.filter((l) => l.kind === 'nvlink')).toHaveLength(p.nvlinkPairs);
        if (p.name !== 'a') expect(view!.labels['team']).toBe(p.name);
      }
      const mig = nodes.find((x) => x.peerId === peerIds.get('c'))!;
      expect(mig.devices[0]!.migEnabled).toBe(true);
      expect(mig.devices[0]!.migInstances.length).toBeGreaterThan(0);
    }
    // Each simulated daemon has its own device UUIDs.
    const nodes = await daemons.get('a')!.nodes();
    const uuids = nodes.flatMap((n) => n.devices.map((d) => d.uuid));
    expect(new Set(uuids).size).toBe(uuids.length);
  });

  test('a label change on one daemon reaches every other daemon', async () => {
    const d = daemons.get('d')!;
    const r = await d.cli(['label', 'set', 'maintenance=soon', 'tier=gold']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('tier=gold');
    for (const [name, other] of daemons) {
      await waitFor(`${name} to see the new labels`, async () => {
        const v = (await other.nodes()).find((n) => n.peerId === peerIds.get('d'));
        return v?.labels['tier'] === 'gold' && v.labels['maintenance'] === 'soon' ? true : undefined;
      }, 10_000);
    }
    expect((await d.cli(['label', 'rm', 'maintenance'])).code).toBe(0);
    await waitFor('a to see the label removed', async () => ((await daemons.get('a')!.nodes()).find((n) => n.peerId === peerIds.get('d'))?.labels['maintenance'] === undefined) || undefined, 10_000);
    const bad = await d.cli(['label', 'set', 'no-equals-sign']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/key=value/);
  });

  test('the human table shows one row per peer with its GPUs', async () => {
    const r = await daemons.get('b')!.cli(['nodes']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/PEER\s+STATE\s+ZONE\s+GPUS\s+FREE\/TOTAL\s+UPDATED/);
    expect(lines).toHaveLength(6);
    expect(r.stdout).toMatch(/8×H100 80GB HBM3 NV18/);
    expect(r.stdout).toMatch(/8\/8/);
  });

  test('kill -9 one daemon: every other marks it dead; restarted, it is back under the same peer id', async () => {
    const victim = daemons.get('c')!;
    const victimId = peerIds.get('c')!;
    await victim.kill9();
    for (const [name, d] of daemons) {
      if (name === 'c') continue;
      await waitFor(`${name} to mark c dead`, async () => (await d.nodes()).find((n) => n.peerId === victimId)?.state === 'dead', 20_000);
    }
    const restarted = await victim.start(['agent']);
    expect(restarted.peerId).toBe(victimId);
    expect(restarted.incarnation).toBe(2);
    for (const [name, d] of daemons) {
      await waitFor(`${name} to see c alive again`, async () => {
        const n = (await d.nodes()).find((x) => x.peerId === victimId);
        return n?.state === 'alive' && n.incarnation === 2;
      }, 20_000);
    }
  });

  test('a daemon with another swarm key is never listed, and never lists anyone', async () => {
    const real = decodeJoinToken(token);
    const forged = encodeJoinToken({ ...real, swarmKey: new Uint8Array(32).fill(7) });
    const intruder = fabric.daemon('intruder');
    const s = await intruder.start(['join', forged, ...LOOPBACK, '--simulate-gpus', 'cpu-only']);
    // Give it time to try every bootstrap address and for gossip to run several rounds.
    await new Promise((r) => setTimeout(r, 4_000));
    expect((await intruder.nodes()).map((n) => n.peerId)).toEqual([s.peerId]);
    expect((await intruder.status()).peers.connected).toBe(0);
    for (const d of daemons.values()) {
      const nodes = await d.nodes();
      expect(nodes.some((n) => n.peerId === s.peerId)).toBe(false);
      expect(nodes).toHaveLength(5);
    }
  });
});
