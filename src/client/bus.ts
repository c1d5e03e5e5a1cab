/**
 * The client's event bus: its listeners, and `emit`, which calls them in order and returns a promise only when
 * one of them is async (synchronous handlers cost no microtask hop on the hot path). A handler that throws or
 * rejects is reported as `HALCYON_HANDLER_FAILED` and the next one still runs.
 */
import { HalcyonError } from '../errors.ts';
import { RoomEvent } from '../events.ts';
import type { Logger } from '../log.ts';
import type { ClientEvents, Listener } from './options.ts';

/** Listeners by event, and their calling. */
export class EventBus {
  private readonly listeners: { [K in keyof ClientEvents]?: Listener<K>[] } = {};

  constructor(
    private readonly logger: Logger,
    /** Counts handler failures (the metrics). */
    private readonly failed: () => void,
  ) {}

  /** Adds a listener. */
  add<K extends keyof ClientEvents>(event: K, listener: Listener<K>): void {
    ((this.listeners[event] ??= []) as Listener<K>[]).push(listener);
  }

  /** Removes a listener added with {@link add}. */
  remove<K extends keyof ClientEvents>(event: K, listener: Listener<K>): void {
    const list = this.listeners[event] as Listener<K>[] | undefined;
    const i = list?.indexOf(listener) ?? -1;
    if (list && i >= 0) list.splice(i, 1);
  }

  /** Whether `event` has a listener. */
  has(event: keyof ClientEvents): boolean {
    return (this.listeners[event]?.length ?? 0) > 0;
  }

  /**
   * Calls the listeners of `event` in order; returns a promise only if one of them is async. Without listeners,
   * an `error` goes to the logger.
   */
  emit<K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]): Promise<void> | undefined {
    const list = this.listeners[event] as Listener<K>[] | undefined;
    if (!list || list.length === 0) {
      if (event === 'error') this.logger.error(args[0], 'unhandled error event');
      return undefined;
    }
    // A listener removing itself (once) must not make the next one be skipped.
    const snapshot = list.length === 1 ? list : [...list];
    for (let k = 0; k < snapshot.length; k++) {
      let r: unknown;
      try {
        r = snapshot[k]!(...args);
      } catch (err) {
        this.handlerFailed(err, event, undefined, args[0]);
        continue;
      }
      if (isPromise(r)) return this.emitRest(event, snapshot, k, r, args);
    }
    return undefined;
  }

  /** Emits `error` without waiting for its handlers. */
  emitError(err: HalcyonError): void {
    const r = this.emit('error', err);
    if (r) r.catch(() => {});
  }

  /** Reports a failed handler as `HALCYON_HANDLER_FAILED` (with the event's room and ID when known). */
  handlerFailed(err: unknown, event: string, roomId?: string, subject?: unknown): void {
    if (event === 'error') {
      // An error handler that fails must not recurse.
      this.logger.error(err, 'the error handler threw');
      return;
    }
    const details: { cause: unknown; roomId?: string; eventId?: string } = { cause: err };
    if (subject instanceof RoomEvent) {
      details.roomId = subject.roomId;
      details.eventId = subject.eventId;
    } else if (subject && typeof (subject as { roomId?: unknown }).roomId === 'string') details.roomId = (subject as { roomId: string }).roomId;
    else if (roomId) details.roomId = roomId;
    const msg = err instanceof Error ? err.message : String(err);
    this.failed();
    this.emitError(new HalcyonError('HALCYON_HANDLER_FAILED', `a '${event}' handler failed: ${msg}`, details));
  }

  private async emitRest<K extends keyof ClientEvents>(event: K, list: Listener<K>[], k: number, pending: Promise<unknown>, args: ClientEvents[K]): Promise<void> {
    try {
      await pending;
    } catch (err) {
      this.handlerFailed(err, event, undefined, args[0]);
    }
    for (let j = k + 1; j < list.length; j++) {
      try {
        await list[j]!(...args);
      } catch (err) {
        this.handlerFailed(err, event, undefined, args[0]);
      }
    }
  }
}

/** Whether `v` is a promise (a thenable). */
export function isPromise(v: unknown): v is Promise<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

/** Runs `done` once `r` settles (at once if it is not a promise), keeping a rejection for the dispatcher. */
export function settle(r: unknown, done: () => void): unknown {
  if (!isPromise(r)) {
    done();
    return r;
  }
  return r.finally(done);
}
