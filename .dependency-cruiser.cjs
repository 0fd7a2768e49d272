/**
 * The module arrows of DESIGN.md, checked in CI (`npm test` runs this before the suite).
 *   core        imports nothing
 *   consensus   core
 *   devices     core (probe parsers); model types are shared with everyone
 *   gossip, placement, checkpoint, runner   core + devices model
 *   api         core, devices model, gossip state, fsm state and job spec schemas (the API's contract)
 *   client      core, api, devices model
 *   node        anything (composition root)
 */
const mod = (name) => `^src/${name}/`;
module.exports = {
  forbidden: [
    { name: 'core-imports-nothing', severity: 'error', from: { path: mod('core') }, to: { path: '^src/', pathNot: mod('core') } },
    { name: 'consensus-only-core', severity: 'error', from: { path: mod('consensus') }, to: { path: '^src/', pathNot: [mod('core'), mod('consensus')] } },
    { name: 'devices-only-core', severity: 'error', from: { path: mod('devices') }, to: { path: '^src/', pathNot: [mod('core'), mod('devices')] } },
    {
      name: 'pure-modules-only-core-and-device-model',
      severity: 'error',
      from: { path: '^src/(gossip|placement|checkpoint|runner)/' },
      to: { path: '^src/', pathNot: [mod('core'), '^src/devices/model\\.ts$', '^src/$1/'] },
    },
    { name: 'placement-may-read-gossip-state', severity: 'error', from: { path: '^src/(gossip|checkpoint|runner)/' }, to: { path: mod('placement') } },
    {
      name: 'api-is-a-contract',
      severity: 'error',
      from: { path: mod('api') },
      to: { path: '^src/', pathNot: [mod('core'), mod('api'), '^src/devices/model\\.ts$', '^src/gossip/state\\.ts$', '^src/placement/fsm/state\\.ts$', '^src/placement/spec\\.ts$'] },
    },
    {
      name: 'client-talks-to-the-api-only',
      severity: 'error',
      from: { path: mod('client') },
      to: { path: '^src/', pathNot: [mod('core'), mod('api'), mod('client'), '^src/devices/model\\.ts$'] },
    },
    { name: 'only-node-spawns-or-networks', severity: 'error', from: { path: '^src/(?!node/)' }, to: { path: '^(child_process|node:child_process|node:net|net|libp2p|@libp2p/|node:dgram)' } },
    { name: 'no-circular', severity: 'error', from: {}, to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
