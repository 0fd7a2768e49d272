/**
 * The environment contract of a job process: the user's environment, minus everything fabric
 * owns, plus the allocation's devices, the gang rendezvous variables, and FABRIC_*.
 *
 *   CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES,          the granted devices (see devices.ts)
 *   HIP_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, …
 *   MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,            gangs only: torch.distributed's env://
 *   LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, GROUP_RANK    rendezvous, as torchrun sets them
 *   PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR,            gangs only: so that a job that runs
 *   PET_MASTER_PORT                                        `torchrun` itself needs no flags
 *   FABRIC_JOB_ID, FABRIC_ATTEMPT                          which job and which attempt of it
 *   FABRIC_CHECKPOINT_DIR                                  where the job writes its checkpoints
 *   FABRIC_RESTORE_DIR                                     only when it resumes: what to load
 *   FABRIC_CHECKPOINT_COMMIT                               the command that commits a checkpoint
 *                                                          (`… --step N` is appended by the job)
 *
 * Names fabric owns are removed from the user's environment first, so a stale `RANK` or
 * `FABRIC_RESTORE_DIR` from the shell that submitted the job never reaches the process.
 */
import { FabricError } from '../core/index.ts';
import { VISIBLE_DEVICE_VARS, visibleDeviceEnv, type AssignedDevice } from './devices.ts';

/** Where a gang's processes meet, and this process's place in it (one process per allocation by default). */
export interface GangRendezvous {
  masterAddr: string;
  masterPort: number;
  /** This allocation's position among the gang's allocations, 0-based. */
  nodeRank: number;
  /** Allocations in the gang. */
  nodes: number;
  /** Processes per allocation (default 1). */
  procsPerNode?: number;
  /** This process's position within its allocation (default 0). */
  localRank?: number;
}

export interface JobEnvInput {
  /** The user's environment (the job spec's, as the daemon resolved it). Undefined values are dropped. */
  base: Readonly<Record<string, string | undefined>>;
  jobId: string;
  attempt: number;
  devices: readonly AssignedDevice[];
  gang?: GangRendezvous | undefined;
  checkpointDir: string;
  /** Set only when this attempt resumes from a restored checkpoint. */
  restoreDir?: string | undefined;
  /** Shell command that commits a checkpoint; the job appends `--step N`. */
  checkpointCommit?: string | undefined;
  /** More FABRIC_* variables the daemon provides (how to reach it, the epoch…): each name must start with FABRIC_. */
  extra?: Readonly<Record<string, string>> | undefined;
}

const RENDEZVOUS_VARS = [
  'MASTER_ADDR',
  'MASTER_PORT',
  'RANK',
  'WORLD_SIZE',
  'LOCAL_RANK',
  'LOCAL_WORLD_SIZE',
  'NODE_RANK',
  'GROUP_RANK',
  'PET_NNODES',
  'PET_NODE_RANK',
  'PET_MASTER_ADDR',
  'PET_MASTER_PORT',
] as const;

const RESERVED = new Set<string>([...VISIBLE_DEVICE_VARS, ...RENDEZVOUS_VARS]);

/** True for a variable that fabric sets and a user's value never overrides. */
export function isReservedVar(name: string): boolean {
  return RESERVED.has(name) || name.startsWith('FABRIC_');
}

function checkInt(what: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new FabricError('BAD_INPUT', `${what} must be an integer in ${min}..${max}, not ${value}`);
  }
}

/** torch.distributed's rendezvous variables for one process of a gang. */
export function rendezvousEnv(gang: GangRendezvous): Record<string, string> {
  const perNode = gang.procsPerNode ?? 1;
  const localRank = gang.localRank ?? 0;
  if (gang.masterAddr.trim() === '' || /[\s,]/.test(gang.masterAddr)) {
    throw new FabricError('BAD_INPUT', `gang master address ${JSON.stringify(gang.masterAddr)} is not a host name or address`);
  }
  checkInt('gang master port', gang.masterPort, 1, 65_535);
  checkInt('gang size', gang.nodes, 1, 1_000_000);
  checkInt('gang node rank', gang.nodeRank, 0, gang.nodes - 1);
  checkInt('processes per node', perNode, 1, 1024);
  checkInt('local rank', localRank, 0, perNode - 1);
  return {
    MASTER_ADDR: gang.masterAddr,
    MASTER_PORT: String(gang.masterPort),
    WORLD_SIZE: String(gang.nodes * perNode),
    RANK: String(gang.nodeRank * perNode + localRank),
    LOCAL_RANK: String(localRank),
    LOCAL_WORLD_SIZE: String(perNode),
    NODE_RANK: String(gang.nodeRank),
    GROUP_RANK: String(gang.nodeRank),
    PET_NNODES: String(gang.nodes),
    PET_NODE_RANK: String(gang.nodeRank),
    PET_MASTER_ADDR: gang.masterAddr,
    PET_MASTER_PORT: String(gang.masterPort),
  };
}

/** The complete environment of one attempt of a job. Pure: same input, same output. */
export function buildJobEnv(input: JobEnvInput): Record<string, string> {
  if (input.jobId === '') throw new FabricError('BAD_INPUT', 'job id is empty');
  checkInt('attempt', input.attempt, 1, Number.MAX_SAFE_INTEGER);
  if (input.checkpointDir === '') throw new FabricError('BAD_INPUT', 'checkpoint dir is empty');
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(input.base)) {
    if (value === undefined || isReservedVar(name) || name === '' || name.includes('=') || name.includes('\0')) continue;
    env[name] = value;
  }
  for (const [name, value] of Object.entries(input.extra ?? {})) {
    if (!name.startsWith('FABRIC_')) throw new FabricError('BAD_INPUT', `extra job variable ${name} must start with FABRIC_`);
    env[name] = value;
  }
  Object.assign(env, visibleDeviceEnv(input.devices));
  if (input.gang) Object.assign(env, rendezvousEnv(input.gang));
  env.FABRIC_JOB_ID = input.jobId;
  env.FABRIC_ATTEMPT = String(input.attempt);
  env.FABRIC_CHECKPOINT_DIR = input.checkpointDir;
  if (input.restoreDir !== undefined && input.restoreDir !== '') env.FABRIC_RESTORE_DIR = input.restoreDir;
  if (input.checkpointCommit !== undefined && input.checkpointCommit !== '') env.FABRIC_CHECKPOINT_COMMIT = input.checkpointCommit;
  for (const [name, value] of Object.entries(env)) {
    if (value.includes('\0')) throw new FabricError('BAD_INPUT', `job variable ${name} contains a NUL byte`);
  }
  return env;
}
