/**
 * Coded errors. Every error Halcyon raises or emits carries a `code` from {@link ERROR_CODES}, because errors
 * cross worker threads as plain data and `instanceof` does not survive that trip; match on `code`.
 */

/** Every error code Halcyon uses, with a one-line meaning; the README lists the same table (a test checks it). */
export const ERROR_CODES = {
  HALCYON_INVALID_ARGUMENT: 'A method was called with an argument of the wrong shape or value.',
  HALCYON_INVALID_TOKEN: 'The token string is not a Halcyon token (truncated, altered, or from something else).',
  HALCYON_UNKNOWN_TOKEN: 'The homeserver rejected the access token (M_UNKNOWN_TOKEN or 401): log in again.',
  HALCYON_LOGIN_FAILED: 'The homeserver refused the login (wrong user or password, or login type not offered).',
  HALCYON_HTTP: 'The request failed at the transport level (connection refused or reset, DNS, TLS).',
  HALCYON_TIMEOUT: 'A request or long-poll passed its client-side deadline.',
  HALCYON_MATRIX: 'The homeserver answered with a Matrix error; see `errcode` and `status`.',
  HALCYON_RATE_LIMITED: 'The homeserver kept answering 429 after the allowed retries.',
  HALCYON_BAD_RESPONSE: 'The homeserver answered with a body that is not the JSON the spec describes.',
  HALCYON_REDIRECT: 'The homeserver answered with a redirect; Halcyon never follows one with the token attached.',
  HALCYON_BAD_SYNC: 'A /sync body was malformed (not JSON, truncated, wrong shape); it was skipped and retried.',
  HALCYON_BAD_EVENT: 'An event in a /sync body was malformed (not an object, missing or mistyped fields); it was skipped.',
  HALCYON_HANDLER_FAILED: 'A handler threw or rejected; the bot keeps running. The original error is `cause`.',
  HALCYON_ACTOR_DIED: 'A worker thread exited; calls pending on it were rejected.',
  HALCYON_ACTOR_TIMEOUT: 'A call to an actor did not settle within its deadline.',
  HALCYON_NOT_RUNNING: 'The method needs a running client (call `run(token)` first).',
  HALCYON_ALREADY_RUNNING: '`run` was called on a client that is already running.',
  HALCYON_STOPPED: 'The client was stopped while the call was pending.',
  HALCYON_RESTARTING: 'The actors are restarting after a worker died or stalled; ask again in a few seconds (sends wait by themselves).',
  HALCYON_STORE: 'The data directory or its SQLite store could not be opened, read, or written.',
  HALCYON_STORE_MISMATCH: 'The data directory belongs to another user or homeserver than the token.',
  HALCYON_UNSUPPORTED_RUNTIME: 'Halcyon cannot run here: it needs Node.js >= 22.13, and `import` (it is an ES module; `require()` is refused).',
  HALCYON_INTERNAL: 'An unexpected error inside Halcyon (a bug); the message says where it happened.',
  HALCYON_ATTACHMENT_INVALID: 'The `file` info of an encrypted attachment is malformed (version, algorithm, key, IV or hash missing or wrong).',
  HALCYON_ATTACHMENT_HASH_MISMATCH: 'The ciphertext of an encrypted attachment does not match its SHA-256 hash (corrupted or tampered); nothing was decrypted.',
  HALCYON_CRYPTO_STORE: 'The crypto store could not be opened or written (wrong passphrase, corrupt file, disk error), or the server holds keys of a lost store for this device.',
  HALCYON_DECRYPT_MISSING_KEY: 'An encrypted event arrived before its room key; it is kept and delivered if the key arrives (see `decryptionError`).',
  HALCYON_DECRYPT_FAILED: 'An encrypted event or to-device event could not be decrypted (malformed, unknown algorithm, corrupt ciphertext); it was skipped.',
  HALCYON_ENCRYPT_FAILED: 'A message for an encrypted room could not be encrypted (room key sharing failed, or an algorithm Halcyon cannot send with).',
  HALCYON_ROOM_ENCRYPTED: 'Plain text into an encrypted room was refused (pass `{ allowPlaintext: true }` to send it anyway).',
  HALCYON_TIMELINE_GAP: 'A room\'s timeline had a gap that could not be filled: larger than `maxGapEvents` (the oldest missing events were skipped), or `/messages` failed.',
  HALCYON_SEND_FAILED: 'A send failed for good: the homeserver refused it (4xx), or it still failed after `maxSendAttempts`; it is kept as a dead letter and `sendFailed` is emitted.',
  HALCYON_MEDIA_URI_INVALID: 'A media URI is not a valid `mxc://<server>/<media-id>` (malformed, or a path trick such as `..` or `/`); nothing was requested.',
  HALCYON_MEDIA_TOO_LARGE: 'A file is larger than the homeserver\'s upload limit (checked before sending) or than the caller\'s `maxBytes` on download.',
  HALCYON_RESPONSE_TOO_LARGE: 'An answer body was larger than the limit of its request (its Content-Length, or counted as it came); it was not read further.',
  HALCYON_SOFT_LOGOUT: 'The server ended the session but kept the device: log in again with Client.login and the same dataDir (it reuses the device ID); keys are kept.',
  HALCYON_ASK_TIMEOUT: 'A command\'s question (`ctx.ask`) got no answer from the person asked within its `timeoutMs`.',
  HALCYON_INSECURE_HOMESERVER: 'The homeserver URL is plain http:// to a host that is not this machine (the token would cross the network in the clear); use https://, or allow it with allowInsecureHttp.',
  HALCYON_CROSS_SIGNING_UNAVAILABLE: 'A warning: the device is not cross-signed (the account has an identity whose keys login was not given: pass the recovery key, or resetCrossSigning; or the set-up failed); the message says what to do.',
  HALCYON_RECOVERY_KEY_INVALID: 'The recovery key is malformed (not base58, wrong length, prefix or parity: a typo) or is not the key of the account\'s secret storage.',
  HALCYON_SECRET_STORAGE: 'A secret in the account\'s secret storage is missing, malformed, or fails its MAC (altered, or written with another key).',
  HALCYON_KEY_BACKUP: 'Server-side key backup could not be used: its version changed or was deleted on the server, or an upload or restore failed; room keys are kept locally.',
  HALCYON_DECRYPT_UNTRUSTED: 'An encrypted event was refused because its sender device does not meet the `trust` option (e.g. not cross-signed by its owner under the default `signed`); it was skipped.',
  HALCYON_VERIFICATION_REFUSED: 'A verification request came from a user `verification.from` does not allow; it was cancelled (m.user).',
  HALCYON_VERIFICATION_CANCELLED: 'A verification ended without success: cancelled by either side (see the message for the cancel code), timed out, or the SAS did not match.',
  HALCYON_CLUSTER: 'Cluster mode: NATS could not be reached or refused (connect, stream, lease), no ingest answered a worker\'s request, or the ingest lost its lease while starting (or with inline actors) and stopped.',
} as const;

/** One of the documented error codes. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Extra fields an error may carry. */
export interface ErrorDetails {
  /** HTTP status of the response that caused it, when there was one. */
  status?: number;
  /** The Matrix `errcode` (e.g. `M_FORBIDDEN`) when the homeserver sent one. */
  errcode?: string;
  /** How long the server asked us to wait, for 429s. */
  retryAfterMs?: number;
  /** Room the error concerns, when it concerns one. */
  roomId?: string;
  /** Event the error concerns, when it concerns one. */
  eventId?: string;
  /** The underlying error. */
  cause?: unknown;
}

/** The error class of Halcyon; `code` is always one of {@link ERROR_CODES}. */
export class HalcyonError extends Error implements ErrorDetails {
  readonly code: ErrorCode;
  // `declare`: no class-field initialisers, so absent details stay absent instead of `undefined` own props.
  declare status?: number;
  declare errcode?: string;
  declare retryAfterMs?: number;
  declare roomId?: string;
  declare eventId?: string;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'HalcyonError';
    this.code = code;
    if (details.status !== undefined) this.status = details.status;
    if (details.errcode !== undefined) this.errcode = details.errcode;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details.roomId !== undefined) this.roomId = details.roomId;
    if (details.eventId !== undefined) this.eventId = details.eventId;
  }
}

/** An error flattened to structured-cloneable data, so it crosses threads with its code intact. */
export interface WireError {
  code: ErrorCode;
  message: string;
  status?: number;
  errcode?: string;
  retryAfterMs?: number;
  roomId?: string;
  eventId?: string;
  stack?: string;
}

/** Flattens any thrown value to a {@link WireError}; values without a Halcyon code become `fallback`. */
export function toWireError(err: unknown, fallback: ErrorCode = 'HALCYON_HTTP'): WireError {
  if (err && typeof err === 'object') {
    const e = err as Partial<HalcyonError> & { message?: unknown; stack?: unknown };
    const code = typeof e.code === 'string' && e.code in ERROR_CODES ? (e.code as ErrorCode) : fallback;
    const out: WireError = { code, message: typeof e.message === 'string' ? e.message : String(err) };
    for (const k of ['status', 'errcode', 'retryAfterMs', 'roomId', 'eventId'] as const) {
      if (e[k] !== undefined) (out as unknown as Record<string, unknown>)[k] = e[k];
    }
    if (typeof e.stack === 'string') out.stack = e.stack;
    return out;
  }
  return { code: fallback, message: String(err) };
}

/** Rebuilds a {@link HalcyonError} from its wire form (the stack is that of the thread that threw). */
export function fromWireError(w: WireError): HalcyonError {
  const e = new HalcyonError(w.code, w.message, w);
  if (w.stack) e.stack = w.stack;
  return e;
}

/**
 * Whether a failure is worth another attempt: everything but a refusal. Refusals are the server's 4xx answers and
 * local errors a retry cannot change (bad input, an algorithm Halcyon cannot send with, a revoked token, a
 * redirect, an answer over its size limit, a corrupt attachment). Anything else — transport, deadlines, 429s, 5xx, a malformed answer, an actor that died or is
 * restarting, a bug's TypeError — is transient: the one rule of the outbox's sends and the sync actor's polls.
 */
export function isTransient(e: unknown): boolean {
  switch ((e as { code?: unknown } | null)?.code) {
    case 'HALCYON_MATRIX': {
      const status = (e as HalcyonError).status;
      return status === undefined || status >= 500;
    }
    case 'HALCYON_INVALID_ARGUMENT':
    case 'HALCYON_ENCRYPT_FAILED':
    case 'HALCYON_ROOM_ENCRYPTED':
    case 'HALCYON_UNKNOWN_TOKEN':
    case 'HALCYON_SOFT_LOGOUT':
    case 'HALCYON_REDIRECT':
    case 'HALCYON_INSECURE_HOMESERVER':
    case 'HALCYON_RESPONSE_TOO_LARGE':
    case 'HALCYON_MEDIA_TOO_LARGE':
    case 'HALCYON_MEDIA_URI_INVALID':
    case 'HALCYON_ATTACHMENT_INVALID':
    case 'HALCYON_ATTACHMENT_HASH_MISMATCH':
    case 'HALCYON_UNSUPPORTED_RUNTIME':
      return false;
    default:
      return true;
  }
}
