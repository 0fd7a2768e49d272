#!/usr/bin/env node
import { buildProgram } from './cli.ts';

await buildProgram().parseAsync(process.argv);
