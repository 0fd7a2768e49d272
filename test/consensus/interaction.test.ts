/**
 * Scripted Raft tests in the style of etcd's datadriven interaction tests. Each file in
 * `testdata/` is a sequence of blocks:
 *
 *   # a comment
 *   command args
 *   ----
 *   expected output (no blank lines; "ok" when the command prints nothing)
 *
 * separated by blank lines. The runner replays every command against a fresh InteractionEnv
 * (see interaction-env.ts for the command list) and compares the output with what is written.
 *
 * To (re)generate the expected outputs after a deliberate change, run
 *
 *   REWRITE=1 npx vitest run test/consensus/interaction.test.ts
 *
 * which rewrites each file with the actual outputs; then read the diff before committing it.
 */
import { join } from 'node:path';
import { InteractionEnv } from './interaction-env.ts';
import { describeScripts } from '../support/scripted.ts';

describeScripts('raft interaction scripts', join(import.meta.dirname, 'testdata'), () => new InteractionEnv());
