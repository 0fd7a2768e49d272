export * from './commands.ts';
export * from './fsm.ts';
export * from './json.ts';
export * from './state.ts';
