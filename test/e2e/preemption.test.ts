/**
 * Preemption end to end on real daemons: checkpoint, then evict.
 *
 * A preemptible low-priority training job (examples/train) runs on the only peer with eight
 * GPUs; a high-priority job that needs those eight GPUs is submitted. The leader releases the
 * victim; its host sends it SIGTERM; the victim finishes its step, writes and commits a
 * checkpoint of that very step and exits; only then does the preemptor start, on the same GPUs.
 * The victim waits (`restarting`, with the preemption as its reason), is placed again once the
 * preemptor is done, and resumes from the step it had reached at SIGTERM: no step lost.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Fabric, runJob, waitFor, type DaemonProcess } from './harness.ts';
import { FabricClient } from '../../src/client/client.ts';

const TRAIN = join(import.meta.dirname, '..', '..', 'examples', 'train', 'train.ts');

describe('preemption: checkpoint, then evict', () => {
  const fabric = new Fabric();
  let big: DaemonProcess;
  let small1: DaemonProcess;
  let small2: DaemonProcess;
  const client = (d: DaemonProcess) => FabricClient.fromDataDir(d.dataDir);
  const jobOf = (d: DaemonProcess, id: string) => client(d).job(id);
  const logOf = (d: DaemonProcess, id: string, stream = 'stdout'): string => {
    const path = join(d.dataDir, 'jobs', id, 'logs', `${stream}.log`);
    return existsSync(path) ? readFileSync(path, 'utf8') : '';
  };

  beforeAll(async () => {
    [big, small1, small2] = await fabric.startGroup([
      { name: 'big', zone: 'z1', gpus: 'h100-sxm-8' },
      { name: 'small1', zone: 'z2', gpus: 'l40s-1' },
      { name: 'small2', zone: 'z2', gpus: 'l40s-1' },
    ]) as [DaemonProcess, DaemonProcess, DaemonProcess];
  }, 90_000);

  afterAll(async () => {
    await fabric.cleanup();
  });

  test('the victim checkpoints on SIGTERM, the preemptor runs on its GPUs after it exited, the victim resumes from that step', async () => {
    const trace = join(fabric.root, 'trace.log');
    // The victim: its first attempt slow enough (30 s in all) to be caught mid-run, a resumed one
    // at full speed (the delay does not change what it computes); periodic checkpoints far apart:
    // the one that matters is taken at SIGTERM. `exec` keeps the shell's pid, the process group's id.
    const victim = await runJob(big, [
      '--name', 'victim', '--gpus', '8', '--preemptible', '--priority', '0', '--',
      'sh', '-c', `echo "$$" > pid; echo "victim $FABRIC_ATTEMPT $CUDA_VISIBLE_DEVICES" >> ${trace}; delay=15; [ "$FABRIC_ATTEMPT" = 1 ] || delay=0; exec "${process.execPath}" "${TRAIN}" --steps 2000 --step-delay-ms $delay --checkpoint-every 1000 --log-every 50`,
    ]);
    await waitFor('the victim to train', () => (/^step 50\//m.test(logOf(big, victim)) ? true : undefined), 60_000, 100);
    const pid = Number(readFileSync(join(big.dataDir, 'jobs', victim, 'work', 'pid'), 'utf8'));
    const bigPeer = (await big.status()).peerId;
    expect((await jobOf(big, victim)).attempts.at(-1)!.peerIds).toEqual([bigPeer]);

    // The preemptor notes, as it starts, whether any process of the victim's group is alive; it
    // ends when the test lets it (its checks of the waiting victim done), at most after a minute.
    const mayEnd = join(fabric.root, 'preemptor-may-end');
    const preemptor = await runJob(small1, [
      '--name', 'preemptor', '--gpus', '8', '--priority', '10', '--',
      'sh', '-c', `if kill -0 -${pid} 2>/dev/null; then alive=yes; else alive=no; fi; echo "preemptor $FABRIC_ATTEMPT $CUDA_VISIBLE_DEVICES victim-alive=$alive" >> ${trace}; i=0; while [ ! -e ${mayEnd} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`,
    ]);
    const traced = () => (existsSync(trace) ? readFileSync(trace, 'utf8').trim().split('\n') : []);
    const started = await waitFor('the preemptor to start', () => traced().find((l) => l.startsWith('preemptor ')), 60_000, 100);
    // Never two jobs on one GPU: when the preemptor started, no process of the victim was left.
    expect(started).toMatch(/victim-alive=no$/);

    // It checkpointed the step it had reached at SIGTERM, and that checkpoint was committed (the
    // commit returned before the victim exited; this replica may apply it a moment later).
    const log1 = logOf(big, victim);
    const stoppedAt = Number(/^stopping at step (\d+): SIGTERM$/m.exec(log1)?.[1]);
    expect(stoppedAt, log1).toBeGreaterThanOrEqual(50);
    expect(log1).toContain(`checkpoint step ${stoppedAt} saved\n`);
    expect(log1, `its stderr: ${logOf(big, victim, 'stderr')}`).toContain(`checkpoint step ${stoppedAt} committed\n`);
    let seen = '';
    const waiting = await waitFor('the checkpoint taken at SIGTERM in the replica', async () => {
      const j = await jobOf(small2, victim);
      seen = `${j.state}, attempts ${JSON.stringify(j.attempts)}, checkpoints ${JSON.stringify(j.checkpoints.map((c) => [c.step, c.epoch]))}`;
      return j.checkpoints.some((c) => c.step === stoppedAt && c.epoch === 1) ? j : undefined;
    }, 10_000, 100).catch((err: unknown) => {
      throw new Error(`${String(err)}; the victim is ${seen}`);
    });

    // While the preemptor runs, the victim waits without devices, and says who took them.
    expect(waiting.state, `the victim should wait while the preemptor runs; attempts ${JSON.stringify(waiting.attempts)}`).toBe('restarting');
    expect(waiting.allocationIds).toEqual([]);
    expect(waiting.reason).toMatch(new RegExp(`preempted by job ${preemptor} \\(priority 10 over 0\\)`));
    expect(waiting.attempts).toHaveLength(1);
    expect(waiting.attempts[0]).toMatchObject({ attempt: 1, peerIds: [bigPeer], outcome: 'restarting' });
    expect(waiting.attempts[0]!.reason).toContain(`preempted by job ${preemptor}`);
    const show = await small2.cli(['job', 'show', victim]);
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout).toMatch(new RegExp(`state\\s+restarting — preempted by job ${preemptor}`));
    writeFileSync(mayEnd, '');

    const done = await waitFor('the preemptor to succeed', async () => {
      const j = await jobOf(big, preemptor);
      return j.state === 'succeeded' ? j : undefined;
    }, 60_000, 100);
    expect(done.attempts).toHaveLength(1);
    expect(done.attempts[0]!.peerIds).toEqual([bigPeer]);

    // Then the victim is placed again, resumes from the step it stopped at, and finishes.
    const finished = await waitFor('the victim to finish', async () => {
      const j = await jobOf(small2, victim);
      return j.state === 'succeeded' ? j : undefined;
    }, 60_000, 100);
    const log = logOf(big, victim);
    const resumedFrom = Number(/^resumed from step (\d+) /m.exec(log)?.[1]);
    expect(resumedFrom, log).toBe(stoppedAt); // no step lost
    expect(log).toMatch(/done: step 2000 loss [\d.]+ accuracy [\d.]+\n$/);
    expect(finished.attempts.map((a) => [a.attempt, a.peerIds, a.outcome])).toEqual([
      [1, [bigPeer], 'restarting'],
      [2, [bigPeer], 'succeeded'],
    ]);
    expect(finished.attempts[0]!.reason).toContain(`preempted by job ${preemptor}`);

    // One after the other on the same eight GPUs: the preemptor started after the victim's last
    // process had ended, the victim again only after the preemptor was done.
    const lines = traced();
    expect(lines.map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['victim 1', 'preemptor 1', 'victim 2']);
    const gpus = lines.map((l) => l.split(' ')[2]!.split(',').sort().join(','));
    expect(gpus[0]!.split(',')).toHaveLength(8);
    expect(new Set(gpus).size).toBe(1);
  }, 150_000);
});
