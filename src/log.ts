/** The logger interface (pino-compatible) and the default console logger. */

/** A pino-compatible logger: each method takes a message, or an object then a message. */
export interface Logger {
  /** Detail for debugging (Halcyon logs little at this level). */
  debug(obj: unknown, msg?: string): void;
  /** Things worth knowing that need no action (an invalid edit ignored, an event not available). */
  info(obj: unknown, msg?: string): void;
  /** Problems Halcyon rides out (a failed poll, sends waiting, actors restarted, an undecryptable message). */
  warn(obj: unknown, msg?: string): void;
  /** Problems that need someone: an error event nobody listens to, a handler failure without a listener. */
  error(obj: unknown, msg?: string): void;
}

const LEVELS = ['debug', 'info', 'warn', 'error'] as const;

/** A logger writing one line per record to stderr, at `level` and above. Tokens never reach it: none is logged. */
export function consoleLogger(level: (typeof LEVELS)[number] = 'warn'): Logger {
  const min = LEVELS.indexOf(level);
  const make = (l: (typeof LEVELS)[number]) => (obj: unknown, msg?: string) => {
    if (LEVELS.indexOf(l) < min) return;
    const text = typeof obj === 'string' ? obj : `${msg ?? ''} ${describe(obj)}`.trim();
    process.stderr.write(`[halcyon] ${l}: ${text}\n`);
  };
  return { debug: make('debug'), info: make('info'), warn: make('warn'), error: make('error') };
}

function describe(obj: unknown): string {
  if (obj instanceof Error) return `${(obj as { code?: string }).code ?? obj.name}: ${obj.message}${causeStack(obj)}`;
  try {
    return JSON.stringify(obj);
  } catch {
    return String(obj);
  }
}

/**
 * The stack of the first cause that is not one of Halcyon's own coded errors (a handler's exception, say), on the
 * lines after the message: a handler failure without its file and line cannot be found.
 */
function causeStack(err: Error): string {
  for (let c: unknown = err.cause, depth = 0; c !== undefined && depth < 5; c = (c as Error).cause, depth++) {
    if (!(c instanceof Error)) return `\n  caused by: ${String(c)}`;
    if ((c as { code?: unknown }).code === undefined || !String((c as { code?: unknown }).code).startsWith('HALCYON_')) {
      return `\n  caused by: ${c.stack ?? `${c.name}: ${c.message}`}`;
    }
  }
  return '';
}
