/** The crypto actor's one serial queue of OlmMachine calls (see actor.ts). */
import { HalcyonError } from '../errors.ts';

/** Runs tasks one at a time; `high` tasks go before queued `low` ones. After {@link shut}, tasks are refused. */
export class SerialQueue {
  private readonly high: Array<() => Promise<void>> = [];
  private readonly low: Array<() => Promise<void>> = [];
  private running = false;
  private shutErr: HalcyonError | null = null;

  /** Runs `fn` after the tasks queued before it (of its priority or higher); settles as `fn` does. */
  run<T>(fn: () => T | Promise<T>, priority: 'high' | 'low' = 'low'): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      (priority === 'high' ? this.high : this.low).push(async () => {
        // A task queued before the machine closed must not touch it after (wasm: a null pointer).
        if (this.shutErr) return reject(this.shutErr);
        // Awaited inside try: wasm methods may throw synchronously instead of rejecting.
        try {
          resolve(await fn());
        } catch (err) {
          reject(err);
        }
      });
      void this.pump();
    });
  }

  /** Runs `last` as the final task; every task after it is rejected with `HALCYON_STOPPED`. */
  shut(last: () => void): Promise<void> {
    return this.run(() => {
      last();
      this.shutErr = new HalcyonError('HALCYON_STOPPED', 'the crypto actor was closed');
    }, 'low');
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let task = this.high.shift() ?? this.low.shift(); task; task = this.high.shift() ?? this.low.shift()) await task();
    } finally {
      this.running = false;
    }
  }
}
