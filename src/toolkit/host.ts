/**
 * What the toolkit needs of a client beyond its public API, kept to a few lines: when the current run stops (to
 * end waits and timers), the transport (for the delayed-events endpoints, which have no public method), where
 * failures go (the client's `error` event), and {@link inHandlerRun}, which gives a command or a scheduled send
 * transaction IDs of its own that a run after a crash derives again (no duplicates).
 */
import type { ClientCore } from '../client/core.ts';
import type { HalcyonError } from '../errors.ts';
import type { Message } from '../events.ts';
import type { MatrixHttp } from '../http.ts';
import type { Logger } from '../log.ts';
import { beginHandlerRun, laneScope } from '../outbox.ts';

/** The client's internals the toolkit uses; see the module comment. */
export interface ToolkitHost {
  readonly dataDir: string;
  readonly logger: Logger;
  /** Whether end-to-end encryption is on. */
  readonly encryption: boolean;
  /** Aborted when the current run stops (the client's lifecycle signal; a new run has a new one). */
  stopSignal(): AbortSignal;
  /** The transport of the running client (throws `HALCYON_NOT_RUNNING` otherwise). */
  http(): MatrixHttp;
  /** A command handler failed: emitted as `HALCYON_HANDLER_FAILED` with the command's room and event. */
  commandFailed(err: unknown, command: Message): void;
  /** Emits `error`. */
  report(err: HalcyonError): void;
}

/** The host of the client whose core this is. */
export function toolkitHost(core: ClientCore): ToolkitHost {
  return {
    dataDir: core.opts.dataDir,
    logger: core.opts.logger,
    encryption: core.opts.encryption !== null,
    stopSignal: () => core.lifecycle.signal,
    http: () => core.needHttp(),
    commandFailed: (err, command) => core.bus.handlerFailed(err, 'command', undefined, command),
    report: (err) => core.bus.emitError(err),
  };
}

/**
 * Runs `fn` as a handler run of its own, keyed `key`: every send it makes (after awaits too) gets a transaction
 * ID derived from `key` and its position, as sends of an event's handlers do, so the same work done again after a
 * crash makes the same requests. Keys must not be event IDs (the event's own handlers use those).
 */
export function inHandlerRun<T>(key: string, fn: () => T): T {
  return laneScope(() => {
    beginHandlerRun(key);
    return fn();
  });
}
