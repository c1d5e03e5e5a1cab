/**
 * The HTTP door: the only module that imports undici. A small Matrix client-server transport with keep-alive,
 * client-side deadlines, coded errors, 429 handling, and no redirect following (a redirect would carry the
 * token to wherever it points).
 */
import { Agent, errors as undiciErrors, request } from 'undici';
import { HalcyonError } from './errors.ts';

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
}

/** Transport settings. */
export interface HttpOptions {
  /** Default deadline per request, in ms. */
  timeoutMs?: number;
  /** Ceiling on one 429 wait, in ms. */
  maxRetryAfterMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** A Matrix client-server transport bound to one homeserver and (optionally) one access token. */
export class MatrixHttp {
  readonly baseUrl: string;
  private readonly agent: Agent;
  private readonly authHeader: string | undefined;
  private readonly timeoutMs: number;
  private readonly maxRetryAfterMs: number;

  constructor(homeserver: string, accessToken?: string, opts: HttpOptions = {}) {
    this.baseUrl = homeserver.replace(/\/+$/, '');
    this.authHeader = accessToken ? `Bearer ${accessToken}` : undefined;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxRetryAfterMs = opts.maxRetryAfterMs ?? 60_000;
    // Keep-alive past the long-poll: a /sync answer may take the whole poll timeout.
    this.agent = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000, connections: 16 });
  }

  /** Sends a request and returns the parsed JSON body; non-2xx answers become coded errors. */
  async json<T = Record<string, unknown>>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const text = await this.text(method, path, opts);
    try {
      return (text.length === 0 ? {} : JSON.parse(text)) as T;
    } catch (err) {
      throw new HalcyonError('HALCYON_BAD_RESPONSE', `${method} ${redactPath(path)}: the response is not JSON`, { cause: err });
    }
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
    const maxRetries = opts.maxRateLimitRetries ?? 5;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once(method, path, opts);
      } catch (err) {
        const e = err as HalcyonError;
        if (e.code !== 'HALCYON_RATE_LIMITED' || attempt >= maxRetries) throw err;
        await delay(Math.min(e.retryAfterMs ?? 1000 * 2 ** attempt, this.maxRetryAfterMs), opts.signal);
      }
    }
  }

  private async once(method: string, path: string, opts: RequestOptions): Promise<Uint8Array> {
    const url = new URL(this.baseUrl + path);
    if (opts.query) for (const [k, v] of Object.entries(opts.query)) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = {};
    if (this.authHeader && !opts.anonymous) headers.authorization = this.authHeader;
    let body: string | undefined;
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['content-type'] = 'application/json';
    }
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, deadline]) : deadline;
    const what = `${method} ${redactPath(path)}`;
    let status: number;
    let bytes: Uint8Array;
    let retryAfterHeader: string | string[] | undefined;
    try {
      const res = await request(url, {
        method: method as 'GET',
        headers,
        body,
        signal,
        dispatcher: this.agent,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      status = res.statusCode;
      retryAfterHeader = res.headers['retry-after'];
      bytes = new Uint8Array(await res.body.arrayBuffer());
    } catch (err) {
      if (opts.signal?.aborted) throw new HalcyonError('HALCYON_STOPPED', `${what}: aborted`, { cause: err });
      if (deadline.aborted || err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError) {
        throw new HalcyonError('HALCYON_TIMEOUT', `${what}: no answer within ${timeoutMs} ms`, { cause: err });
      }
      throw new HalcyonError('HALCYON_HTTP', `${what}: ${(err as Error).message}`, { cause: err });
    }
    if (status >= 200 && status < 300) return bytes;
    throw errorFromResponse(what, status, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'), retryAfterHeader);
  }

  /** Closes pooled connections. */
  async close(): Promise<void> {
    await this.agent.close();
  }
}

function errorFromResponse(what: string, status: number, text: string, retryAfter: string | string[] | undefined): HalcyonError {
  if (status >= 300 && status < 400) {
    return new HalcyonError('HALCYON_REDIRECT', `${what}: the server answered ${status} (redirect not followed)`, { status });
  }
  let errcode: string | undefined;
  let error: string | undefined;
  let retryAfterMs: number | undefined;
  try {
    const body = JSON.parse(text) as { errcode?: unknown; error?: unknown; retry_after_ms?: unknown };
    if (typeof body.errcode === 'string') errcode = body.errcode;
    if (typeof body.error === 'string') error = body.error.slice(0, 500);
    if (typeof body.retry_after_ms === 'number') retryAfterMs = body.retry_after_ms;
  } catch {
    // Not JSON (a proxy's HTML page): the status alone tells what happened.
  }
  const detail = `${what}: ${status}${errcode ? ` ${errcode}` : ''}${error ? ` (${error})` : ''}`;
  if (status === 429 || errcode === 'M_LIMIT_EXCEEDED') {
    if (retryAfterMs === undefined && typeof retryAfter === 'string' && /^\d+$/.test(retryAfter)) retryAfterMs = Number(retryAfter) * 1000;
    const details: { status: number; errcode?: string; retryAfterMs?: number } = { status };
    if (errcode) details.errcode = errcode;
    if (retryAfterMs !== undefined) details.retryAfterMs = retryAfterMs;
    return new HalcyonError('HALCYON_RATE_LIMITED', detail, details);
  }
  const details: { status: number; errcode?: string } = { status };
  if (errcode) details.errcode = errcode;
  if (errcode === 'M_UNKNOWN_TOKEN' || errcode === 'M_MISSING_TOKEN' || (status === 401 && errcode === undefined)) {
    return new HalcyonError('HALCYON_UNKNOWN_TOKEN', detail, details);
  }
  return new HalcyonError('HALCYON_MATRIX', detail, details);
}

/** Strips the query (it may carry a since token or, in older clients, an access token) from a path for messages. */
function redactPath(path: string): string {
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
}

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

/** Percent-encodes one path segment (room IDs, event IDs, user IDs, aliases). */
export function seg(s: string): string {
  return encodeURIComponent(s);
}
