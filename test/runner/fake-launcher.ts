/**
 * An in-memory ProcessLauncher: each launch is recorded, and the test decides when the process
 * starts, what signals do, and how it exits.
 */
import type { LaunchCallbacks, LaunchRequest, ProcessExit, ProcessHandle, ProcessLauncher, StopSignal } from '../../src/runner/index.ts';

export class FakeProcess {
  readonly request: LaunchRequest;
  readonly signals: StopSignal[] = [];
  readonly #callbacks: LaunchCallbacks;
  pid: number | null = null;
  exit: ProcessExit | null = null;

  constructor(request: LaunchRequest, callbacks: LaunchCallbacks) {
    this.request = request;
    this.#callbacks = callbacks;
  }

  get alive(): boolean {
    return this.pid !== null && this.exit === null;
  }

  start(pid: number): void {
    this.pid = pid;
    this.#callbacks.onStart(pid);
  }

  end(exit: ProcessExit): void {
    this.exit = exit;
    this.#callbacks.onExit(exit);
  }

  /** Misbehaving launcher: callbacks again after the end. */
  replay(): void {
    if (this.pid !== null) this.#callbacks.onStart(this.pid);
    if (this.exit !== null) this.#callbacks.onExit(this.exit);
  }
}

export class FakeLauncher implements ProcessLauncher {
  readonly launched: FakeProcess[] = [];
  /** Called on every signal, e.g. to end the process the way a real one would. */
  onSignal: ((proc: FakeProcess, sig: StopSignal) => void) | null = null;

  launch(request: LaunchRequest, callbacks: LaunchCallbacks): ProcessHandle {
    const proc = new FakeProcess(request, callbacks);
    this.launched.push(proc);
    return {
      signal: (sig) => {
        if (proc.exit !== null) return;
        proc.signals.push(sig);
        this.onSignal?.(proc, sig);
      },
    };
  }

  get last(): FakeProcess {
    const p = this.launched.at(-1);
    if (!p) throw new Error('nothing launched');
    return p;
  }

  /** Processes started and not yet exited. */
  get live(): FakeProcess[] {
    return this.launched.filter((p) => p.alive);
  }
}
