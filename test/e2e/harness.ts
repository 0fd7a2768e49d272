/**
 * Real daemons as separate processes on loopback, each with its own data dir, driven through
 * the real CLI. Every process a test starts is killed when the test file ends.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NodeView, StatusResponse } from '../../src/api/schemas.ts';
import { FabricClient } from '../../src/client/client.ts';

export const CLI = join(import.meta.dirname, '..', '..', 'src', 'node', 'main.ts');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 20_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000, everyMs = 150): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class DaemonProcess {
  readonly dataDir: string;
  child: ChildProcess | undefined;
  output = '';

  constructor(dataDir: string) {
    this.dataDir = dataDir;
  }

  /** Starts `fabric <args> --data-dir DIR` and waits until its API answers. */
  async start(args: string[]): Promise<StatusResponse> {
    const apiFile = join(this.dataDir, 'api.json');
    rmSync(apiFile, { force: true });
    const child = spawn(process.execPath, [CLI, ...args, '--data-dir', this.dataDir, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout?.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
    return waitFor(`daemon in ${this.dataDir} to answer (output: ${this.output})`, async () => {
      if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}: ${this.output}`);
      if (!existsSync(apiFile)) return undefined;
      return this.status();
    }, 60_000); // many daemons start at once on a 2-core CI machine
  }

  async cli(args: string[]): Promise<CliResult> {
    return runCli([...args, '--data-dir', this.dataDir]);
  }

  async status(): Promise<StatusResponse> {
    const r = await this.cli(['status', '--json']);
    if (r.code !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout) as StatusResponse;
  }

  async nodes(): Promise<NodeView[]> {
    const r = await this.cli(['nodes', '--json']);
    if (r.code !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout) as NodeView[];
  }

  apiFile(): { url: string; token: string; pid: number } {
    return JSON.parse(readFileSync(join(this.dataDir, 'api.json'), 'utf8')) as { url: string; token: string; pid: number };
  }

  kill9(): Promise<void> {
    return this.#kill('SIGKILL');
  }

  stop(): Promise<void> {
    return this.#kill('SIGTERM');
  }

  #kill(signal: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  }
}

export class Fabric {
  readonly root = mkdtempSync(join(tmpdir(), 'fabric-e2e-'));
  readonly daemons: DaemonProcess[] = [];

  daemon(name: string): DaemonProcess {
    const d = new DaemonProcess(join(this.root, name));
    this.daemons.push(d);
    return d;
  }

  /**
   * A fabric of loopback daemons on simulated GPUs: the first inits it, the others join; resolves
   * once every one holds a replica of the Raft log (jobs go only to peers that do).
   */
  async startGroup(members: readonly { name: string; zone: string; gpus: string }[]): Promise<DaemonProcess[]> {
    const flags = (m: (typeof members)[number]) => [...LOOPBACK, '--zone', m.zone, '--simulate-gpus', m.gpus];
    const [first, ...rest] = members.map((m) => ({ m, d: this.daemon(m.name) }));
    await first!.d.start(['init', ...flags(first!.m)]);
    const token = (await first!.d.cli(['token'])).stdout.trim();
    await Promise.all(rest.map(({ m, d }) => d.start(['join', token, ...flags(m)])));
    await waitFor(`${members.length} members`, async () => {
      const r = await FabricClient.fromDataDir(first!.d.dataDir).raftPeers();
      return r.peers.length === members.length && r.peers.every((p) => p.match > 0) ? r : undefined;
    }, 60_000, 200);
    return [first!.d, ...rest.map(({ d }) => d)];
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.daemons.map((d) => d.kill9()));
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Flags for a loopback daemon with ephemeral ports. */
export const LOOPBACK = ['--listen', '/ip4/127.0.0.1/tcp/0', '--api-port', '0'];

/** `fabric run ARGS` from daemon `d`'s data dir; the job id it printed. */
export async function runJob(d: DaemonProcess, args: string[]): Promise<string> {
  // --data-dir before the command: everything after `--` is the job's.
  const r = await runCli(['run', '--data-dir', d.dataDir, ...args]);
  if (r.code !== 0) throw new Error(`fabric run failed (${r.code}): ${r.stderr}`);
  return r.stdout.trim().split('\n')[0]!;
}
