/**
 * `npm run bench -- NAME [--json] [flags]`: runs one benchmark (DESIGN.md, "Benchmarks: one
 * contract"). Progress goes to stderr. With `--json` the last line on stdout is one JSON object
 * of the figures; without it stdout gets a readable table. Benchmarks measure and assert nothing.
 */
import { GOSSIP_USAGE, gossipTable, parseGossipArgs, runGossipBench } from './gossip.ts';
import { PLACEMENT_USAGE, parsePlacementArgs, runPlacementBench } from './placement.ts';
import { REPLICATION_USAGE, parseReplicationArgs, replicationTable, runReplicationBench } from './replication.ts';
import { RAFT_USAGE, parseRaftArgs, raftTable, runRaftBench } from './raft.ts';
import { RECOVERY_USAGE, parseRecoveryArgs, recoveryTable, runRecoveryBench } from './recovery.ts';

interface Bench {
  name: string;
  what: string;
  /** Set while the benchmark waits for the issue that builds what it measures. */
  notBuilt?: number;
  usage?: string;
  run?: (args: string[], json: boolean) => Promise<{ figures: Record<string, unknown>; table: string }>;
}

const progress = (line: string): void => void process.stderr.write(`${line}\n`);

const BENCHES: Bench[] = [
  {
    name: 'gossip',
    what: 'N daemons; one changes its inventory / one is killed',
    usage: GOSSIP_USAGE,
    run: async (args) => {
      const figures = await runGossipBench(parseGossipArgs(args), { progress });
      return { figures, table: gossipTable(figures) };
    },
  },
  {
    name: 'raft',
    what: 'leader killed repeatedly; commits under load',
    usage: RAFT_USAGE,
    run: async (args) => {
      const figures = await runRaftBench(parseRaftArgs(args), { progress });
      return { figures, table: raftTable(figures) };
    },
  },
  { name: 'placement', what: 'trace replay (FGD setup) and raw speed', usage: PLACEMENT_USAGE, run: (args) => runPlacementBench(parsePlacementArgs(args), { progress }) },
  {
    name: 'replication',
    what: 'checkpoint bytes to peers vs raw TCP in the same run',
    usage: REPLICATION_USAGE,
    run: async (args) => {
      const figures = await runReplicationBench(parseReplicationArgs(args), { progress });
      return { figures, table: replicationTable(figures) };
    },
  },
  {
    name: 'recovery',
    what: 'host of a checkpointing job killed',
    usage: RECOVERY_USAGE,
    run: async (args) => {
      const figures = await runRecoveryBench(parseRecoveryArgs(args), { progress });
      return { figures, table: recoveryTable(figures) };
    },
  },
];

function list(): string {
  return BENCHES.map((b) => `  ${b.name.padEnd(12)} ${b.what}${b.notBuilt !== undefined ? ` (not built yet, issue ${b.notBuilt})` : ''}`).join('\n');
}

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const rest = argv.filter((a) => a !== '--json');
  const name = rest[0];
  if (name === undefined || name === '--help' || name === '-h') {
    process.stderr.write(`usage: npm run bench -- NAME [--json] [flags]\nbenchmarks:\n${list()}\n`);
    return name === undefined ? 2 : 0;
  }
  const bench = BENCHES.find((b) => b.name === name);
  if (bench === undefined) {
    process.stderr.write(`bench: unknown benchmark ${JSON.stringify(name)}; known:\n${list()}\n`);
    return 2;
  }
  if (bench.run === undefined) {
    process.stderr.write(`bench: ${bench.name}: not built yet (issue ${bench.notBuilt})\n`);
    return 2;
  }
  const args = rest.slice(1);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${bench.usage ?? `npm run bench -- ${bench.name} [--json]`}\n`);
    return 0;
  }
  let result: { figures: Record<string, unknown>; table: string };
  try {
    result = await bench.run(args, json);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`bench: ${bench.name}: ${message}\n`);
    // The contract's last line stays one JSON object, here saying the run produced no figures.
    if (json) process.stdout.write(`${JSON.stringify({ bench: bench.name, error: message })}\n`);
    if (bench.usage !== undefined && err instanceof TypeError && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`${bench.usage}\n`);
    }
    return 1;
  }
  process.stdout.write(json ? `${JSON.stringify(result.figures)}\n` : `${result.table}\n`);
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
