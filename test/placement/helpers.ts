/**
 * Placement test helpers: real inventories (discovery run in-process over the simulated GPU
 * profiles, which replay captured nvidia-smi / rocm-smi outputs), peer views and snapshots.
 */
import type { Inventory } from '../../src/devices/model.ts';
import { answerToolCall } from '../../src/devices/fake/fake-tool.ts';
import type { SimulatedToolName } from '../../src/devices/fake/profiles.ts';
import { discoverInventory } from '../../src/devices/probe/discover.ts';
import { silentLogger } from '../../src/core/index.ts';
import { ClusterState } from '../../src/placement/cluster.ts';
import type { AllocationView, PeerView, Snapshot, TenantQuota } from '../../src/placement/snapshot.ts';
import { peerViewOf } from '../../src/placement/snapshot.ts';

const inventories = new Map<string, Promise<Inventory>>();

/** The inventory discovery reports for a simulated profile (`seed` varies the UUIDs). */
export function inventoryOf(profile: string, seed: string): Promise<Inventory> {
  const key = `${profile}/${seed}`;
  let inventory = inventories.get(key);
  if (inventory === undefined) {
    inventory = discoverInventory({
      host: { cpuModel: 'test cpu', cpuCores: 64, memoryMiB: 512 * 1024 },
      log: silentLogger,
      run: async (cmd, args) => {
        const answer = answerToolCall(profile, seed, cmd.file as SimulatedToolName, args);
        return { code: answer.exitCode, stdout: answer.stdout, stderr: answer.stderr, notFound: answer.exitCode === 127 };
      },
    });
    inventories.set(key, inventory);
  }
  return inventory;
}

export interface PeerOptions {
  zone?: string;
  region?: string;
  price?: number;
  spot?: boolean;
  labels?: Record<string, string>;
  cpuCores?: number;
  memoryMiB?: number;
  schedulable?: boolean;
}

/** A peer view from a simulated profile, as the node layer maps a gossiped NodeState. */
export async function peerOf(peerId: string, profile: string, options: PeerOptions = {}): Promise<PeerView> {
  const inventory = await inventoryOf(profile, peerId);
  const view = peerViewOf(
    {
      peerId,
      labels: {
        zone: options.zone,
        region: options.region,
        pricePerGpuHour: options.price,
        spot: options.spot ?? false,
        extra: options.labels ?? {},
      },
      inventory: {
        ...inventory,
        host: { cpuCores: options.cpuCores ?? inventory.host.cpuCores, memoryMiB: options.memoryMiB ?? inventory.host.memoryMiB },
      },
    },
    { schedulable: options.schedulable ?? true },
  );
  return view;
}

export function snapshot(peers: PeerView[], allocations: AllocationView[] = [], tenants: TenantQuota[] = [], now = 0): Snapshot {
  return { peers, allocations, tenants, now };
}

export function clusterOf(peers: PeerView[], allocations: AllocationView[] = [], tenants: TenantQuota[] = []): ClusterState {
  return ClusterState.fromSnapshot(snapshot(peers, allocations, tenants));
}
