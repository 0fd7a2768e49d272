/** The CLI commands that talk to a running daemon through its HTTP API. */
import type { Command } from 'commander';
import { z } from 'zod';
import { FabricClient } from './client.ts';
import { action, addDataDirOption, dataDirOf, parseFlags, printJson } from './cli-kit.ts';
import { formatAge, nodesTable, table } from './format.ts';
import type { StatusResponse } from '../api/schemas.ts';

type CommonFlags = { dataDir?: string; json?: boolean };

const LabelPair = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=.{0,255}$/, 'labels are key=value');

export function registerClientCommands(program: Command): void {
  const label = program.command('label').description("change this daemon's labels at runtime; peers see the change within a second");
  addDataDirOption(label.command('set').description('set labels').argument('<key=value...>', 'labels to set').option('--json', 'print the node as JSON')).action(
    action(async (pairs: string[], flags: CommonFlags) => {
      const valid = parseFlags(z.object({ labels: z.array(LabelPair).min(1) }), { labels: pairs }).labels;
      const set = Object.fromEntries(valid.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      const node = await FabricClient.fromDataDir(dataDirOf(flags)).changeLabels({ set });
      if (flags.json) printJson(node);
      else process.stdout.write(`${Object.entries(node.labels).map(([k, v]) => `${k}=${v}`).join('\n')}\n`);
    }),
  );
  addDataDirOption(label.command('rm').description('remove labels').argument('<key...>', 'label keys to remove').option('--json', 'print the node as JSON')).action(
    action(async (keys: string[], flags: CommonFlags) => {
      const node = await FabricClient.fromDataDir(dataDirOf(flags)).changeLabels({ remove: keys });
      if (flags.json) printJson(node);
      else process.stdout.write(`${Object.entries(node.labels).map(([k, v]) => `${k}=${v}`).join('\n')}\n`);
    }),
  );

  addDataDirOption(
    program
      .command('nodes')
      .description('list every peer of the fabric with its state, zone and GPUs')
      .option('--json', 'print a JSON array of peers (with devices, MIG instances and links)'),
  ).action(
    action(async (flags: CommonFlags) => {
      const nodes = await FabricClient.fromDataDir(dataDirOf(flags)).nodes();
      if (flags.json) printJson(nodes);
      else process.stdout.write(`${nodesTable(nodes)}\n`);
    }),
  );

  addDataDirOption(
    program
      .command('status')
      .description("show this daemon's identity, addresses, fabric id and peer counts")
      .option('--json', 'print the status as JSON'),
  ).action(
    action(async (flags: CommonFlags) => {
      const s = await FabricClient.fromDataDir(dataDirOf(flags)).status();
      if (flags.json) {
        printJson(s);
        return;
      }
      const rows = [
        ['peer id', s.peerId],
        ['fabric id', s.fabricId],
        ['data dir', s.dataDir],
        ['api', s.apiUrl],
        ['version', `${s.version} (incarnation ${s.incarnation}, up ${formatAge(s.uptimeMs)})`],
        ['peers', `${s.peers.alive} alive, ${s.peers.suspect} suspect, ${s.peers.dead} dead (${s.peers.connected} connected)`],
        ['gpus', String(s.devices)],
        ['raft', raftLine(s.raft)],
        ['leader', s.raft.leader === null ? '(none known)' : `${s.raft.leader}${s.raft.leader === s.peerId ? ' (this daemon)' : ''}`],
        ['term', String(s.raft.term)],
        ['voters', s.raft.voters.join(', ') || '(unknown)'],
        ...(s.raft.learners.length > 0 ? [['learners', s.raft.learners.join(', ')]] : []),
        ['commit', `${s.raft.commit} (applied ${s.raft.applied}${s.raft.source === 'leader' ? ' on the leader' : ''})`],
        ...s.addrs.map((a, i) => [i === 0 ? 'addresses' : '', a]),
        ...s.warnings.map((w, i) => [i === 0 ? 'warnings' : '', w]),
      ];
      process.stdout.write(`${table(['', ''], rows).split('\n').slice(1).join('\n')}\n`);
    }),
  );

  const raft = program.command('raft').description('the Raft group that holds the fabric state: voters, learners, leader');
  addDataDirOption(
    raft
      .command('peers')
      .description('list the voters and learners with their health and replication lag, as the leader sees them')
      .option('--json', 'print the group as JSON'),
  ).action(
    action(async (flags: CommonFlags) => {
      const r = await FabricClient.fromDataDir(dataDirOf(flags)).raftPeers();
      if (flags.json) {
        printJson(r);
        return;
      }
      const rows = r.peers.map((p) => [p.peerId, p.leader ? 'leader' : p.role, p.health, p.zone ?? '-', String(p.match), String(p.lag)]);
      process.stdout.write(`${table(['PEER', 'ROLE', 'HEALTH', 'ZONE', 'MATCH', 'LAG'], rows)}\nterm ${r.term}, commit ${r.commit}\n`);
    }),
  );
}

function raftLine(r: StatusResponse['raft']): string {
  const place = r.member === 'none' ? 'not a member (requests go to the leader)' : r.member;
  return r.member === 'none' ? place : `${place}, ${r.role}`;
}
