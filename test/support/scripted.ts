/**
 * The runner of scripted tests in the style of etcd's datadriven tests, shared by the Raft
 * interaction scripts and the placement scenarios. Each `.txt` file in a testdata dir is a
 * sequence of blocks separated by blank lines:
 *
 *   # a comment
 *   command args
 *   ----
 *   expected output (no blank lines)
 *
 * Every file is replayed against a fresh environment; with REWRITE=1 the files are rewritten
 * with the actual outputs (read the diff before committing it).
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';

type Segment = { kind: 'text'; text: string } | { kind: 'command'; command: string; expected: string; line: number };

/** Splits a script into verbatim text (comments, blank lines) and command blocks. */
function parseScript(source: string, file: string): Segment[] {
  const lines = source.split('\n');
  const segments: Segment[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.trim() === '' || line.startsWith('#')) {
      segments.push({ kind: 'text', text: line });
      i++;
      continue;
    }
    if (lines[i + 1] !== '----') throw new Error(`${file}:${i + 1}: expected ---- after the command "${line}"`);
    const output: string[] = [];
    let j = i + 2;
    while (j < lines.length && lines[j]!.trim() !== '') output.push(lines[j++]!);
    segments.push({ kind: 'command', command: line, expected: output.join('\n'), line: i + 1 });
    i = j;
  }
  return segments;
}

function render(segments: Segment[]): string {
  return segments.map((s) => (s.kind === 'text' ? s.text : `${s.command}\n----\n${s.expected}`)).join('\n');
}

export interface ScriptEnv {
  handle(command: string): string | Promise<string>;
}

/** Registers one test per script in `dir`, each replayed against `newEnv()`. */
export function describeScripts(title: string, dir: string, newEnv: () => ScriptEnv): void {
  const rewrite = process.env.REWRITE === '1';
  const files = readdirSync(dir).filter((f) => f.endsWith('.txt')).sort();
  describe(title, () => {
    test('there are scripts to run', () => {
      expect(files.length).toBeGreaterThan(0);
    });

    for (const file of files) {
      test(file, async () => {
        const path = join(dir, file);
        const segments = parseScript(readFileSync(path, 'utf8'), file);
        const env = newEnv();
        for (const segment of segments) {
          if (segment.kind !== 'command') continue;
          let actual: string;
          try {
            actual = await env.handle(segment.command);
          } catch (err) {
            throw new Error(`${file}:${segment.line}: ${segment.command}: ${err instanceof Error ? err.stack : String(err)}`);
          }
          // Blank lines would end the block: keep the transcript one block per command.
          actual = actual.replace(/\n\s*\n/g, '\n');
          if (rewrite) segment.expected = actual;
          else expect(actual, `${file}:${segment.line}: ${segment.command}`).toBe(segment.expected);
        }
        if (rewrite) writeFileSync(path, render(segments));
      });
    }
  });
}
