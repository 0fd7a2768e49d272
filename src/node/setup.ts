/** Creating a data dir: `fabric init` makes a new fabric, `fabric join` enters one with a token. */
import { randomBytes } from 'node:crypto';
import { FabricError } from '../core/index.ts';
import { DEFAULT_DEAD_VOTER_GRACE_MS, DaemonConfigSchema, DaemonStateSchema, type DaemonConfig } from './config.ts';
import { ensureDir, fileExists, readJsonFile, writeJsonFile } from './files.ts';
import { createIdentityKey, loadSwarmKey, newSwarmKey, writeSwarmKey } from './identity.ts';
import { dataDirPaths } from './paths.ts';
import { decodeJoinToken, encodeJoinToken } from './token.ts';
import type { DaemonFlags } from './cli.ts';

interface SetupInput {
  dataDir: string;
  flags: DaemonFlags;
  defaults: { listen: string; apiPort: number };
}

function refuseExisting(dataDir: string): void {
  const paths = dataDirPaths(dataDir);
  if (fileExists(paths.config)) {
    const existing = readJsonFile(paths.config, DaemonConfigSchema);
    throw new FabricError(
      'DATA_DIR_EXISTS',
      `${dataDir} already holds fabric ${existing.fabricId}; restart its daemon with \`fabric agent --data-dir ${dataDir}\`, or pick another --data-dir`,
    );
  }
}

/** `founder`: the `fabric init` peer, which starts the Raft group as its only voter. */
function configFrom(input: SetupInput, fabricId: string, bootstrap: string[], founder: boolean): DaemonConfig {
  const { flags, defaults } = input;
  const extra: Record<string, string> = {};
  for (const kv of flags.label ?? []) {
    const eq = kv.indexOf('=');
    extra[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return DaemonConfigSchema.parse({
    v: 1,
    fabricId,
    listen: flags.listen ?? [defaults.listen],
    apiPort: flags.apiPort ?? defaults.apiPort,
    ...(flags.bulkPort !== undefined ? { bulkPort: flags.bulkPort } : {}),
    labels: {
      ...(flags.zone !== undefined ? { zone: flags.zone } : {}),
      ...(flags.region !== undefined ? { region: flags.region } : {}),
      ...(flags.cloud !== undefined ? { cloud: flags.cloud } : {}),
      ...(flags.pricePerGpuHour !== undefined ? { pricePerGpuHour: flags.pricePerGpuHour } : {}),
      spot: flags.spot ?? false,
      extra,
    },
    bootstrap,
    ...(flags.simulateGpus !== undefined ? { simulateGpus: flags.simulateGpus } : {}),
    ...(flags.nvidiaSmi !== undefined ? { nvidiaSmi: flags.nvidiaSmi } : {}),
    ...(flags.rocmSmi !== undefined ? { rocmSmi: flags.rocmSmi } : {}),
    createdAtMs: Date.now(),
    raft: { bootstrap: founder, deadVoterGraceMs: flags.deadVoterGrace !== undefined ? flags.deadVoterGrace * 1000 : DEFAULT_DEAD_VOTER_GRACE_MS },
  });
}

async function writeDataDir(input: SetupInput, fabricId: string, swarmKey: Uint8Array, bootstrap: string[], founder: boolean): Promise<void> {
  const paths = dataDirPaths(input.dataDir);
  ensureDir(input.dataDir);
  const config = configFrom(input, fabricId, bootstrap, founder);
  await createIdentityKey(paths.identityKey);
  writeSwarmKey(paths.swarmKey, swarmKey);
  writeJsonFile(paths.state, DaemonStateSchema.parse({ incarnation: 0, knownPeers: {}, selfAddrs: [] }));
  // config.json last: its presence is what marks a data dir as complete.
  writeJsonFile(paths.config, config);
}

export async function initDataDir(input: SetupInput): Promise<void> {
  refuseExisting(input.dataDir);
  await writeDataDir(input, `fab-${randomBytes(8).toString('hex')}`, newSwarmKey(), [], true);
}

export async function joinDataDir(input: SetupInput & { token: string }): Promise<void> {
  const token = decodeJoinToken(input.token); // a bad token changes nothing on disk
  refuseExisting(input.dataDir);
  await writeDataDir(input, token.fabricId, token.swarmKey, token.bootstrap, false);
}

/** The join token of a stopped daemon, from the addresses it had when it last ran. */
export function offlineJoinToken(dataDir: string): string {
  const paths = dataDirPaths(dataDir);
  if (!fileExists(paths.config)) throw new FabricError('DATA_DIR_MISSING', `${dataDir} holds no fabric: run \`fabric init\` first`);
  const config = readJsonFile(paths.config, DaemonConfigSchema);
  const state = readJsonFile(paths.state, DaemonStateSchema);
  const bootstrap = state.selfAddrs.length > 0 ? state.selfAddrs : config.bootstrap;
  if (bootstrap.length === 0) throw new FabricError('DAEMON_UNREACHABLE', `the daemon of ${dataDir} has never run, so its addresses are unknown: start it with \`fabric agent\``);
  return encodeJoinToken({ fabricId: config.fabricId, swarmKey: loadSwarmKey(paths.swarmKey), bootstrap });
}
