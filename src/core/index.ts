export * from './errors.ts';
export * from './assert.ts';
export * from './clock.ts';
export * from './rng.ts';
export * from './log.ts';
export * from './deadline.ts';
