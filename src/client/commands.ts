/** The CLI commands that talk to a running daemon through its HTTP API. */
import type { Command } from 'commander';
import { z } from 'zod';
import { FabricClient } from './client.ts';
import { action, addDataDirOption, dataDirOf, parseFlags, printJson } from './cli-kit.ts';
import { formatAge, nodesTable, table } from './format.ts';

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
        ...s.addrs.map((a, i) => [i === 0 ? 'addresses' : '', a]),
        ...s.warnings.map((w, i) => [i === 0 ? 'warnings' : '', w]),
      ];
      process.stdout.write(`${table(['', ''], rows).split('\n').slice(1).join('\n')}\n`);
    }),
  );
}
