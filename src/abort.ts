/**
 * Waiting that a stop cuts short: both reject with `HALCYON_STOPPED` as soon as a signal aborts, and leave no timer
 * or listener behind.
 */
import { HalcyonError } from './errors.ts';

/** Resolves after `ms`, or rejects with `HALCYON_STOPPED` when `signal` aborts first. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new HalcyonError('HALCYON_STOPPED', 'stopped'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new HalcyonError('HALCYON_STOPPED', 'stopped'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `p`, or a rejection with `HALCYON_STOPPED` as soon as one of the signals aborts. */
export function unlessAborted<T>(p: Promise<T>, signals: Array<AbortSignal | undefined>): Promise<T> {
  const live = signals.filter((s): s is AbortSignal => s !== undefined);
  if (live.some((s) => s.aborted)) return Promise.reject(new HalcyonError('HALCYON_STOPPED', 'stopped'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      done();
      reject(new HalcyonError('HALCYON_STOPPED', 'stopped'));
    };
    const done = () => {
      for (const s of live) s.removeEventListener('abort', onAbort);
    };
    for (const s of live) s.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        done();
        resolve(v);
      },
      (e: unknown) => {
        done();
        reject(e);
      },
    );
  });
}
