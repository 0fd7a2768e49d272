#!/usr/bin/env node
/**
 * The fake vendor tool, as an executable:
 *
 *     node src/devices/fake/fake-smi.ts --profile h100-sxm-8 --seed abc --tool nvidia-smi -q -x
 *
 * Everything after `--tool NAME` is the real tool's own arguments. It prints what fake-tool.ts
 * answers and exits with its exit code.
 */
import { answerToolCall } from './fake-tool.ts';
import type { SimulatedToolName } from './profiles.ts';

const TOOLS: readonly SimulatedToolName[] = ['nvidia-smi', 'rocm-smi', 'rocminfo'];
const USAGE = 'usage: fake-smi.ts --profile NAME --seed SEED --tool nvidia-smi|rocm-smi|rocminfo [tool args...]\n';

function main(argv: readonly string[]): number {
  const own = new Map<string, string>();
  let i = 0;
  // The fake's own options come first; the first argument after `--tool NAME` belongs to the tool.
  while (i + 1 < argv.length && ['--profile', '--seed', '--tool'].includes(argv[i]!) && !own.has('--tool')) {
    own.set(argv[i]!, argv[i + 1]!);
    i += 2;
  }
  const profile = own.get('--profile');
  const seed = own.get('--seed');
  const tool = own.get('--tool') as SimulatedToolName | undefined;
  if (profile === undefined || seed === undefined || tool === undefined || !TOOLS.includes(tool)) {
    process.stderr.write(USAGE);
    return 2;
  }
  const answer = answerToolCall(profile, seed, tool, argv.slice(i));
  process.stdout.write(answer.stdout);
  process.stderr.write(answer.stderr);
  return answer.exitCode;
}

// exitCode rather than process.exit(): let large outputs drain into a pipe before the process ends.
process.exitCode = main(process.argv.slice(2));
