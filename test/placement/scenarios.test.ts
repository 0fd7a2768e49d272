/**
 * Scripted placement scenarios in the style of the Raft interaction tests (etcd's datadriven
 * tests). Each file in `testdata/` is a sequence of blocks:
 *
 *   # a comment
 *   command args
 *   ----
 *   expected output (no blank lines)
 *
 * The runner replays the commands against a fresh ScenarioEnv (scenario-env.ts lists them) and
 * compares outputs. After a deliberate change, rewrite the expected outputs with
 *
 *   REWRITE=1 npx vitest run test/placement/scenarios.test.ts
 *
 * and read the diff before committing it.
 */
import { join } from 'node:path';
import { ScenarioEnv } from './scenario-env.ts';
import { describeScripts } from '../support/scripted.ts';

describeScripts('placement scenarios', join(import.meta.dirname, 'testdata'), () => new ScenarioEnv());
