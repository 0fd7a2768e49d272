/**
 * `fabric explain JOB`: the scheduler's explanation as text. For a waiting job, how many peers
 * each filter removed and why; for a placed one, the chosen devices and the scores that chose
 * them, next to the runners-up. `--json` prints the Explanation object itself.
 */
import type { StatusCode } from './plan.ts';
import { formatCount } from './quantity.ts';
import type { Explanation, PeerScore } from './scheduler/schedule.ts';

function scoreLine(score: PeerScore): string {
  const plugins = Object.entries(score.plugins)
    .filter(([, value]) => value !== 0)
    .map(([name, value]) => `${name} ${value}`)
    .join(', ');
  return `${score.peerId}: total ${score.total}${plugins === '' ? '' : ` (${plugins})`}`;
}

export function formatExplanation(explain: Explanation, status: StatusCode): string {
  const lines: string[] = [`job ${explain.jobId}: ${status}`, `  shape: ${explain.shape}`];
  if (explain.sizing !== null) lines.push(`  sizing: ${explain.sizing}`);
  lines.push(`  ${explain.summary}`);
  if (explain.removed.length > 0) {
    lines.push(`  filters (${formatCount(explain.peers)} peers, ${formatCount(explain.feasible)} fit):`);
    for (const r of explain.removed) lines.push(`    ${formatCount(r.count).padStart(7)}  ${r.reason}  [${r.filter}, ${r.code}]`);
  }
  if (explain.chosen.length > 0) {
    lines.push('  chosen:');
    for (const c of explain.chosen) {
      lines.push(`    ${scoreLine(c)}`);
      for (const device of c.devices) lines.push(`      ${device}`);
    }
  }
  if (explain.runnersUp.length > 0) {
    lines.push('  runners-up:');
    for (const r of explain.runnersUp) lines.push(`    ${scoreLine(r)}`);
  }
  return lines.join('\n');
}
