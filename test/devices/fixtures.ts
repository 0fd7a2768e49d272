/** Reading the shipped device fixtures (fixtures/devices) in tests. */
import { readFileSync, readdirSync } from 'node:fs';
import { expect } from 'vitest';
import { isFabricError } from '../../src/core/index.ts';
import { fixturePath } from '../../src/devices/fake/profiles.ts';

export function readFixture(relative: string): string {
  return readFileSync(fixturePath(relative), 'utf8');
}

/** File names in a fixture folder ending in `suffix`, sorted. */
export function listFixtures(folder: string, suffix: string): string[] {
  return readdirSync(fixturePath(folder))
    .filter((f) => f.endsWith(suffix))
    .sort();
}

/** Every match of a regex's first group in a text: an independent cross-check of a parser. */
export function allMatches(text: string, re: RegExp): string[] {
  return [...text.matchAll(new RegExp(re.source, re.flags.includes('g') ? re.flags : `${re.flags}g`))].map((m) => m[1]!);
}

/** Asserts that `fn` throws a DISCOVERY_FAILED error whose message matches. */
export function expectDiscoveryError(fn: () => unknown, message: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(isFabricError(caught, 'DISCOVERY_FAILED'), String(caught)).toBe(true);
  expect((caught as Error).message).toMatch(message);
}
