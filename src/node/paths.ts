import { join } from 'node:path';
import { API_FILE_NAME } from '../api/endpoint.ts';

export function dataDirPaths(dir: string) {
  return {
    dir,
    config: join(dir, 'config.json'),
    identityKey: join(dir, 'identity.key'),
    swarmKey: join(dir, 'swarm.key'),
    state: join(dir, 'state.json'),
    api: join(dir, API_FILE_NAME),
    lock: join(dir, 'daemon.lock'),
    log: join(dir, 'daemon.log'),
    raft: join(dir, 'raft'),
    jobs: join(dir, 'jobs'),
    checkpoints: join(dir, 'checkpoints'),
  };
}
export type DataDirPaths = ReturnType<typeof dataDirPaths>;
