/**
 * The undici door: the only module that imports undici. It loads the parts src/http.ts uses (its connection-pooling
 * agent, the request API and its error classes) from the files that hold them, and keeps undici's HTTP/2 connector
 * from loading node:http2 until something asks for HTTP/2, which Halcyon never does.
 */
import { createRequire, Module } from 'node:module';
import type * as Undici from 'undici';
import { lazyModule, resolveModule } from './lazy-require.ts';

/** undici's types, for src/http.ts (a type import loads nothing). */
export type * as Undici from 'undici';

/** What Halcyon uses of undici: its connection-pooling agent, the request API and its error classes. */
export interface UndiciParts {
  Agent: typeof Undici.Agent;
  errors: typeof Undici.errors;
  request: (opts: Undici.Dispatcher.RequestOptions & { dispatcher: Undici.Dispatcher }) => Promise<Undici.Dispatcher.ResponseData>;
}

/** The files of undici that hold {@link UndiciParts}, relative to its index. */
export const UNDICI_FILES = { agent: './lib/dispatcher/agent.js', request: './lib/api/api-request.js', errors: './lib/core/errors.js' } as const;

/** undici's HTTP/2 connector, relative to its index (see {@link deferHttp2}). */
const H2_CONNECTOR = './lib/dispatcher/client-h2.js';

/**
 * undici's agent, request API and errors, loaded from the files that hold them ({@link UNDICI_FILES}). Its index
 * also loads fetch, WebSocket, EventSource, its caches, interceptors and mocks: in a worker that was 57 of the
 * 70 ms its module took to load (on the critical path of `run()`: the first /sync waits for the sync worker) and
 * +14 MB of RSS per thread. An undici whose files moved is loaded whole instead (the same parts, slower).
 */
export function loadUndici(files: Record<keyof typeof UNDICI_FILES, string> = UNDICI_FILES): UndiciParts {
  try {
    const from = createRequire(resolveModule('undici'));
    deferHttp2(from);
    const Agent = from(files.agent) as typeof Undici.Agent;
    const api = from(files.request) as (this: Undici.Dispatcher, opts: Undici.Dispatcher.RequestOptions) => Promise<Undici.Dispatcher.ResponseData>;
    const errors = from(files.errors) as typeof Undici.errors;
    if (typeof Agent !== 'function' || typeof api !== 'function' || typeof errors?.HeadersTimeoutError !== 'function') throw new Error('undici layout changed');
    return { Agent, errors, request: (opts) => api.call(opts.dispatcher, opts) };
  } catch {
    const whole = lazyModule<typeof Undici>('undici')();
    return { Agent: whole.Agent, errors: whole.errors, request: (opts) => opts.dispatcher.request(opts) };
  }
}

/**
 * undici's client requires its HTTP/2 connector when it loads, and the connector requires node:http2, which loads
 * tls: ~5 MB of RSS on every thread that loads undici (main, the sync worker, the crypto worker). The connector
 * is only called on a connection that negotiated HTTP/2, which takes an agent made with `allowH2`; Halcyon's never
 * are. So, unless undici's client is loaded already, the connector's entry in the module cache is a stand-in that
 * loads the real one at its first call and forwards to it: another user of this undici copy in the process (one
 * that allows HTTP/2) gets the same connector, loaded when first needed. An undici without that file is left as is.
 */
function deferHttp2(from: NodeJS.Require): void {
  let path: string;
  try {
    path = from.resolve(H2_CONNECTOR);
  } catch {
    return;
  }
  if (from.cache[path] !== undefined) return;
  const standIn = new Module(path);
  standIn.filename = path;
  standIn.loaded = true;
  let real: ((...args: unknown[]) => unknown) | undefined;
  standIn.exports = function connectH2(this: unknown, ...args: unknown[]): unknown {
    if (real === undefined) {
      // Out of the cache first, so that this require loads the file rather than returning the stand-in.
      if (from.cache[path] === standIn) delete from.cache[path];
      real = from(path) as (...args: unknown[]) => unknown;
    }
    return real.apply(this, args);
  };
  from.cache[path] = standIn;
}
