/**
 * Jobs on real daemons: run from any peer, placed by the leader, run as processes on the chosen
 * host with their devices, output followed from another peer, a failing job retried then
 * failed, cancel, a request no peer could ever run refused at submit, `fabric explain`, and a
 * frozen host (its daemon SIGSTOPped) whose job ends by its lease before the job runs elsewhere:
 * never twice at once; and a host killed with -9 whose job resumes elsewhere from its latest
 * checkpoint although chunks of it were corrupted on the replicas' disks.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readFileSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Fabric, runCli, runJob, waitFor, type DaemonProcess } from './harness.ts';
import { FabricClient } from '../../src/client/client.ts';
import type { JobDetail } from '../../src/api/schemas.ts';

describe('jobs across three daemons', () => {
  const fabric = new Fabric();
  let a: DaemonProcess;
  let b: DaemonProcess;
  let c: DaemonProcess;
  const client = (d: DaemonProcess) => FabricClient.fromDataDir(d.dataDir);
  const jobOf = (d: DaemonProcess, id: string) => client(d).job(id);
  const untilState = (d: DaemonProcess, id: string, states: string[], timeoutMs = 30_000): Promise<JobDetail> =>
    waitFor(`job ${id} to be ${states.join(' or ')}`, async () => {
      const j = await jobOf(d, id);
      return states.includes(j.state) ? j : undefined;
    }, timeoutMs, 100);

  beforeAll(async () => {
    [a, b, c] = await fabric.startGroup([
      { name: 'a', zone: 'z1', gpus: 'h100-sxm-8' },
      { name: 'b', zone: 'z2', gpus: 'a100-sxm-8' },
      { name: 'c', zone: 'z2', gpus: 'l40s-1' },
    ]) as [DaemonProcess, DaemonProcess, DaemonProcess];
  }, 90_000);

  afterAll(async () => {
    await fabric.cleanup();
  });

  test('a job runs on a peer with the GPUs it asked for; its output is followed from another peer', async () => {
    const id = await runJob(c, ['--gpus', '2', '--model', 'A100', '--', 'sh', '-c', 'echo "job $FABRIC_JOB_ID attempt $FABRIC_ATTEMPT gpus $CUDA_VISIBLE_DEVICES"; sleep 1; echo done; echo warn >&2']);
    const follow = await b.cli(['logs', '-f', id]);
    expect(follow.code, follow.stderr).toBe(0);
    expect(follow.stdout).toMatch(new RegExp(`^job ${id} attempt 1 gpus GPU-[0-9a-f-]+,GPU-[0-9a-f-]+\\ndone\\n$`));
    expect(follow.stderr).toContain('warn');
    const done = await untilState(a, id, ['succeeded']);
    const bPeer = (await b.status()).peerId;
    expect(done.attempts).toHaveLength(1);
    expect(done.attempts[0]!.peerIds).toEqual([bPeer]);
    expect(done.exitCode).toBe(0);
    // the GPUs it saw are the two the leader granted, by UUID
    const gpus = /gpus (\S+)/.exec(follow.stdout)![1]!.split(',');
    const bGpus = (await b.nodes()).find((n) => n.self)!.devices.map((d) => d.uuid);
    for (const g of gpus) expect(bGpus).toContain(g);
    const ps = await a.cli(['ps', '--all']);
    expect(ps.stdout).toMatch(new RegExp(`${id}\\s+sh\\s+default\\s+succeeded`));
    const show = await a.cli(['job', 'show', id, '--json']);
    expect(JSON.parse(show.stdout)).toMatchObject({ id, state: 'succeeded', attempts: [{ attempt: 1, peerIds: [bPeer], outcome: 'succeeded' }] });
    const explain = await a.cli(['explain', id]);
    expect(explain.stdout).toContain('succeeded');
  }, 60_000);

  test('a failing job is retried, then fails with its exit code', async () => {
    const id = await runJob(a, ['--retries', '1', '--retry-backoff-ms', '100', '--', 'sh', '-c', 'echo try $FABRIC_ATTEMPT; exit 3']);
    const j = await untilState(a, id, ['failed']);
    expect(j.attempts.map((x) => x.outcome)).toEqual(['restarting', 'failed']);
    expect(j.exitCode).toBe(3);
    expect(j.reason).toMatch(/exit|code 3/);
  }, 60_000);

  test('cancel stops the job and its processes', async () => {
    const id = await runJob(b, ['--', 'sh', '-c', 'echo $$ > pid; sleep 600']);
    const running = await untilState(a, id, ['running']);
    const host = [a, b, c].find((d) => existsSync(join(d.dataDir, 'jobs', id, 'work', 'pid')))!;
    await waitFor('the pid file', () => readFileSync(join(host.dataDir, 'jobs', id, 'work', 'pid'), 'utf8').trim() || undefined);
    const pid = Number(readFileSync(join(host.dataDir, 'jobs', id, 'work', 'pid'), 'utf8'));
    expect(running.attempts).toHaveLength(1);
    const r = await c.cli(['cancel', id, '--reason', 'test']);
    expect(r.stdout.trim()).toBe(`${id} cancelled`);
    await waitFor('the job process to end', () => {
      try {
        process.kill(pid, 0);
        return undefined;
      } catch {
        return true;
      }
    }, 20_000);
    expect((await jobOf(a, id)).state).toBe('cancelled');
  }, 60_000);

  test('a request no peer could ever run is refused with the reason; with --wait-for-capacity it waits and explain says why', async () => {
    const refused = await runCli(['run', '--data-dir', a.dataDir, '--gpus', '16', '--', 'true']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/no peer of this fabric could ever run this job/);
    expect((await a.cli(['ps', '--all', '--json'])).stdout).not.toContain('"gpus":16');
    const id = await runJob(a, ['--gpus', '1', '--vendor', 'amd', '--wait-for-capacity', '--', 'true']);
    const explain = await b.cli(['explain', id, '--json']);
    const e = JSON.parse(explain.stdout) as { state: string; explanation: { peers: number; feasible: number; removed: { count: number; reason: string }[] } };
    expect(e.state).toBe('queued');
    expect(e.explanation.peers).toBe(3);
    expect(e.explanation.feasible).toBe(0);
    expect(e.explanation.removed.reduce((n, r) => n + r.count, 0)).toBe(3);
    const text = await b.cli(['explain', id]);
    expect(text.stdout).toMatch(/3 peers/);
    await c.cli(['cancel', id]);
  }, 60_000);

  test('a frozen host: its job ends by lease before it runs elsewhere, never twice at once', async () => {
    const trace = join(fabric.root, 'trace.log');
    const id = await runJob(a, ['--', 'sh', '-c', `while true; do echo "$FABRIC_ATTEMPT $(date +%s%N)" >> ${trace}; sleep 0.05; done`]);
    const first = await untilState(a, id, ['running']);
    const peers = await Promise.all([a, b, c].map(async (d) => [d, (await d.status()).peerId] as const));
    const victim = peers.find(([, p]) => p === first.attempts[0]!.peerIds[0])![0];
    const observer = peers.find(([d]) => d !== victim)![0];
    victim.child!.kill('SIGSTOP');
    try {
      const moved = await waitFor('the job to run on another peer', async () => {
        const j = await jobOf(observer, id);
        return j.attempt >= 2 && j.state === 'running' ? j : undefined;
      }, 60_000, 200);
      expect(moved.attempts.at(-1)!.peerIds[0]).not.toBe(first.attempts[0]!.peerIds[0]);
      await new Promise((r) => setTimeout(r, 1_000));
    } finally {
      victim.child!.kill('SIGCONT');
    }
    // Back from its freeze, the old host must not run it again.
    await new Promise((r) => setTimeout(r, 3_000));
    await observer.cli(['cancel', id]);
    const lines = readFileSync(trace, 'utf8').trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number]);
    const lastOfFirst = Math.max(...lines.filter(([at]) => at === 1).map(([, t]) => t));
    const firstOfLater = Math.min(...lines.filter(([at]) => at > 1).map(([, t]) => t));
    expect(lines.some(([at]) => at === 1)).toBe(true);
    expect(Number.isFinite(firstOfLater)).toBe(true);
    const final = await jobOf(observer, id);
    expect(firstOfLater, `attempt 1 wrote until ${lastOfFirst}, a later one from ${firstOfLater}; attempts ${JSON.stringify(final.attempts)}`).toBeGreaterThan(lastOfFirst);
    // and attempt 1 never wrote again after the thaw
    expect(lines.filter(([at]) => at === 1).every(([, t]) => t <= lastOfFirst)).toBe(true);
  }, 120_000);

  test('host killed: the job resumes on another peer from its checkpoint, healing chunks corrupted on the replicas', async () => {
    const job = join(import.meta.dirname, '..', '..', 'bench', 'recovery-job.ts');
    const id = await runJob(a, ['--', process.execPath, job, '--state-mib', '6', '--step-ms', '50', '--checkpoint-every', '10']);
    let seen = '';
    const withCheckpoint = await waitFor('a checkpoint held by three peers', async () => {
      const j = await jobOf(a, id);
      seen = `${j.state}, attempt ${j.attempt}, checkpoints ${JSON.stringify(j.checkpoints.map((c) => [c.step, c.holders.length]))}, reason ${j.reason}`;
      return j.state === 'running' && j.checkpoints.length > 0 && j.checkpoints.at(-1)!.holders.length === 3 ? j : undefined;
    }, 90_000, 200).catch(async (err: unknown) => {
      const logs = await client(a).jobLogs(id, { stream: 'stderr' }).catch(() => undefined);
      const daemonsSay = [a, b, c].map((d) => d.output.split('\n').filter((l) => /"level":(40|50)/.test(l)).slice(-6).join('\n')).join('\n---\n');
      throw new Error(`${String(err)}; job ${seen}; stderr ${logs === undefined ? '?' : Buffer.from(logs.data, 'base64').toString('utf8').slice(-600)}\ndaemons:\n${daemonsSay}`);
    });
    const ckpt = withCheckpoint.checkpoints.at(-1)!;
    const daemons = await Promise.all([a, b, c].map(async (d) => [d, (await d.status()).peerId] as const));
    const host = daemons.find(([, p]) => p === withCheckpoint.attempts.at(-1)!.peerIds[0])![0];
    const replicas = daemons.filter(([d]) => d !== host).map(([d]) => d);
    // Corrupt a different chunk of the checkpoint on each replica's disk: whichever restores it
    // finds one bad chunk of its own and must fetch it from the other.
    const manifest = JSON.parse(readFileSync(join(replicas[0]!.dataDir, 'checkpoints', 'manifests', `${ckpt.manifestId}.json`), 'utf8')) as { entries?: { chunks?: [string, number][] }[]; files?: { chunks?: [string, number][] }[] };
    const chunkIds = [...new Set(JSON.stringify(manifest).match(/[0-9a-f]{64}/g) ?? [])].filter((h) => h !== ckpt.manifestId);
    expect(chunkIds.length).toBeGreaterThanOrEqual(2);
    replicas.forEach((r, i) => {
      const path = join(r.dataDir, 'checkpoints', 'chunks', chunkIds[i]!.slice(0, 2), chunkIds[i]!);
      const bytes = readFileSync(path);
      bytes[100] = bytes[100]! ^ 0xff;
      writeFileSync(path, bytes);
    });
    await host.kill9();
    const other = replicas[0]!;
    const resumed = await waitFor('the job to run again from its checkpoint', async () => {
      const j = await jobOf(other, id);
      if (j.attempt < 2 || j.state !== 'running') return undefined;
      const logs = await client(other).jobLogs(id, { from: 0 });
      const text = Buffer.from(logs.data, 'base64').toString('utf8');
      return /^started \d+ attempt 2 resumed (\d+)/m.test(text) ? { j, text } : undefined;
    }, 60_000, 200);
    // recovery-job.ts checks the restored state's SHA-256 before it prints "started ... resumed"
    const step = Number(/^started \d+ attempt 2 resumed (\d+)/m.exec(resumed.text)![1]);
    expect(step).toBeGreaterThanOrEqual(ckpt.step);
    const quarantined = replicas.map((r) => readdirSync(join(r.dataDir, 'checkpoints', 'quarantine')).length);
    expect(quarantined.reduce((x, y) => x + y, 0), `quarantined chunks per replica ${JSON.stringify(quarantined)}`).toBeGreaterThanOrEqual(1);
    await other.cli(['cancel', id]);
    await host.start(['agent']);
  }, 180_000);
});
