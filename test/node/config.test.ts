/** The daemon's config file: defaults for fields older data dirs lack, and where bulk channels listen. */
import { describe, expect, it } from 'vitest';
import { DaemonConfigSchema, bulkListenOf, type DaemonConfig } from '../../src/node/config.ts';

const base = {
  v: 1,
  fabricId: 'fab-test',
  listen: ['/ip4/0.0.0.0/tcp/7700'],
  apiPort: 7701,
  labels: { spot: false, extra: {} },
  bootstrap: [],
  createdAtMs: 1,
};

function config(extra: Record<string, unknown>): DaemonConfig {
  return DaemonConfigSchema.parse({ ...base, ...extra });
}

describe('daemon config', () => {
  it('a config written before bulk channels existed reads with bulk channels on, on any free port', () => {
    const c = DaemonConfigSchema.parse(base);
    expect(c.bulkPort).toBe(0);
    expect(bulkListenOf(c)).toEqual({ host: '0.0.0.0', port: 0 });
  });

  it('bulk channels listen on the IP of the first TCP listen address that has one, or not at all', () => {
    expect(bulkListenOf(config({ listen: ['/dns4/example.com/tcp/7700', '/ip6/::1/tcp/7700'], bulkPort: 7702 }))).toEqual({ host: '::1', port: 7702 });
    expect(bulkListenOf(config({ listen: ['/ip4/10.0.0.5/udp/7700/quic-v1', '/ip4/10.0.0.5/tcp/7700'] }))).toEqual({ host: '10.0.0.5', port: 0 });
    expect(bulkListenOf(config({ listen: ['/dns4/example.com/tcp/7700'] }))).toBeUndefined();
    expect(bulkListenOf(config({ bulkPort: 'off' }))).toBeUndefined();
  });

  it('refuses a bulk port that is not a port or "off"', () => {
    expect(() => config({ bulkPort: 70_000 })).toThrow();
    expect(() => config({ bulkPort: 'on' })).toThrow();
  });
});
