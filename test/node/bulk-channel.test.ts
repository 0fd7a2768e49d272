/**
 * Bulk channels (src/node/bulk-channel.ts) over real loopback sockets: tickets, records both
 * ways, and what a listener does with sockets that present no valid ticket or bytes that do
 * not authenticate.
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulkListener, TICKET_BYTES, dialBulk, type BulkTicket, type ByteChannel } from '../../src/node/bulk-channel.ts';
import { recordingLogger, type LogLine } from '../support/logger.ts';

interface Served {
  channel: ByteChannel;
  peer: string;
}

/** Everything a channel delivers, until it ends or closes. */
function collect(channel: ByteChannel): Promise<{ bytes: Buffer; ended: boolean; error: Error | undefined }> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let ended = false;
    channel.listen({
      data: (b) => parts.push(Buffer.from(b)),
      end: () => {
        ended = true;
        resolve({ bytes: Buffer.concat(parts), ended, error: undefined });
      },
      close: (err) => resolve({ bytes: Buffer.concat(parts), ended, error: err }),
      drain: () => {},
    });
  });
}

const logs: LogLine[] = [];
const served: Served[] = [];
let waiting: ((s: Served) => void) | undefined;
let listener: BulkListener;

function nextServed(): Promise<Served> {
  const s = served.shift();
  if (s !== undefined) return Promise.resolve(s);
  return new Promise((resolve) => {
    waiting = resolve;
  });
}

beforeAll(async () => {
  listener = new BulkListener({
    host: '127.0.0.1',
    port: 0,
    log: recordingLogger(logs),
    handshakeTimeoutMs: 300,
    onChannel: (channel, peer) => {
      const w = waiting;
      waiting = undefined;
      if (w !== undefined) w({ channel, peer });
      else served.push({ channel, peer });
    },
  });
  await listener.start();
});

afterAll(async () => {
  await listener.stop();
});

/** A raw socket to the listener that has sent `bytes`. */
async function rawSocket(bytes: Uint8Array): Promise<net.Socket> {
  const s = net.connect({ host: '127.0.0.1', port: listener.port });
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  s.on('error', () => {});
  s.write(bytes);
  return s;
}

function closed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) resolve();
    else s.once('close', () => resolve());
  });
}

const refusals = (): string[] => logs.filter((l) => l.msg === 'bulk socket refused').map((l) => String(l.fields.why));

describe('bulk channels', () => {
  it('carries bytes both ways in order, large and small writes, and ends cleanly', async () => {
    const t = listener.issue('peer-a')!;
    expect(t.port).toBe(listener.port);
    const dialer = await dialBulk('127.0.0.1', t, 2_000);
    const server = await nextServed();
    expect(server.peer).toBe('peer-a');
    expect(dialer.kind).toBe('bulk');

    const big = randomBytes(5 * 1024 * 1024 + 17);
    const atServer = collect(server.channel);
    const atDialer = collect(dialer);
    // many small writes in one go, then one big one spanning several records
    for (let i = 0; i < 100; i++) dialer.send(Buffer.from([i]));
    dialer.send(big);
    server.channel.send(Buffer.from('reply'));
    await dialer.close();
    await server.channel.close();
    const got = await atServer;
    expect(got.ended).toBe(true);
    expect(got.bytes.length).toBe(100 + big.length);
    expect([...got.bytes.subarray(0, 100)]).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(createHash('sha256').update(got.bytes.subarray(100)).digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
    const back = await atDialer;
    expect(back.bytes.toString()).toBe('reply');
  });

  it('takes a ticket once: a second socket with it is refused', async () => {
    const t = listener.issue('peer-b')!;
    const first = await dialBulk('127.0.0.1', t, 2_000);
    (await nextServed()).channel.abort(new Error('done'));
    first.abort(new Error('done'));
    await expect(dialBulk('127.0.0.1', t, 2_000)).rejects.toThrow();
    expect(refusals()).toContain('unknown ticket');
  });

  it('refuses an expired ticket, an unknown one, and a socket that sends no ticket in time', async () => {
    const shortLived = new BulkListener({ host: '127.0.0.1', port: 0, log: recordingLogger(logs), ticketTtlMs: 1, onChannel: () => {} });
    await shortLived.start();
    try {
      const t = shortLived.issue('peer-c')!;
      await new Promise((r) => setTimeout(r, 20));
      await expect(dialBulk('127.0.0.1', t, 2_000)).rejects.toThrow();
      expect(refusals()).toContain('expired ticket');
    } finally {
      await shortLived.stop();
    }
    const forged: BulkTicket = { port: listener.port, ticket: randomBytes(TICKET_BYTES), secret: randomBytes(32) };
    await expect(dialBulk('127.0.0.1', forged, 2_000)).rejects.toThrow();

    const silent = await rawSocket(new Uint8Array(0));
    await closed(silent);
    expect(refusals()).toContain('no ticket in time');
  });

  it('a dialer that holds the ticket but not the secret gets no channel: its listener hello does not authenticate', async () => {
    const t = listener.issue('peer-d')!;
    const wrongSecret = { ...t, secret: randomBytes(32) };
    await expect(dialBulk('127.0.0.1', wrongSecret, 2_000)).rejects.toThrow(/did not authenticate/);
    // the listener's side of that socket gets nothing: the dialer dropped it at the hello
    const s = await nextServed();
    const outcome = await collect(s.channel);
    expect(outcome.bytes.length).toBe(0);
  });

  it('aborts a channel on a record that does not authenticate, or one over the size limit', async () => {
    // a record under the right ticket but made with the wrong key
    const t = listener.issue('peer-e')!;
    const s = await rawSocket(Buffer.concat([Buffer.from(t.ticket), Buffer.from([0, 0, 0, 4]), randomBytes(4 + 16)]));
    const served1 = await nextServed();
    const o1 = await collect(served1.channel);
    expect(o1.error?.message).toMatch(/did not authenticate/);
    expect(o1.bytes.length).toBe(0);
    await closed(s);

    const t2 = listener.issue('peer-e')!;
    const s2 = await rawSocket(Buffer.concat([Buffer.from(t2.ticket), Buffer.from([0xff, 0xff, 0xff, 0xff])]));
    const o2 = await collect((await nextServed()).channel);
    expect(o2.error?.message).toMatch(/over the .*-byte limit/);
    await closed(s2);
  });

  it('refuses to issue tickets past its limit', async () => {
    const few = new BulkListener({ host: '127.0.0.1', port: 0, log: recordingLogger([]), maxTickets: 2, onChannel: () => {} });
    await few.start();
    try {
      expect(few.issue('p')).toBeDefined();
      expect(few.issue('p')).toBeDefined();
      expect(few.issue('p')).toBeUndefined();
    } finally {
      await few.stop();
    }
  });
});
