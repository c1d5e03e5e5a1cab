/**
 * The task-pool door: the only module that imports piscina. CPU work that must stay off the main thread (image
 * resizing, blurhash, attachment encryption and hashing) runs as tasks on a small pool of worker threads.
 *
 * Both sides live here: {@link TaskPool} on the calling thread, {@link serveTasks} in a worker entry. Results and
 * errors cross as plain data (`{ ok, value }` or a {@link WireError}), so a task's `HalcyonError` keeps its code.
 */
import { availableParallelism } from 'node:os';
import type { Piscina } from 'piscina';
import { workerUrl } from './entries.ts';
import { fromWireError, HalcyonError, toWireError, type WireError } from './errors.ts';
import { lazyModule } from './lazy-require.ts';

/** piscina, loaded with the first pool or task (a bot that never resizes or encrypts media never loads it). */
const piscina = lazyModule<typeof import('piscina')>('piscina');

/** What a task handler returns: its result and the ArrayBuffers inside it to transfer (not copy) back. */
export interface TaskResult<R> {
  value: R;
  transfer?: ArrayBuffer[];
}

type Outcome<R> = { ok: true; value: R } | { ok: false; error: WireError };


/**
 * A lazily started pool running the default export of `workers/<name>` (made with {@link serveTasks}).
 *
 * Invariants: no thread starts before the first {@link run}; after {@link destroy} every pending and later run
 * rejects with `HALCYON_STOPPED`; a task's thrown `HalcyonError` rejects `run` with the same code; a worker that
 * dies mid-task rejects it with `HALCYON_ACTOR_DIED`.
 */
export class TaskPool {
  private pool: Piscina | null = null;
  private destroyed = false;

  constructor(private readonly name: string) {}

  /** Runs one task; the ArrayBuffers in `transfer` move to the worker (the caller must not use them afterwards). */
  async run<R>(task: object, transfer: ArrayBuffer[] = []): Promise<R> {
    if (this.destroyed) throw new HalcyonError('HALCYON_STOPPED', `the ${this.name} pool was closed`);
    this.pool ??= new (piscina().Piscina)({
      filename: workerUrl(this.name).href,
      // Piscina's default parks idle workers in Atomics.wait, which blocks their event loop between tasks.
      atomics: 'disabled',
      minThreads: 0,
      maxThreads: Math.max(1, Math.min(4, availableParallelism() - 1)),
      idleTimeout: 30_000,
    });
    let out: Outcome<R>;
    try {
      out = await this.pool.run(task, { transferList: transfer });
    } catch (err) {
      if (this.destroyed) throw new HalcyonError('HALCYON_STOPPED', `the ${this.name} pool was closed while a task ran`, { cause: err });
      throw new HalcyonError('HALCYON_ACTOR_DIED', `a ${this.name} pool worker failed: ${(err as Error).message}`, { cause: err });
    }
    if (!out.ok) throw fromWireError(out.error);
    return out.value;
  }

  /** Ends the threads; pending tasks reject with `HALCYON_STOPPED`. */
  async destroy(): Promise<void> {
    this.destroyed = true;
    const pool = this.pool;
    this.pool = null;
    await pool?.destroy();
  }
}

/**
 * In a worker entry: wraps a task handler as the pool's default export. Errors become wire errors (a value that is
 * not a `HalcyonError` becomes `HALCYON_INTERNAL`); the result's `transfer` buffers are moved, not copied.
 */
export function serveTasks<T, R>(handler: (task: T) => Promise<TaskResult<R>> | TaskResult<R>): (task: T) => Promise<unknown> {
  return async (task) => {
    try {
      const { value, transfer = [] } = await handler(task);
      const outcome: Outcome<R> = { ok: true, value };
      // Piscina's transfer protocol: an object naming its transferables and its value, marked by move().
      const { move, Piscina } = piscina();
      return move({
        get [Piscina.transferableSymbol]() {
          return transfer;
        },
        get [Piscina.valueSymbol]() {
          return outcome;
        },
      } as unknown as ArrayBuffer);
    } catch (err) {
      return { ok: false, error: toWireError(err, 'HALCYON_INTERNAL') } satisfies Outcome<R>;
    }
  };
}
