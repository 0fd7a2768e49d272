/**
 * What the daemon (job-launcher.ts) and a job's supervisor (job-shim.ts) say to each other, one
 * JSON object per line: the daemon writes the start request and then signals to the supervisor's
 * stdin; the supervisor writes `started` and `exit` to its stdout. Both sides check every line.
 */
import { z } from 'zod';
import type { LaunchRequest, ProcessExit } from '../runner/launcher.ts';

/** A start request carries the whole environment; nothing sane is larger. */
export const MAX_LINE_BYTES = 4 * 1024 * 1024;

const LaunchRequestSchema = z.object({
  jobId: z.string().min(1).max(256),
  attempt: z.number().int().min(1),
  argv: z.array(z.string().max(128 * 1024)).min(1).max(65_536),
  cwd: z.string().min(1).max(4096),
  env: z.record(z.string(), z.string()),
  logDir: z.string().min(1).max(4096),
  logMaxBytes: z.number().int().min(1),
}) satisfies z.ZodType<LaunchRequest>;

export const StartMessageSchema = z.object({
  type: z.literal('start'),
  request: LaunchRequestSchema,
  /** Put in the job's environment as FABRIC_RUN_TOKEN (see job-procs.ts). */
  token: z.string().min(1).max(256),
  /**
   * The daemon's lease on the job: without a `renew` this long, the supervisor kills the job. A
   * daemon renews only while it is in touch with the fabric's leader, so a frozen (SIGSTOP) or
   * cut-off daemon's job ends on time even though the daemon cannot act.
   */
  leaseMs: z.number().int().min(100).max(3_600_000).optional(),
});
export type StartMessage = z.infer<typeof StartMessageSchema>;

export const SignalMessageSchema = z.object({ type: z.literal('signal'), signal: z.enum(['SIGTERM', 'SIGKILL']) });
export type SignalMessage = z.infer<typeof SignalMessageSchema>;

/** Extends the lease to `validForMs` from now (never beyond the lease given at start). */
export const RenewMessageSchema = z.object({ type: z.literal('renew'), validForMs: z.number().int().min(0).max(3_600_000) });

export const ToSupervisorSchema = z.discriminatedUnion('type', [StartMessageSchema, SignalMessageSchema, RenewMessageSchema]);
export type ToSupervisor = z.infer<typeof ToSupervisorSchema>;

const ProcessExitSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('exited'), code: z.number().int() }),
  z.object({ kind: z.literal('signaled'), signal: z.string().max(32) }),
  z.object({ kind: z.literal('spawn-failed'), message: z.string().max(4096) }),
  z.object({ kind: z.literal('supervisor-lost'), message: z.string().max(4096) }),
]) satisfies z.ZodType<ProcessExit>;

export const FromSupervisorSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('started'), pid: z.number().int().min(2) }),
  z.object({ type: z.literal('exit'), exit: ProcessExitSchema }),
]);
export type FromSupervisor = z.infer<typeof FromSupervisorSchema>;

export function encodeLine(message: ToSupervisor | FromSupervisor): string {
  return `${JSON.stringify(message)}\n`;
}

/**
 * Splits a byte stream into lines and parses each with `schema`. A line that is too long or
 * not valid is reported through `onBad` and skipped, never thrown.
 */
export function lineReader<T>(schema: z.ZodType<T>, onMessage: (m: T) => void, onBad: (why: string) => void): (chunk: Buffer) => void {
  let pending = '';
  let skipping = false;
  return (chunk) => {
    pending += chunk.toString('utf8');
    for (;;) {
      const nl = pending.indexOf('\n');
      if (nl < 0) {
        if (pending.length > MAX_LINE_BYTES) {
          onBad(`line longer than ${MAX_LINE_BYTES} bytes`);
          pending = '';
          skipping = true;
        }
        return;
      }
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (skipping) {
        skipping = false;
        continue;
      }
      if (line.trim() === '') continue;
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch {
        onBad(`not JSON: ${line.slice(0, 200)}`);
        continue;
      }
      const parsed = schema.safeParse(raw);
      if (!parsed.success) {
        onBad(`unexpected message: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
        continue;
      }
      onMessage(parsed.data);
    }
  };
}
