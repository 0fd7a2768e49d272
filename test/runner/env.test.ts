import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { isFabricError } from '../../src/core/index.ts';
import type { Device } from '../../src/devices/model.ts';
import type { DeviceGrant, JobState } from '../../src/placement/fsm/state.ts';
import {
  assignDevices,
  buildJobEnv,
  isReservedVar,
  visibleDeviceEnv,
  type AssignedDevice,
  type GrantLike,
  type JobEnvInput,
  type RunState,
} from '../../src/runner/index.ts';

function gpu(index: number, uuid: string, vendor: 'nvidia' | 'amd' = 'nvidia', mig: Device['migInstances'] = []): Device {
  return { index, uuid, vendor, model: vendor === 'nvidia' ? 'NVIDIA H100 80GB HBM3' : 'AMD Instinct MI300X', memoryMiB: 81_559, migEnabled: mig.length > 0, migInstances: mig };
}

const H100_0 = 'GPU-9d7c4a8e-1111-2222-3333-444455556666';
const H100_1 = 'GPU-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff';
const MIG_A = 'MIG-5c4d0c2e-8d1e-5a2c-9b7e-1a2b3c4d5e6f';
const MIG_B = 'MIG-7e8f9a0b-1c2d-5e3f-8a4b-6c7d8e9f0a1b';
const inventory: Device[] = [
  gpu(0, H100_0),
  gpu(1, H100_1, 'nvidia', [
    { uuid: MIG_A, profile: '3g.40gb', gpuInstanceId: 2, computeInstanceId: 0, memoryMiB: 40_192 },
    { uuid: MIG_B, profile: '1g.10gb', gpuInstanceId: 9, computeInstanceId: 0, memoryMiB: 9_856 },
  ]),
];
const amdInventory: Device[] = [gpu(0, 'GPU-7c2b1f4a0d9e3c11', 'amd'), gpu(1, 'GPU-51a3b2c4d5e6f708', 'amd'), gpu(2, 'AMD-SN-692304001234', 'amd')];

const whole = (uuid: string, milli = 1000): GrantLike => ({ uuid, milli, parentUuid: null });

describe('device grants → assigned devices', () => {
  test('whole GPUs and MIG slices resolve against the inventory, in grant order', () => {
    const got = assignDevices([whole(H100_1), { uuid: MIG_B, milli: 1000, parentUuid: H100_1 }, whole(H100_0, 500)], inventory);
    expect(got).toEqual([
      { uuid: H100_1, vendor: 'nvidia', index: 1, milli: 1000, mig: null },
      { uuid: MIG_B, vendor: 'nvidia', index: 1, milli: 1000, mig: { parentUuid: H100_1, profile: '1g.10gb', gpuInstanceId: 9 } },
      { uuid: H100_0, vendor: 'nvidia', index: 0, milli: 500, mig: null },
    ]);
  });

  test('a grant of a device this host does not have is refused, never run elsewhere', () => {
    expect(() => assignDevices([whole('GPU-not-here')], inventory)).toThrow(/GPU-not-here is not on this host/);
    try {
      assignDevices([whole('GPU-not-here')], inventory);
    } catch (err) {
      expect(isFabricError(err, 'BAD_INPUT')).toBe(true);
    }
  });

  test('inconsistent grants are refused: twice the same device, a wrong parent, a bad share', () => {
    expect(() => assignDevices([whole(H100_0), whole(H100_0)], inventory)).toThrow(/granted twice/);
    expect(() => assignDevices([{ uuid: MIG_A, milli: 1000, parentUuid: H100_0 }], inventory)).toThrow(/belongs to GPU-0a1b/);
    expect(() => assignDevices([{ uuid: H100_0, milli: 1000, parentUuid: H100_1 }], inventory)).toThrow(/whole GPU/);
    expect(() => assignDevices([whole(H100_0, 0)], inventory)).toThrow(/1\.\.1000/);
    expect(() => assignDevices([whole(H100_0, 1001)], inventory)).toThrow(/1\.\.1000/);
  });

  test("the placement FSM's DeviceGrant is a GrantLike, and every run state is a job state", () => {
    const grant: DeviceGrant = { uuid: H100_0, milli: 1000, parentUuid: null };
    const asGrantLike: GrantLike = grant;
    const states: RunState[] = ['placed', 'running', 'restarting', 'succeeded', 'failed', 'cancelled', 'lost'];
    const asJobStates: JobState[] = states;
    expect(assignDevices([asGrantLike], inventory)).toHaveLength(1);
    expect(asJobStates).toHaveLength(7);
  });
});

describe('visible-device variables', () => {
  test('NVIDIA: CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES list UUIDs, MIG slices by MIG UUID; AMD variables hide everything', () => {
    const env = visibleDeviceEnv(assignDevices([whole(H100_0), { uuid: MIG_A, milli: 1000, parentUuid: H100_1 }], inventory));
    expect(env.CUDA_VISIBLE_DEVICES).toBe(`${H100_0},${MIG_A}`);
    expect(env.NVIDIA_VISIBLE_DEVICES).toBe(`${H100_0},${MIG_A}`);
    expect(env.HIP_VISIBLE_DEVICES).toBe('');
    expect(env.ROCR_VISIBLE_DEVICES).toBe('');
    expect(env.FABRIC_GPU_UUIDS).toBe(`${H100_0},${MIG_A}`);
    expect(env.FABRIC_GPU_MILLI).toBe('1000,1000');
    expect(env.CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).toBeUndefined();
  });

  test('AMD: ROCR_VISIBLE_DEVICES by UUID (host index where ROCR takes no UUID), HIP and CUDA ordinals within that set', () => {
    const env = visibleDeviceEnv(assignDevices([whole('GPU-51a3b2c4d5e6f708'), whole('AMD-SN-692304001234')], amdInventory));
    expect(env.ROCR_VISIBLE_DEVICES).toBe('GPU-51a3b2c4d5e6f708,2');
    expect(env.HIP_VISIBLE_DEVICES).toBe('0,1');
    expect(env.CUDA_VISIBLE_DEVICES).toBe('0,1');
    expect(env.NVIDIA_VISIBLE_DEVICES).toBe('void');
  });

  test('no devices: every runtime sees none', () => {
    expect(visibleDeviceEnv([])).toMatchObject({ CUDA_VISIBLE_DEVICES: '', NVIDIA_VISIBLE_DEVICES: 'void', HIP_VISIBLE_DEVICES: '', ROCR_VISIBLE_DEVICES: '', FABRIC_GPU_UUIDS: '' });
  });

  test('a fractional NVIDIA share caps MPS threads to the share', () => {
    expect(visibleDeviceEnv(assignDevices([whole(H100_0, 250)], inventory)).CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).toBe('25');
    expect(visibleDeviceEnv(assignDevices([whole(H100_0, 3)], inventory)).CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).toBe('1');
  });

  test('an allocation mixing vendors is refused', () => {
    const mixed: AssignedDevice[] = [...assignDevices([whole(H100_0)], inventory), ...assignDevices([whole('GPU-7c2b1f4a0d9e3c11')], amdInventory)];
    expect(() => visibleDeviceEnv(mixed)).toThrow(/cannot mix NVIDIA and AMD/);
  });
});

const baseInput: JobEnvInput = {
  base: { PATH: '/usr/bin:/bin', HOME: '/home/ada' },
  jobId: 'job-42',
  attempt: 1,
  devices: [],
  checkpointDir: '/data/jobs/job-42/ckpt',
};

describe('job environment', () => {
  test("keeps the user's variables and adds FABRIC_*; FABRIC_RESTORE_DIR only when resuming", () => {
    const env = buildJobEnv(baseInput);
    expect(env).toMatchObject({ PATH: '/usr/bin:/bin', HOME: '/home/ada', FABRIC_JOB_ID: 'job-42', FABRIC_ATTEMPT: '1', FABRIC_CHECKPOINT_DIR: '/data/jobs/job-42/ckpt' });
    expect(env).not.toHaveProperty('FABRIC_RESTORE_DIR');
    expect(env).not.toHaveProperty('MASTER_ADDR');
    const resumed = buildJobEnv({ ...baseInput, attempt: 2, restoreDir: '/data/jobs/job-42/restore/7', checkpointCommit: '/opt/fabric/bin/fabric checkpoint commit' });
    expect(resumed.FABRIC_RESTORE_DIR).toBe('/data/jobs/job-42/restore/7');
    expect(resumed.FABRIC_ATTEMPT).toBe('2');
    expect(resumed.FABRIC_CHECKPOINT_COMMIT).toBe('/opt/fabric/bin/fabric checkpoint commit');
  });

  test('stale variables fabric owns never come through from the user environment', () => {
    const env = buildJobEnv({
      ...baseInput,
      base: { ...baseInput.base, RANK: '3', WORLD_SIZE: '8', CUDA_VISIBLE_DEVICES: '0,1,2,3', FABRIC_RESTORE_DIR: '/old', FABRIC_RUN_TOKEN: 'x', GONE: undefined },
    });
    expect(env.RANK).toBeUndefined();
    expect(env.WORLD_SIZE).toBeUndefined();
    expect(env.CUDA_VISIBLE_DEVICES).toBe('');
    expect(env.FABRIC_RESTORE_DIR).toBeUndefined();
    expect(env.FABRIC_RUN_TOKEN).toBeUndefined();
    expect('GONE' in env).toBe(false);
  });

  test('gang jobs get the torchrun rendezvous variables', () => {
    const env = buildJobEnv({
      ...baseInput,
      devices: assignDevices([whole(H100_0), whole(H100_1)], inventory),
      gang: { masterAddr: '10.0.0.7', masterPort: 29_500, nodeRank: 2, nodes: 4 },
    });
    expect(env).toMatchObject({
      MASTER_ADDR: '10.0.0.7',
      MASTER_PORT: '29500',
      RANK: '2',
      WORLD_SIZE: '4',
      LOCAL_RANK: '0',
      LOCAL_WORLD_SIZE: '1',
      NODE_RANK: '2',
      PET_NNODES: '4',
      PET_NODE_RANK: '2',
      PET_MASTER_ADDR: '10.0.0.7',
      PET_MASTER_PORT: '29500',
      CUDA_VISIBLE_DEVICES: `${H100_0},${H100_1}`,
    });
    const perGpu = buildJobEnv({ ...baseInput, gang: { masterAddr: 'head', masterPort: 29_500, nodeRank: 1, nodes: 2, procsPerNode: 8, localRank: 3 } });
    expect(perGpu).toMatchObject({ RANK: '11', WORLD_SIZE: '16', LOCAL_RANK: '3', LOCAL_WORLD_SIZE: '8', NODE_RANK: '1' });
  });

  test('impossible gangs and bad inputs are refused', () => {
    const gang = { masterAddr: 'head', masterPort: 29_500, nodeRank: 0, nodes: 2 };
    expect(() => buildJobEnv({ ...baseInput, gang: { ...gang, nodeRank: 2 } })).toThrow(/node rank/);
    expect(() => buildJobEnv({ ...baseInput, gang: { ...gang, masterPort: 70_000 } })).toThrow(/master port/);
    expect(() => buildJobEnv({ ...baseInput, gang: { ...gang, masterAddr: 'a b' } })).toThrow(/master address/);
    expect(() => buildJobEnv({ ...baseInput, gang: { ...gang, procsPerNode: 2, localRank: 2 } })).toThrow(/local rank/);
    expect(() => buildJobEnv({ ...baseInput, attempt: 0 })).toThrow(/attempt/);
    expect(() => buildJobEnv({ ...baseInput, extra: { API: 'x' } })).toThrow(/must start with FABRIC_/);
    expect(() => buildJobEnv({ ...baseInput, base: { X: 'a\0b' } })).toThrow(/NUL/);
  });

  test('for any user environment: its own variables pass unchanged, fabric-owned ones are exactly what fabric sets', () => {
    const reservedish = fc.constantFrom('RANK', 'MASTER_PORT', 'CUDA_VISIBLE_DEVICES', 'ROCR_VISIBLE_DEVICES', 'FABRIC_JOB_ID', 'FABRIC_X', 'PET_NNODES', 'LOCAL_RANK');
    const name = fc.oneof(fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,12}$/), reservedish);
    const value = fc.string({ maxLength: 20 }).filter((s) => !s.includes('\0'));
    fc.assert(
      fc.property(fc.dictionary(name, value, { maxKeys: 12 }), (base) => {
        const clean = buildJobEnv({ ...baseInput, base: {} });
        const env = buildJobEnv({ ...baseInput, base });
        for (const [k, v] of Object.entries(base)) {
          if (isReservedVar(k)) expect(env[k]).toBe(clean[k]);
          else expect(env[k]).toBe(v);
        }
        for (const [k, v] of Object.entries(clean)) expect(env[k]).toBe(v);
      }),
    );
  });
});
