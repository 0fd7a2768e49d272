/**
 * The `fabric` command. Daemon commands (init, join, agent, token) live here, in the
 * composition root; commands that talk to a running daemon come from src/client.
 */
import { Command, Option } from 'commander';
import { z } from 'zod';
import { multiaddr } from '@multiformats/multiaddr';
import { FabricError } from '../core/index.ts';
import { SIMULATED_PROFILES } from '../devices/fake/profiles.ts';
import { registerClientCommands } from '../client/commands.ts';
import { registerJobCommands } from '../client/job-commands.ts';
import { action, addDataDirOption, dataDirOf, parseFlags } from '../client/cli-kit.ts';
import { FabricClient } from '../client/client.ts';
import { LOG_LEVELS, type LogLevel } from '../core/index.ts';

const DEFAULT_LISTEN = '/ip4/0.0.0.0/tcp/7700';
const DEFAULT_API_PORT = 7701;

const Multiaddr = z.string().refine((s) => {
  try {
    multiaddr(s);
    return s.startsWith('/');
  } catch {
    return false;
  }
}, 'not a valid multiaddr (e.g. /ip4/0.0.0.0/tcp/7700)');
const LabelName = z.string().min(1).max(63).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'use letters, digits, . _ -');
const LogLevelSchema = z.enum(LOG_LEVELS);

const DaemonFlagsSchema = z.object({
  dataDir: z.string().optional(),
  listen: z.array(Multiaddr).optional(),
  apiPort: z.coerce.number().int().min(0).max(65535).optional(),
  bulkPort: z.union([z.literal('off'), z.coerce.number().int().min(0).max(65535)]).optional(),
  zone: LabelName.optional(),
  region: LabelName.optional(),
  cloud: LabelName.optional(),
  label: z.array(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=.{0,255}$/, 'labels are key=value')).optional(),
  pricePerGpuHour: z.coerce.number().min(0).max(1_000_000).optional(),
  spot: z.boolean().optional(),
  simulateGpus: z.enum(SIMULATED_PROFILES.map((p) => p.name) as [string, ...string[]]).optional(),
  nvidiaSmi: z.string().min(1).optional(),
  rocmSmi: z.string().min(1).optional(),
  deadVoterGrace: z.coerce.number().min(0).max(86_400).optional(),
  logLevel: LogLevelSchema.default('info'),
});
export type DaemonFlags = z.infer<typeof DaemonFlagsSchema>;

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

function addDaemonOptions(cmd: Command): Command {
  const profiles = SIMULATED_PROFILES.map((p) => `  ${p.name.padEnd(12)} ${p.description}`).join('\n');
  return addDataDirOption(cmd)
    .option('--listen <multiaddr>', `libp2p listen address, repeatable (default ${DEFAULT_LISTEN})`, collect)
    .option('--api-port <n>', `local HTTP API port on 127.0.0.1, 0 for any free one (default ${DEFAULT_API_PORT})`)
    .option('--bulk-port <n|off>', 'TCP port for checkpoint data between peers, on the --listen IP; 0 for any free one (default), off to send it over libp2p only')
    .option('--zone <zone>', 'failure zone of this host (e.g. eu-1a)')
    .option('--region <region>', 'region of this host')
    .option('--cloud <cloud>', 'cloud or rack this host lives in')
    .option('--label <k=v>', 'a label for placement constraints, repeatable', collect)
    .option('--price-per-gpu-hour <x>', 'what one GPU hour on this host costs')
    .option('--spot', 'this host is a spot/preemptible instance')
    .option('--simulate-gpus <profile>', 'discover simulated GPUs through a fake nvidia-smi/rocm-smi replaying real output')
    .option('--nvidia-smi <path>', 'run this executable in place of nvidia-smi (also $FABRIC_NVIDIA_SMI)')
    .option('--rocm-smi <path>', 'run this executable in place of rocm-smi')
    .option('--dead-voter-grace <seconds>', 'how long a Raft voter may be dead before the leader replaces it (default 30)')
    .addOption(new Option('--log-level <level>', 'log level of the JSON logs on stderr').choices(LogLevelSchema.options).default('info'))
    .addHelpText('after', `\nSimulated GPU profiles (--simulate-gpus):\n${profiles}`);
}

async function runDaemonForeground(dataDir: string, logLevel: LogLevel, banner: (d: { peerId: string; fabricId: string; apiUrl: string; token: string }) => string): Promise<void> {
  const { Daemon } = await import('./daemon.ts');
  const { createLogger } = await import('./system.ts');
  const log = createLogger(logLevel);
  const daemon = await Daemon.start({ dataDir, log });
  const status = daemon.status();
  process.stdout.write(banner({ peerId: daemon.peerId, fabricId: daemon.config.fabricId, apiUrl: status.apiUrl, token: daemon.joinToken() }));
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) process.exit(130); // a second ^C does not wait
      stopping = true;
      process.stdout.write(`fabric: ${sig} received, stopping\n`);
      void daemon.stop().finally(resolve);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', () => void daemon.rediscoverNow()); // re-read GPUs now, e.g. after a MIG change
  });
}

export function buildProgram(): Command {
  const program = new Command('fabric')
    .description('a peer-to-peer GPU compute fabric: pool GPU machines from any cloud or rack')
    .version('0.1.0')
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(`fabric: ${str.replace(/^error: /, '')}`) });

  addDaemonOptions(program.command('init').description('create a new fabric on this host and run its daemon in the foreground')).action(
    action(async (raw: Record<string, unknown>) => {
      const flags = parseFlags(DaemonFlagsSchema, raw);
      const { initDataDir } = await import('./setup.ts');
      const dataDir = dataDirOf(flags);
      await initDataDir({ dataDir, flags, defaults: { listen: DEFAULT_LISTEN, apiPort: DEFAULT_API_PORT } });
      await runDaemonForeground(dataDir, flags.logLevel, (d) =>
        `fabric: created fabric ${d.fabricId} in ${dataDir}\npeer ${d.peerId}\napi ${d.apiUrl}\njoin token (a secret; \`fabric token\` prints it again):\n${d.token}\n`,
      );
    }),
  );

  addDaemonOptions(program.command('join').description('join an existing fabric with a token and run the daemon in the foreground').argument('<token>', 'join token from `fabric token` on any member')).action(
    action(async (token: string, raw: Record<string, unknown>) => {
      const flags = parseFlags(DaemonFlagsSchema, raw);
      const { joinDataDir } = await import('./setup.ts');
      const dataDir = dataDirOf(flags);
      await joinDataDir({ dataDir, flags, token, defaults: { listen: DEFAULT_LISTEN, apiPort: DEFAULT_API_PORT } });
      await runDaemonForeground(dataDir, flags.logLevel, (d) => `fabric: joined fabric ${d.fabricId} from ${dataDir}\npeer ${d.peerId}\napi ${d.apiUrl}\n`);
    }),
  );

  addDataDirOption(program.command('agent').description('restart the daemon of an existing data dir, with the same identity'))
    .addOption(new Option('--log-level <level>', 'log level of the JSON logs on stderr').choices(LogLevelSchema.options).default('info'))
    .action(
      action(async (raw: Record<string, unknown>) => {
        const flags = parseFlags(z.object({ dataDir: z.string().optional(), logLevel: LogLevelSchema }), raw);
        const dataDir = dataDirOf(flags);
        await runDaemonForeground(dataDir, flags.logLevel, (d) => `fabric: daemon of fabric ${d.fabricId} running from ${dataDir}\npeer ${d.peerId}\napi ${d.apiUrl}\n`);
      }),
    );

  addDataDirOption(program.command('token').description('print the join token of this fabric (a secret: it carries the swarm key)')).action(
    action(async (raw: { dataDir?: string }) => {
      const dataDir = dataDirOf(raw);
      let token: string;
      try {
        token = await FabricClient.fromDataDir(dataDir).token();
      } catch (err) {
        if (!(err instanceof FabricError) || err.code !== 'DAEMON_UNREACHABLE') throw err;
        const { offlineJoinToken } = await import('./setup.ts');
        token = offlineJoinToken(dataDir);
      }
      process.stdout.write(`${token}\n`);
    }),
  );

  program
    .command('demo')
    .description('run a local fabric of daemons on simulated GPUs, a training job that checkpoints, kill its host, watch the job resume on another peer')
    .option('--peers <n>', 'how many daemons to start (2-6)', '4')
    .option('--keep', 'keep the daemons\' data dirs afterwards')
    .action(
      action(async (raw: Record<string, unknown>) => {
        const flags = parseFlags(z.object({ peers: z.coerce.number().int().min(2).max(6), keep: z.boolean().default(false) }), raw);
        const { runDemo } = await import('./demo.ts');
        await runDemo({ ...flags, out: (line) => process.stdout.write(`${line}\n`) });
      }),
    );

  registerClientCommands(program);
  registerJobCommands(program);
  return program;
}
