/**
 * Reading fixture captures for the fake tool: the multi-command capture files of
 * nvidia_gpu_exporter (one section per command) and single-command files pasted from a terminal.
 *
 * A capture section looks like this (a failing command keeps its output and an exit marker):
 *
 *     ################################################################################
 *     # idle :: query (-q)
 *     # $ nvidia-smi -q
 *     ################################################################################
 *     <output>
 *     # (exit code: 255)
 */

export interface CaptureSection {
  /** `idle :: query (-q)`. */
  label: string;
  /** The command line as recorded: `nvidia-smi -q`. */
  command: string;
  /** What the command printed, ending in one newline. */
  output: string;
  /** 0 unless the capture recorded a failure. */
  exitCode: number;
}

const RULE = /^#{40,}\s*$/;
const EXIT_MARKER = /^# \(exit code: (\d+)\)\s*$/;

/** Splits a multi-command capture into its sections, in file order. */
export function splitCaptureSections(text: string): CaptureSection[] {
  const lines = text.split(/\r?\n/);
  const sections: CaptureSection[] = [];
  let i = 0;
  while (i < lines.length) {
    if (!RULE.test(lines[i]!)) {
      i++;
      continue;
    }
    // Header: comment lines up to the closing rule.
    let j = i + 1;
    let label = '';
    let command: string | undefined;
    while (j < lines.length && !RULE.test(lines[j]!) && lines[j]!.startsWith('#')) {
      const line = lines[j]!;
      if (line.startsWith('# $ ')) command = line.slice(4).trim();
      else if (label === '') label = line.slice(1).trim();
      j++;
    }
    if (j >= lines.length || !RULE.test(lines[j]!)) {
      i = j; // a block of comments that is not a section header (the file's own preamble)
      continue;
    }
    let k = j + 1;
    while (k < lines.length && !RULE.test(lines[k]!)) k++;
    if (command !== undefined) {
      const body = lines.slice(j + 1, k);
      while (body.length > 0 && body[body.length - 1]!.trim() === '') body.pop();
      let exitCode = 0;
      const marker = EXIT_MARKER.exec(body[body.length - 1] ?? '');
      if (marker) {
        exitCode = Number(marker[1]);
        body.pop();
        while (body.length > 0 && body[body.length - 1]!.trim() === '') body.pop();
      }
      sections.push({ label, command, output: body.length > 0 ? `${body.join('\n')}\n` : '', exitCode });
    }
    i = k;
  }
  return sections;
}

/** The first section whose recorded command is `command` (or starts with `commandPrefix`). */
export function findCaptureSection(text: string, match: { command?: string; commandPrefix?: string }): CaptureSection | undefined {
  return splitCaptureSections(text).find((s) => (match.command !== undefined && s.command === match.command) || (match.commandPrefix !== undefined && s.command.startsWith(match.commandPrefix)));
}

/**
 * Drops the shell prompt line that some fixtures begin with (`$ nvidia-smi topo -m`,
 * `user@host:~$ nvidia-smi -a`): it was typed, not printed by the tool.
 */
export function stripLeadingPrompt(text: string): string {
  const lines = text.split('\n');
  const first = lines.findIndex((l) => l.trim() !== '');
  if (first >= 0 && /^\S*\$\s*(nvidia-smi|rocm-smi|rocminfo)\b/.test(lines[first]!.trim())) lines.splice(first, 1);
  return lines.join('\n');
}
