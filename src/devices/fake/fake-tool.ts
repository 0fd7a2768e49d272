/**
 * What the fake nvidia-smi / rocm-smi / rocminfo answer for a simulated profile: the real
 * captured output of the command asked for, with every GPU identifier rewritten from the seed so
 * that each simulated daemon has its own UUIDs. A command the profile has no capture for fails
 * as a real tool would (message on stderr, non-zero exit); a tool the profile lacks is
 * "not installed" (exit 127, as a shell reports a missing command).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { findCaptureSection, stripLeadingPrompt } from './captures.ts';
import { findProfile, fixturePath, type CaptureRef, type NvidiaCapture, type RocmCapture, type SimulatedToolName } from './profiles.ts';

export interface FakeToolAnswer {
  stdout: string;
  stderr: string;
  exitCode: number;
}

function seededHex(seed: string, profile: string, kind: string, original: string, length: number): string {
  let hex = '';
  for (let round = 0; hex.length < length; round++) {
    hex += createHash('sha256').update(`${profile}\0${seed}\0${kind}\0${original.toLowerCase()}\0${round}`).digest('hex');
  }
  return hex.slice(0, length);
}

/**
 * Rewrites GPU and MIG UUIDs (`GPU-8-4-4-4-12` hex), AMD unique ids (`Unique ID: 0x…` in
 * rocm-smi, `Uuid: GPU-…` in rocminfo, the same number) and AMD serial numbers. Deterministic:
 * the same seed, profile and original always give the same replacement.
 */
export function rewriteIdentifiers(text: string, seed: string, profile: string): string {
  const uuidShape = (hex: string): string => `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
  // AMD ids are keyed by their numeric value so rocm-smi's `0x4edf…` and rocminfo's `GPU-04edf…` stay equal.
  const amdId = (hexDigits: string): string => {
    const value = BigInt(`0x${hexDigits}`);
    return value === 0n ? '0'.repeat(16) : seededHex(seed, profile, 'amd-unique-id', value.toString(16), 16);
  };
  return text
    .replace(/\b(GPU|MIG)-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\b/g, (_m, prefix: string, uuid: string) => `${prefix}-${uuidShape(seededHex(seed, profile, prefix, uuid, 32))}`)
    .replace(/(Unique ID"?\s*:\s*"?)0x([0-9a-fA-F]{1,16})\b/g, (_m, lead: string, hex: string) => `${lead}0x${BigInt(`0x${amdId(hex)}`).toString(16)}`)
    .replace(/(Uuid:\s+GPU-)([0-9a-fA-F]{1,16})\b/g, (_m, lead: string, hex: string) => `${lead}${amdId(hex)}`)
    .replace(/(Serial Number"?\s*:\s*"?)(\d*[1-9]\d*)\b/g, (_m, lead: string, digits: string) => {
      const replacement = BigInt(`0x${seededHex(seed, profile, 'serial', digits, 24)}`).toString().slice(0, digits.length).padStart(digits.length, '1');
      return `${lead}${replacement}`;
    });
}

function readCapture(ref: CaptureRef): { output: string; exitCode: number } | undefined {
  const text = readFileSync(fixturePath(ref.file), 'utf8');
  if (ref.command === undefined && ref.commandPrefix === undefined) return { output: stripLeadingPrompt(text), exitCode: 0 };
  const match: { command?: string; commandPrefix?: string } = {};
  if (ref.command !== undefined) match.command = ref.command;
  if (ref.commandPrefix !== undefined) match.commandPrefix = ref.commandPrefix;
  const section = findCaptureSection(text, match);
  return section ? { output: section.output, exitCode: section.exitCode } : undefined;
}

function sameArgs(args: readonly string[], ...forms: string[][]): boolean {
  return forms.some((f) => f.length === args.length && f.every((a, i) => a === args[i]));
}

function nvidiaCommand(args: readonly string[]): NvidiaCapture | undefined {
  if (sameArgs(args, ['-q', '-x'], ['-x', '-q'], ['-q', '--xml-format'], ['--query', '--xml-format'])) return 'xml';
  if (sameArgs(args, ['-q'], ['-a'], ['--query'])) return 'query';
  if (sameArgs(args, ['-L'], ['--list-gpus'])) return 'list';
  if (sameArgs(args, ['mig', '-lgi'])) return 'migGpuInstances';
  if (sameArgs(args, ['topo', '-m'], ['topo', '--matrix'])) return 'topo';
  if (args.length === 2 && args[0]!.startsWith('--query-gpu=') && args[1]!.startsWith('--format=csv')) return 'queryGpuCsv';
  return undefined;
}

function rocmCommand(args: readonly string[]): RocmCapture | undefined {
  if (args.includes('--json')) return 'json';
  if (sameArgs(args, ['-a'], ['--showallinfo'])) return 'all';
  if (args.length === 0) return 'concise';
  if (sameArgs(args, ['--showtopotype'])) return 'topoType';
  return undefined;
}

/**
 * Answers `nvidia-smi --query-gpu=f1,f2 --format=csv[,noheader][,nounits]` from a recorded CSV of
 * all fields, as the real tool would print just those columns.
 */
export function projectQueryGpuCsv(recordedCsv: string, args: readonly string[]): FakeToolAnswer {
  const fields = args[0]!.slice('--query-gpu='.length).split(',').map((f) => f.trim());
  const format = new Set(args[1]!.slice('--format='.length).split(','));
  const lines = recordedCsv.split('\n').filter((l) => l.trim() !== '');
  const header = (lines[0] ?? '').split(',').map((h) => h.trim());
  const columns: number[] = [];
  for (const field of fields) {
    const col = header.findIndex((h) => h === field || h.startsWith(`${field} [`));
    if (col < 0) return { stdout: '', stderr: `Field "${field}" is not a valid field to query.\n`, exitCode: 2 };
    columns.push(col);
  }
  const out: string[] = [];
  if (!format.has('noheader')) out.push(columns.map((c) => header[c]).join(', '));
  for (const line of lines.slice(1)) {
    const cells = line.split(',').map((c) => c.trim());
    out.push(
      columns
        .map((c) => {
          const unit = /\[(.+)\]$/.exec(header[c] ?? '')?.[1];
          const cell = cells[c] ?? '';
          return format.has('nounits') && unit && cell.endsWith(` ${unit}`) ? cell.slice(0, -unit.length - 1) : cell;
        })
        .join(', '),
    );
  }
  return { stdout: `${out.join('\n')}\n`, stderr: '', exitCode: 0 };
}

/** The whole fake tool: profile + seed + tool + its arguments → what it prints and its exit code. */
export function answerToolCall(profileName: string, seed: string, tool: SimulatedToolName, args: readonly string[]): FakeToolAnswer {
  const profile = findProfile(profileName);
  if (!profile) return { stdout: '', stderr: `fake-smi: unknown profile ${JSON.stringify(profileName)}\n`, exitCode: 2 };
  const notInstalled: FakeToolAnswer = { stdout: '', stderr: `bash: ${tool}: command not found\n`, exitCode: 127 };
  const commandLine = [tool, ...args].join(' ');

  let ref: CaptureRef | undefined;
  if (tool === 'nvidia-smi') {
    if (!profile.nvidiaSmi) return notInstalled;
    const key = nvidiaCommand(args);
    if (!key) return { stdout: '', stderr: "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n", exitCode: 2 };
    ref = profile.nvidiaSmi[key];
  } else if (tool === 'rocm-smi') {
    if (!profile.rocmSmi) return notInstalled;
    const key = rocmCommand(args);
    if (!key) return { stdout: '', stderr: `simulated rocm-smi does not know the arguments of \`${commandLine}\`\n`, exitCode: 2 };
    ref = profile.rocmSmi[key];
  } else {
    if (!profile.rocminfo) return notInstalled;
    ref = args.length === 0 ? profile.rocminfo : undefined;
  }
  if (!ref) return { stdout: '', stderr: `simulated profile ${profileName} has no capture of \`${commandLine}\`\n`, exitCode: 1 };
  const capture = readCapture(ref);
  if (!capture) return { stdout: '', stderr: `${commandLine}: capture section missing from ${ref.file}\n`, exitCode: 1 };
  const output = rewriteIdentifiers(capture.output, seed, profileName);
  // A capture of a failed command is replayed as that failure.
  if (capture.exitCode !== 0) return { stdout: '', stderr: output, exitCode: capture.exitCode };
  if (tool === 'nvidia-smi' && nvidiaCommand(args) === 'queryGpuCsv') return projectQueryGpuCsv(output, args);
  return { stdout: output, stderr: '', exitCode: 0 };
}
