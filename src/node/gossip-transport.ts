/**
 * The gossip layer's transport over libp2p: gossipsub for broadcasts, `/fabric/sync/1` for
 * anti-entropy pulls, `/fabric/swim/1` for direct and indirect probes.
 */
import { z } from 'zod';
import { MAX_FRAMES_PER_PULL } from '../gossip/index.ts';
import type { GossipTransport, PullDigest } from '../gossip/ports.ts';
import { errorMessage, type Logger } from '../core/index.ts';
import type { FabricHost } from './host.ts';
import { serveProtocol, withStream } from './wire.ts';

export const SYNC_PROTOCOL = '/fabric/sync/1';
export const SWIM_PROTOCOL = '/fabric/swim/1';
const MAX_SYNC_FRAME = 320 * 1024;
const MAX_SYNC_FRAMES = 4096;
const MAX_SWIM_FRAME = 1024;
/** A pull request lists what the puller holds: ~60 bytes per peer. */
const MAX_SYNC_REQUEST_FRAME = 64 * MAX_FRAMES_PER_PULL + 1024;

const SyncRequest = z.object({
  t: z.literal('pull'),
  have: z
    .array(z.tuple([z.string().min(1).max(128), z.number().int().min(0), z.number().int().min(0)]))
    .max(MAX_FRAMES_PER_PULL),
});
const SyncReply = z.discriminatedUnion('t', [
  z.object({ t: z.literal('frame'), b: z.instanceof(Uint8Array) }),
  z.object({ t: z.literal('end') }),
]);
const SwimRequest = z.discriminatedUnion('t', [
  z.object({ t: z.literal('ping') }),
  z.object({ t: z.literal('ping-req'), target: z.string().min(1).max(128) }),
]);
const SwimReply = z.object({ t: z.literal('ack'), ok: z.boolean() });

export function gossipTopic(fabricId: string): string {
  return `/fabric/${fabricId}/nodes/1`;
}

export function createGossipTransport(host: FabricHost, fabricId: string, log: Logger): GossipTransport {
  const topic = gossipTopic(fabricId);
  return {
    async broadcast(frame) {
      await host.services.pubsub.publish(topic, frame);
    },
    async pull(peerId, have, signal) {
      return withStream(host, peerId, SYNC_PROTOCOL, MAX_SYNC_FRAME, signal, async (s) => {
        await s.write({ t: 'pull', have }, signal);
        const frames: Uint8Array[] = [];
        for (;;) {
          const reply = await s.read(SyncReply, 'sync reply', signal);
          if (reply.t === 'end') return frames;
          if (frames.length >= MAX_SYNC_FRAMES) throw new Error(`sync reply from ${peerId} exceeds ${MAX_SYNC_FRAMES} frames`);
          frames.push(reply.b);
        }
      });
    },
    async probe(target, signal) {
      try {
        return await withStream(host, target, SWIM_PROTOCOL, MAX_SWIM_FRAME, signal, async (s) => {
          await s.write({ t: 'ping' }, signal);
          return (await s.read(SwimReply, 'swim ack', signal)).ok;
        });
      } catch (err) {
        if (!signal.aborted) log.debug({ target, err: errorMessage(err) }, 'probe failed');
        return false;
      }
    },
    async probeVia(helper, target, signal) {
      try {
        return await withStream(host, helper, SWIM_PROTOCOL, MAX_SWIM_FRAME, signal, async (s) => {
          await s.write({ t: 'ping-req', target }, signal);
          return (await s.read(SwimReply, 'swim ack', signal)).ok;
        });
      } catch (err) {
        if (!signal.aborted) log.debug({ helper, target, err: errorMessage(err) }, 'indirect probe failed');
        return false;
      }
    },
  };
}

export interface GossipHandlers {
  pullFrames(have: PullDigest): Uint8Array[];
  probeFor(target: string, signal: AbortSignal): Promise<boolean>;
}

/** Serves the sync and swim protocols for other peers. */
export async function serveGossipProtocols(host: FabricHost, handlers: GossipHandlers, log: Logger, probeTimeoutMs: number): Promise<void> {
  await serveProtocol(host, SYNC_PROTOCOL, { maxFrameBytes: MAX_SYNC_REQUEST_FRAME, log }, async (s) => {
    const { have } = await s.read(SyncRequest, 'sync request');
    for (const b of handlers.pullFrames(have)) await s.write({ t: 'frame', b });
    await s.write({ t: 'end' });
  });
  await serveProtocol(host, SWIM_PROTOCOL, { maxFrameBytes: MAX_SWIM_FRAME, log, maxInboundStreams: 64 }, async (s) => {
    const req = await s.read(SwimRequest, 'swim request');
    if (req.t === 'ping') {
      await s.write({ t: 'ack', ok: true });
      return;
    }
    const ok = await handlers.probeFor(req.target, AbortSignal.timeout(probeTimeoutMs));
    await s.write({ t: 'ack', ok });
  });
}
