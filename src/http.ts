/**
 * The HTTP transport over undici (src/undici.ts loads it). A small Matrix client-server transport with keep-alive,
 * client-side deadlines, coded errors, 429 handling, and no redirect following (a redirect would carry the
 * token to wherever it points).
 */
import { Readable } from 'node:stream';
import { delay } from './abort.ts';
import { isWorkerThread } from './actors.ts';
import { HalcyonError } from './errors.ts';
import { loadUndici, type Undici, type UndiciParts } from './undici.ts';

type Agent = Undici.Agent;

/**
 * undici, ~10 ms of CPU per thread to load. A worker loads it at its first request: the crypto worker's comes after
 * the first sync's changes are applied (an existing store's), so its loading is not among what three starting
 * threads share two cores for before `ready`. Main loads it with this module: its first request (login, whoami)
 * follows the import at once, and the cost belongs with the import, which a bot pays before it starts.
 */
let parts: UndiciParts | null = null;
const undici = (): UndiciParts => (parts ??= loadUndici());
if (!isWorkerThread()) undici();

/** Whether `err` is undici's `name` error (false while undici is not loaded: nothing of it can have failed). */
function isUndiciError(err: unknown, name: 'ConnectTimeoutError' | 'HeadersTimeoutError' | 'BodyTimeoutError'): boolean {
  return parts !== null && err instanceof parts.errors[name];
}

/** One request to `url` through `opts.dispatcher` (what undici's top-level `request` does with a URL). */
function request(url: URL, opts: Omit<Undici.Dispatcher.RequestOptions, 'origin' | 'path'> & { dispatcher: Undici.Dispatcher }): Promise<Undici.Dispatcher.ResponseData> {
  return undici().request({ ...opts, origin: url.origin, path: `${url.pathname}${url.search}` });
}

/** Options of one request. */
export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  /** Client-side deadline for the whole exchange (headers and body), in ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** How many 429 answers to wait out before giving up (default 5). */
  maxRateLimitRetries?: number;
  /** Send without the access token (login). */
  anonymous?: boolean;
  /**
   * Largest answer body to read, in bytes (default {@link DEFAULT_MAX_BYTES}); past it the call fails with
   * `HALCYON_RESPONSE_TOO_LARGE`, refused from the Content-Length before reading, else counted as it streams.
   * Error answers are read up to {@link ERROR_BODY_MAX_BYTES} whatever this says.
   */
  maxBytes?: number;
}

/**
 * A request body of known length that can be sent again (a 429 is retried): bytes, or a function opening a fresh
 * stream of the same bytes (a file's read stream, say).
 */
export type UploadBody = Uint8Array | (() => Readable);

/** Options of {@link MatrixHttp.upload}. */
export interface UploadRequestOptions extends Omit<RequestOptions, 'body' | 'anonymous'> {
  contentType: string;
  /** The body's exact length in bytes (sent as Content-Length: homeservers refuse uploads without one). */
  contentLength: number;
}

/** A 2xx answer whose body is left to the caller, as a stream. */
export interface StreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The body; transport failures while reading it are `HalcyonError`s (`HALCYON_TIMEOUT`, `HALCYON_HTTP`). */
  body: Readable;
}

/** Transport settings. */
export interface HttpOptions {
  /** Default deadline per request, in ms. */
  timeoutMs?: number;
  /**
   * Ceiling on one 429 wait of a request, in ms (default 60 s). A server asking for longer is not retried early:
   * the request fails at once with `HALCYON_RATE_LIMITED` carrying the server's `retryAfterMs`.
   */
  maxRetryAfterMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** How long a TLS handshake with a loopback address may take (see the constructor). */
const LOOPBACK_TLS_TIMEOUT_MS = 2_000;
/** OpenSSL's errors for a first record that is not TLS (an HTTP answer, say). */
const NOT_TLS_CODES = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_HTTP_REQUEST', 'ERR_SSL_RECORD_LAYER_FAILURE']);

/**
 * Whether a URL's hostname is this machine: 127.0.0.0/8, ::1 or `localhost`. Traffic to it never crosses a
 * network, so plain http there exposes nothing (the only place Halcyon allows it without being told).
 */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/\.$/, '');
  return h === 'localhost' || h === '[::1]' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Largest answer body read by default (16 MiB): far above any ordinary JSON answer. */
export const DEFAULT_MAX_BYTES = 16 * 1024 * 1024;
/**
 * How much of an error answer is read (64 KiB): a Matrix error is a few hundred bytes; the rest of a bigger body
 * (a proxy's page, a hostile server) is let go and the error built from what was read.
 */
export const ERROR_BODY_MAX_BYTES = 64 * 1024;

/** A Matrix client-server transport bound to one homeserver and (optionally) one access token. */
export class MatrixHttp {
  readonly baseUrl: string;
  // #private, not TS-private: util.inspect and JSON.stringify show TS-private fields, and the auth header (and the
  // agent, whose queued requests hold it while in flight) must never be printed.
  /** Made by the first request (`#dispatcher`), with `#agentOptions`. */
  #agent: Agent | null = null;
  readonly #agentOptions: Undici.Agent.Options;
  #closed = false;
  readonly #authHeader: string | undefined;
  readonly #timeoutMs: number;
  readonly #maxRetryAfterMs: number;
  readonly #https: boolean;
  readonly #loopback: boolean;
  /** While requests are held ({@link hold}): what they wait on before their first attempt. */
  #held: { wait: Promise<void>; release: () => void; drop: (err: Error) => void } | null = null;

  /** Throws `HALCYON_INVALID_ARGUMENT` when `homeserver` is not an http(s) URL (see `resolveHomeserver` for user input). */
  constructor(homeserver: string, accessToken?: string, opts: HttpOptions = {}) {
    let url: URL;
    try {
      url = new URL(homeserver);
    } catch {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the homeserver is not a URL: ${JSON.stringify(String(homeserver).slice(0, 100))} (expected https://<host>)`);
    }
    if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.host === '') {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the homeserver is not an http(s) URL: ${JSON.stringify(url.protocol)} (expected https://<host>)`);
    }
    this.baseUrl = homeserver.replace(/\/+$/, '');
    this.#authHeader = accessToken ? `Bearer ${accessToken}` : undefined;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#maxRetryAfterMs = opts.maxRetryAfterMs ?? 60_000;
    this.#https = url.protocol === 'https:';
    this.#loopback = isLoopbackHost(url.hostname);
    // Keep-alive past the long-poll: a /sync answer may take the whole poll timeout. A TLS handshake with this
    // machine takes milliseconds: one that has not finished in 2 s is a plain-HTTP server (Synapse's stays
    // silent on a ClientHello), so it fails then with a message saying so instead of after 10 s with a bare timeout.
    const connect = this.#https && this.#loopback ? { connect: { timeout: LOOPBACK_TLS_TIMEOUT_MS } } : {};
    this.#agentOptions = { keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000, connections: 16, ...connect };
  }

  /** The connection pool, made (and undici loaded) at the first request; after {@link close}, a closed one. */
  get #dispatcher(): Agent {
    if (this.#agent === null) {
      this.#agent = new (undici().Agent)(this.#agentOptions);
      if (this.#closed) void this.#agent.close(); // its requests fail as they would on the closed pool
    }
    return this.#agent;
  }

  /** Sends a request and returns the parsed JSON body; non-2xx answers become coded errors. */
  async json<T = Record<string, unknown>>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    return parseJson<T>(`${method} ${redactPath(path)}`, await this.text(method, path, opts));
  }

  /** Sends a request and returns the body text of a 2xx answer. */
  async text(method: string, path: string, opts: RequestOptions = {}): Promise<string> {
    const bytes = await this.bytes(method, path, opts);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  }

  /**
   * Sends a request and returns the body bytes of a 2xx answer (used for /sync, whose bytes are scanned, not
   * parsed). The result owns its whole ArrayBuffer, so it can be transferred to another thread.
   */
  async bytes(method: string, path: string, opts: RequestOptions = {}): Promise<Uint8Array> {
    return this.retrying(opts, () => this.once(method, path, opts));
  }

  /**
   * Sends `body` (of exactly `contentLength` bytes) and returns the parsed JSON answer; used for media uploads. The
   * body is streamed, never gathered: the deadline is `timeoutMs` without progress while sending, then `timeoutMs`
   * for the answer (a whole-exchange deadline would cut off big files on slow links). A 429 is retried by sending the
   * body again (bytes, or a fresh stream from the factory).
   */
  async upload<T = Record<string, unknown>>(path: string, body: UploadBody, opts: UploadRequestOptions): Promise<T> {
    const what = `POST ${redactPath(path)}`;
    return parseJson<T>(what, await this.retrying(opts, () => this.uploadOnce(what, path, body, opts)));
  }

  /**
   * Sends a body-less request and hands back a 2xx answer's body as a stream (media downloads); non-2xx answers
   * become the same coded errors as {@link json}'s, and 429s are retried (nothing has been consumed yet). Deadlines:
   * `timeoutMs` for the headers, then `timeoutMs` without a byte while reading (the reader sets the pace, so there is
   * no whole-exchange deadline). The caller must consume or destroy the body (that frees the connection).
   */
  async stream(method: string, path: string, opts: Omit<RequestOptions, 'body' | 'maxBytes'> = {}): Promise<StreamResponse> {
    return this.retrying(opts, () => this.streamOnce(method, path, opts));
  }

  /**
   * Holds every request from now on before its first attempt, none sent, until {@link release} (or
   * {@link dropHeld}, which fails them with `HALCYON_NOT_RUNNING`): a cluster ingest's crypto actor opens before
   * the ingest knows it still leads, and must send nothing (key uploads) for a device another ingest may serve.
   */
  hold(): void {
    if (this.#held) return;
    let release!: () => void;
    let drop!: (err: Error) => void;
    const wait = new Promise<void>((resolve, reject) => ((release = resolve), (drop = reject)));
    wait.catch(() => {}); // nobody may be waiting when it is dropped
    this.#held = { wait, release, drop };
  }

  /** Lets held requests go (see {@link hold}). */
  release(): void {
    this.#held?.release();
    this.#held = null;
  }

  /** Fails held requests (see {@link hold}); later ones go. */
  dropHeld(): void {
    this.#held?.drop(new HalcyonError('HALCYON_NOT_RUNNING', 'the request was held, and its sender stopped before it could go'));
    this.#held = null;
  }

  private async retrying<T>(opts: RequestOptions, once: () => Promise<T>): Promise<T> {
    if (this.#held) await this.#held.wait;
    const maxRetries = opts.maxRateLimitRetries ?? 5;
    for (let attempt = 0; ; attempt++) {
      try {
        return await once();
      } catch (err) {
        const e = err as HalcyonError;
        if (e.code !== 'HALCYON_RATE_LIMITED' || attempt >= maxRetries) throw err;
        // Never sooner than the server said: a wait past the ceiling is the caller's to schedule (it has retryAfterMs).
        if (e.retryAfterMs !== undefined && e.retryAfterMs > this.#maxRetryAfterMs) throw err;
        await delay(e.retryAfterMs ?? Math.min(1000 * 2 ** attempt, this.#maxRetryAfterMs), opts.signal);
      }
    }
  }

  private url(path: string, query: RequestOptions['query']): URL {
    const url = new URL(this.baseUrl + path);
    if (query) for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, String(v));
    return url;
  }

  private headers(opts: RequestOptions): Record<string, string> {
    const headers: Record<string, string> = {};
    if (this.#authHeader && !opts.anonymous) headers.authorization = this.#authHeader;
    return headers;
  }

  private async uploadOnce(what: string, path: string, body: UploadBody, opts: UploadRequestOptions): Promise<string> {
    const headers = { ...this.headers(opts), 'content-type': opts.contentType, 'content-length': String(opts.contentLength) };
    const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
    // Progress watchdog: undici's own timeouts only start once the body is sent, so a stalled send needs this.
    const stalled = new AbortController();
    let watchdog: NodeJS.Timeout | undefined;
    const touch = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => stalled.abort(), timeoutMs);
    };
    const source = body instanceof Uint8Array ? undefined : body();
    async function* chunks(): AsyncGenerator<Uint8Array> {
      touch();
      try {
        if (source) {
          for await (const c of source) {
            yield c as Uint8Array;
            touch();
          }
        } else {
          for (let i = 0; i < (body as Uint8Array).length; i += 1 << 16) {
            yield (body as Uint8Array).subarray(i, i + (1 << 16));
            touch();
          }
        }
      } finally {
        clearTimeout(watchdog);
      }
    }
    const signal = opts.signal ? AbortSignal.any([opts.signal, stalled.signal]) : stalled.signal;
    let res: Awaited<ReturnType<typeof request>> | undefined;
    try {
      res = await request(this.url(path, opts.query), {
        method: 'POST',
        headers,
        body: Readable.from(chunks(), { objectMode: false }),
        signal,
        dispatcher: this.#dispatcher,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      const bytes = await answerBody(what, res, opts.maxBytes);
      const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
      if (res.statusCode >= 200 && res.statusCode < 300) return text;
      throw errorFromResponse(what, res.statusCode, text, res.headers['retry-after']);
    } catch (err) {
      if (err instanceof HalcyonError) throw err;
      throw this.#transportError(what, err, opts.signal, stalled.signal.aborted, timeoutMs);
    } finally {
      clearTimeout(watchdog);
      if (res) release(res.body);
      source?.destroy(); // an abandoned request may never finish iterating it: release the file now
    }
  }

  private async streamOnce(method: string, path: string, opts: RequestOptions): Promise<StreamResponse> {
    const what = `${method} ${redactPath(path)}`;
    const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(this.url(path, opts.query), {
        method: method as 'GET',
        headers: this.headers(opts),
        signal: opts.signal,
        dispatcher: this.#dispatcher,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
    } catch (err) {
      throw this.#transportError(what, err, opts.signal, false, timeoutMs);
    }
    if (res.statusCode < 200 || res.statusCode >= 300) {
      let bytes: Uint8Array = new Uint8Array(0);
      try {
        bytes = await answerBody(what, res, undefined);
      } catch {
        // The status alone still tells what happened.
      } finally {
        release(res.body);
      }
      throw errorFromResponse(what, res.statusCode, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'), res.headers['retry-after']);
    }
    const raw = res.body;
    // A wrapper rather than the raw body: its errors become coded ones, and destroying it (a consumer giving up,
    // even before the first read) destroys the raw body, which frees the connection.
    const body = new Readable({
      read: () => void raw.resume(),
      destroy: (err, cb) => {
        raw.destroy();
        cb(err);
      },
    });
    raw.on('data', (c: Buffer) => {
      if (!body.push(c)) raw.pause();
    });
    raw.on('end', () => body.push(null));
    raw.on('error', (err) => body.destroy(this.#transportError(what, err, opts.signal, false, timeoutMs)));
    raw.pause();
    return { status: res.statusCode, headers: res.headers, body };
  }

  private async once(method: string, path: string, opts: RequestOptions): Promise<Uint8Array> {
    const url = this.url(path, opts.query);
    const headers = this.headers(opts);
    let body: string | undefined;
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['content-type'] = 'application/json';
    }
    const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
    const { signal: deadline, clear } = clearableTimeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, deadline]) : deadline;
    const what = `${method} ${redactPath(path)}`;
    let status: number;
    let bytes: Uint8Array;
    let retryAfterHeader: string | string[] | undefined;
    let res: Awaited<ReturnType<typeof request>> | undefined;
    try {
      res = await request(url, {
        method: method as 'GET',
        headers,
        body,
        signal,
        dispatcher: this.#dispatcher,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      status = res.statusCode;
      retryAfterHeader = res.headers['retry-after'];
      bytes = await answerBody(what, res, opts.maxBytes);
    } catch (err) {
      if (err instanceof HalcyonError) throw err;
      throw this.#transportError(what, err, opts.signal, deadline.aborted, timeoutMs);
    } finally {
      clear();
      if (res) release(res.body);
    }
    if (status >= 200 && status < 300) return bytes;
    throw errorFromResponse(what, status, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'), retryAfterHeader);
  }

  /** {@link transportError}, saying so when an https:// base URL meets a server that does not speak TLS. */
  #transportError(what: string, err: unknown, signal: AbortSignal | undefined, deadlinePassed: boolean, timeoutMs: number): HalcyonError {
    const code = (err as { code?: unknown } | null)?.code;
    // A plain-HTTP answer to a ClientHello (Node's 400) is a TLS record error; silence from loopback is a connect timeout.
    const notTls = typeof code === 'string' && NOT_TLS_CODES.has(code);
    if (this.#https && !signal?.aborted && (notTls || (this.#loopback && isUndiciError(err, 'ConnectTimeoutError')))) {
      return new HalcyonError('HALCYON_HTTP', `${what}: the server does not speak TLS on that port: use http:// for a local homeserver`, { cause: err });
    }
    return transportError(what, err, signal, deadlinePassed, timeoutMs);
  }

  /** Closes pooled connections. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#agent?.close();
  }
}

/**
 * The body of an answer: a 2xx one up to `maxBytes` (default {@link DEFAULT_MAX_BYTES}), past which it fails; an
 * error one up to {@link ERROR_BODY_MAX_BYTES}, cut there (what was read still tells what happened).
 */
function answerBody(what: string, res: { statusCode: number; headers: Record<string, string | string[] | undefined>; body: AsyncIterable<Uint8Array> }, maxBytes: number | undefined): Promise<Uint8Array> {
  const ok = res.statusCode >= 200 && res.statusCode < 300;
  if (ok && maxBytes !== undefined && !(maxBytes >= 0)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'maxBytes must be a number >= 0');
  return ok ? readBody(what, res.body, res.headers['content-length'], maxBytes ?? DEFAULT_MAX_BYTES) : readBody(what, res.body, undefined, ERROR_BODY_MAX_BYTES, true);
}

const EMPTY = new Uint8Array(0);

/**
 * Reads a response body of at most `maxBytes` into one buffer that owns its memory (so it can be transferred). A
 * Content-Length over the limit is refused (`HALCYON_RESPONSE_TOO_LARGE`) before a byte is read or allocated;
 * without one the chunks are counted as they come. With `cut`, the body is cut at the limit instead of failing.
 * With a Content-Length the chunks are copied into a buffer of that size as they come: gathering them and
 * concatenating at the end (what `arrayBuffer()` does) holds the body twice at its peak, 200 MB for a big
 * account's initial sync. The caller destroys the body afterwards, whatever happened. `alloc` makes that buffer
 * (a caller may read into memory of its own: the sync scanner's WebAssembly memory; that body cannot be transferred).
 * `progress` hears the bytes read so far after each chunk.
 */
export async function readBody(what: string, body: AsyncIterable<Uint8Array>, contentLength: string | string[] | undefined, maxBytes: number, cut = false, alloc: (length: number) => Uint8Array = Buffer.allocUnsafeSlow, progress?: (bytesRead: number) => void): Promise<Uint8Array> {
  const length = typeof contentLength === 'string' && /^\d+$/.test(contentLength) ? Number(contentLength) : NaN;
  if (length > maxBytes) throw tooLarge(what, `${length} bytes`, maxBytes);
  // Not zero-filled: every byte is written below (a body shorter than its Content-Length fails), and zeroing a
  // /sync body's megabytes first cost the sync worker ~0.3 ms per 3.4 MB.
  const out: Uint8Array = length > 0 ? alloc(length) : EMPTY;
  const chunks: Uint8Array[] = [];
  let at = 0;
  for await (const chunk of body) {
    if (at + chunk.byteLength > maxBytes) {
      if (!cut) throw tooLarge(what, `over ${at + chunk.byteLength} bytes`, maxBytes);
      chunks.push(chunk.subarray(0, maxBytes - at));
      at = maxBytes;
      break;
    }
    if (length > 0) {
      if (at + chunk.byteLength > length) throw new Error(`the body is longer than its Content-Length (${length})`); // reported as HALCYON_HTTP
      out.set(chunk, at);
    } else chunks.push(chunk);
    at += chunk.byteLength;
    progress?.(at);
  }
  if (length > 0) {
    if (at !== length) throw new Error(`the body ended after ${at} of its ${length} bytes`);
    return out;
  }
  const joined: Uint8Array = Buffer.allocUnsafeSlow(at);
  let pos = 0;
  for (const c of chunks) {
    joined.set(c, pos);
    pos += c.byteLength;
  }
  return joined;
}

/**
 * Lets an answer body go: a body not read to its end holds its connection (and its timer) until destroyed.
 * Destroying one nobody reads emits an abort error with no listener, which would crash the process: hence the
 * no-op listener. After the end, destroying is a no-op (the connection is reused).
 */
function release(body: Readable): void {
  body.on('error', () => {}).destroy();
}

function tooLarge(what: string, size: string, maxBytes: number): HalcyonError {
  return new HalcyonError('HALCYON_RESPONSE_TOO_LARGE', `${what}: the answer is ${size}, more than the limit of ${maxBytes}`);
}

/** A transport failure as a coded error: the caller's abort, a deadline, or anything else (reset, DNS, TLS). */
function transportError(what: string, err: unknown, signal: AbortSignal | undefined, deadlinePassed: boolean, timeoutMs: number): HalcyonError {
  if (signal?.aborted) return new HalcyonError('HALCYON_STOPPED', `${what}: aborted`, { cause: err });
  if (deadlinePassed || isUndiciError(err, 'HeadersTimeoutError') || isUndiciError(err, 'BodyTimeoutError')) {
    return new HalcyonError('HALCYON_TIMEOUT', `${what}: no answer within ${timeoutMs} ms`, { cause: err });
  }
  return new HalcyonError('HALCYON_HTTP', `${what}: ${(err as Error).message}`, { cause: err });
}

function parseJson<T>(what: string, text: string): T {
  try {
    return (text.length === 0 ? {} : JSON.parse(text)) as T;
  } catch (err) {
    throw new HalcyonError('HALCYON_BAD_RESPONSE', `${what}: the response is not JSON`, { cause: err });
  }
}

function errorFromResponse(what: string, status: number, text: string, retryAfter: string | string[] | undefined): HalcyonError {
  if (status >= 300 && status < 400) {
    return new HalcyonError('HALCYON_REDIRECT', `${what}: the server answered ${status} (redirect not followed)`, { status });
  }
  let errcode: string | undefined;
  let error: string | undefined;
  let bodyRetryMs: unknown;
  let softLogout = false;
  try {
    const body = JSON.parse(text) as { errcode?: unknown; error?: unknown; retry_after_ms?: unknown; soft_logout?: unknown };
    if (typeof body.errcode === 'string') errcode = body.errcode;
    if (typeof body.error === 'string') error = body.error.slice(0, 500);
    bodyRetryMs = body.retry_after_ms;
    softLogout = body.soft_logout === true;
  } catch {
    // Not JSON (a proxy's HTML page): the status alone tells what happened.
  }
  const detail = `${what}: ${status}${errcode ? ` ${errcode}` : ''}${error ? ` (${error})` : ''}`;
  if (status === 429 || errcode === 'M_LIMIT_EXCEEDED') {
    const retryAfterMs = parseRetryAfter(retryAfter, bodyRetryMs);
    const details: { status: number; errcode?: string; retryAfterMs?: number } = { status };
    if (errcode) details.errcode = errcode;
    if (retryAfterMs !== undefined) details.retryAfterMs = retryAfterMs;
    return new HalcyonError('HALCYON_RATE_LIMITED', detail, details);
  }
  const details: { status: number; errcode?: string } = { status };
  if (errcode) details.errcode = errcode;
  // Soft logout: the session ended but the device and its keys are kept; a login with the same device ID restores it.
  if (errcode === 'M_UNKNOWN_TOKEN' && softLogout) return new HalcyonError('HALCYON_SOFT_LOGOUT', detail, details);
  if (errcode === 'M_UNKNOWN_TOKEN' || errcode === 'M_MISSING_TOKEN' || (status === 401 && errcode === undefined)) {
    return new HalcyonError('HALCYON_UNKNOWN_TOKEN', detail, details);
  }
  return new HalcyonError('HALCYON_MATRIX', detail, details);
}

/** Longest rate-limit wait Halcyon takes from a server, in ms (10 minutes); longer asks are clamped to it. */
export const MAX_RETRY_AFTER_MS = 600_000;

const HTTP_DATE = [
  /^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/, // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  /^[A-Za-z]{6,9}, \d{2}-[A-Za-z]{3}-\d{2} \d{2}:\d{2}:\d{2} GMT$/, // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
  /^[A-Za-z]{3} [A-Za-z]{3} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/, // asctime: Sun Nov  6 08:49:37 1994 (UTC)
];

/**
 * How long a 429 asks to wait, in ms, or undefined when it does not say. Since spec v1.10 the `Retry-After` header
 * (delay-seconds or an HTTP date) is preferred and the body's `retry_after_ms` is the fallback; what neither
 * states as a valid value (garbage, a negative or fractional header) is ignored.
 *
 * Invariants: the result is an integer in [0, {@link MAX_RETRY_AFTER_MS}] or undefined, so no caller's timer
 * overflows (Node fires a delay over 2^31-1 ms at once) or stalls for days; a date in the past gives 0.
 */
export function parseRetryAfter(header: string | string[] | undefined, bodyMs: unknown, now = Date.now()): number | undefined {
  const clamp = (ms: number) => Math.min(MAX_RETRY_AFTER_MS, Math.max(0, Math.ceil(ms)));
  const value = Array.isArray(header) ? header[0] : header;
  if (typeof value === 'string') {
    const v = value.trim();
    if (/^\d+$/.test(v)) return clamp(Number(v) * 1000);
    if (HTTP_DATE.some((re) => re.test(v))) {
      const at = Date.parse(/GMT$/.test(v) ? v : `${v} GMT`);
      if (Number.isFinite(at)) return clamp(at - now);
    }
  }
  if (typeof bodyMs === 'number' && !Number.isNaN(bodyMs) && bodyMs !== -Infinity) return clamp(bodyMs);
  return undefined;
}

/** Strips the query (it may carry a since token or, in older clients, an access token) from a path for messages. */
function redactPath(path: string): string {
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
}

/** Percent-encodes one path segment (room IDs, event IDs, user IDs, aliases). */
export function seg(s: string): string {
  return encodeURIComponent(s);
}

/**
 * A deadline signal whose timer is cleared when the request is over. `AbortSignal.timeout` cannot be cancelled: each
 * finished request's signal (and whatever listens to it) stayed alive until its 30 s passed — 600 requests' worth at
 * 20 sends/s on the main thread.
 */
function clearableTimeout(ms: number): { signal: AbortSignal; clear: () => void } {
  const c = new AbortController();
  const timer = setTimeout(() => c.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')), ms);
  timer.unref();
  return { signal: c.signal, clear: () => clearTimeout(timer) };
}
