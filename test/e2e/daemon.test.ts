/** One daemon and the CLI around it: files and their modes, the lock, the API's token, bad input. */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { statSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Fabric, LOOPBACK, runCli, type DaemonProcess } from './harness.ts';

describe('a single daemon', () => {
  const fabric = new Fabric();
  let d: DaemonProcess;

  beforeAll(async () => {
    d = fabric.daemon('solo');
    await d.start(['init', ...LOOPBACK, '--zone', 'lab', '--label', 'rack=r7', '--price-per-gpu-hour', '2.5', '--spot', '--simulate-gpus', 'h100-sxm-8']);
  }, 60_000);

  afterAll(() => fabric.cleanup());

  test('secrets and the API file are mode 0600', () => {
    for (const f of ['identity.key', 'swarm.key', 'api.json', 'config.json', 'state.json']) {
      expect((statSync(join(d.dataDir, f)).mode & 0o777).toString(8), f).toBe('600');
    }
  });

  test('the API listens on 127.0.0.1 only and answers 401 without the bearer token', async () => {
    const api = d.apiFile();
    expect(new URL(api.url).hostname).toBe('127.0.0.1');
    expect((await fetch(`${api.url}/v1/nodes`)).status).toBe(401);
    expect((await fetch(`${api.url}/v1/nodes`, { headers: { authorization: 'Bearer wrong-token-wrong-token' } })).status).toBe(401);
    const ok = await fetch(`${api.url}/v1/nodes`, { headers: { authorization: `Bearer ${api.token}` } });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { nodes: unknown[] }).nodes).toHaveLength(1);
  });

  test('status shows identity, addresses, fabric id and peer count', async () => {
    const s = await d.status();
    expect(s.peerId).toMatch(/^12D3KooW/);
    expect(s.fabricId).toMatch(/^fab-[0-9a-f]{16}$/);
    expect(s.addrs.some((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))).toBe(true);
    expect(s.peers).toMatchObject({ alive: 0, suspect: 0, dead: 0 });
    expect(s.devices).toBe(8);
    const human = await d.cli(['status']);
    expect(human.stdout).toContain(s.peerId);
    expect(human.stdout).toContain(s.fabricId);
  });

  test('labels from the flags are gossiped with the node', async () => {
    const [self] = await d.nodes();
    expect(self).toMatchObject({ self: true, zone: 'lab', spot: true, pricePerGpuHour: 2.5 });
    expect(self!.labels).toMatchObject({ rack: 'r7', zone: 'lab', spot: 'true' });
  });

  test('a second daemon on the same data dir is refused', async () => {
    const r = await runCli(['agent', '--data-dir', d.dataDir]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/in use by a running daemon/);
  });

  test('init on a data dir that already holds a fabric is refused', async () => {
    const r = await runCli(['init', '--data-dir', d.dataDir, ...LOOPBACK]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/already holds fabric/);
  });

  test('a garbled or foreign join token is refused with a clear message and creates nothing', async () => {
    const good = (await d.cli(['token'])).stdout.trim();
    expect(good).toMatch(/^fab1_/);
    const garbled = good.slice(0, 20) + (good[20] === 'A' ? 'B' : 'A') + good.slice(21);
    const dir = join(fabric.root, 'never');
    for (const [token, message] of [
      [garbled, /garbled/],
      ['QmFoo-not-a-token', /not a fabric join token/],
      ['fab1_' + 'x'.repeat(10), /garbled/],
    ] as const) {
      const r = await runCli(['join', token, '--data-dir', dir, ...LOOPBACK]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    }
    expect(() => readdirSync(dir)).toThrow();
  });

  test('bad flags are named in one line and change nothing', async () => {
    const dir = join(fabric.root, 'badflags');
    const r = await runCli(['init', '--data-dir', dir, '--listen', 'not-a-multiaddr', '--api-port', '99999', '--simulate-gpus', 'no-such-profile']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--listen/);
    expect(r.stderr).toMatch(/--api-port/);
    expect(r.stderr).toMatch(/--simulate-gpus/);
    expect(() => readdirSync(dir)).toThrow();
  });

  test('a client without a daemon says so', async () => {
    const r = await runCli(['nodes', '--data-dir', join(fabric.root, 'nothing-here')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no daemon is running/);
  });

  test('a secret with loose permissions is refused at start', async () => {
    const dir = join(fabric.root, 'loose');
    const other = fabric.daemon('loose');
    await other.start(['init', ...LOOPBACK, '--simulate-gpus', 'cpu-only']);
    await other.stop();
    const { chmodSync } = await import('node:fs');
    chmodSync(join(dir, 'swarm.key'), 0o644);
    const r = await runCli(['agent', '--data-dir', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/must be 0600/);
  });

  test('a corrupt config file is a clear error', async () => {
    const dir = join(fabric.root, 'corrupt');
    const other = fabric.daemon('corrupt');
    await other.start(['init', ...LOOPBACK, '--simulate-gpus', 'cpu-only']);
    await other.stop();
    writeFileSync(join(dir, 'config.json'), '{"v": 1, "fabricId": 42');
    const r = await runCli(['agent', '--data-dir', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/config\.json is not valid JSON/);
  });

  test('SIGTERM stops the daemon cleanly and releases the data dir', async () => {
    const other = fabric.daemon('stopme');
    await other.start(['init', ...LOOPBACK, '--simulate-gpus', 'cpu-only']);
    await other.stop();
    expect(other.child!.exitCode).toBe(0);
    expect(() => statSync(join(other.dataDir, 'api.json'))).toThrow();
    expect(() => statSync(join(other.dataDir, 'daemon.lock'))).toThrow();
    const again = await other.start(['agent']);
    expect(again.incarnation).toBe(2);
  });
});

describe('--help', () => {
  test.each([[[]], [['init']], [['join']], [['agent']], [['token']], [['nodes']], [['status']]])('fabric %j --help', async (cmd) => {
    const r = await runCli([...cmd, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: fabric/);
  });

  test('init --help lists the simulated GPU profiles', async () => {
    const r = await runCli(['init', '--help']);
    for (const p of ['h100-sxm-8', 'a100-sxm-8', 'h100-mig', 'mi300x-4', 'cpu-only']) expect(r.stdout).toContain(p);
  });
});
