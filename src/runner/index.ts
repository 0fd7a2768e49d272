/**
 * The runner: runs allocations as processes bound to their devices. Pure: processes through the
 * ProcessLauncher port (src/node/job-launcher.ts is the real one), time through a Clock.
 */
export { assignDevices, visibleDeviceEnv, VISIBLE_DEVICE_VARS, type AssignedDevice, type GrantLike } from './devices.ts';
export { buildJobEnv, isReservedVar, rendezvousEnv, type GangRendezvous, type JobEnvInput } from './env.ts';
export {
  backoffDelay,
  decideRetry,
  DEFAULT_RETRY_POLICY,
  NO_RETRY,
  RetryPolicySchema,
  type AttemptFailure,
  type RetryDecision,
  type RetryPolicy,
} from './retry.ts';
export {
  describeExit,
  type LaunchCallbacks,
  type LaunchRequest,
  type ProcessExit,
  type ProcessHandle,
  type ProcessLauncher,
  type StopSignal,
} from './launcher.ts';
export {
  DEFAULT_LOG_MAX_BYTES,
  DEFAULT_STOP_GRACE_MS,
  JobRun,
  type AttemptRecord,
  type AttemptSetup,
  type JobRunDeps,
  type RunEvent,
  type RunOutcome,
  type RunResult,
  type RunSpec,
  type RunState,
  type StopOutcome,
} from './job-run.ts';
export { JobRunner, type JobRunnerDeps, type StartOptions } from './runner.ts';
