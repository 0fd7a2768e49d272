/**
 * The host's own CPU and memory, read from node:os, and its NUMA node count from sysfs (Linux).
 */
import { cpus, totalmem } from 'node:os';
import { readdirSync } from 'node:fs';
import type { Host } from '../model.ts';

const SYSFS_NODES = '/sys/devices/system/node';

/** NUMA nodes listed in sysfs (`node0`, `node1`, ...); undefined where sysfs is not readable. */
export function countNumaNodes(sysfsNodeDir = SYSFS_NODES): number | undefined {
  try {
    const count = readdirSync(sysfsNodeDir).filter((name) => /^node\d+$/.test(name)).length;
    return count > 0 ? count : undefined;
  } catch {
    return undefined;
  }
}

export function readHostInfo(): Host {
  const cpuList = cpus();
  const host: Host = {
    cpuModel: (cpuList[0]?.model ?? 'unknown').trim().slice(0, 256),
    cpuCores: cpuList.length,
    memoryMiB: Math.floor(totalmem() / (1024 * 1024)),
  };
  const numaNodes = countNumaNodes();
  if (numaNodes !== undefined) host.numaNodes = numaNodes;
  return host;
}
