/**
 * Homeserver URLs: the one place that turns what a user typed (a URL, or a bare server name such as `example.org`)
 * into the base URL every request is made against. A URL is checked and normalised without the network; a server
 * name is resolved with the spec's client discovery (`/.well-known/matrix/client`, then `/_matrix/client/versions`).
 */
import { HalcyonError } from './errors.ts';
import { isLoopbackHost, MatrixHttp } from './http.ts';

/** Options of {@link resolveHomeserver}. */
export interface ResolveHomeserverOptions {
  /**
   * Allow a plain `http://` homeserver that is not this machine (default false: the access token and every
   * message would cross the network in the clear). Loopback (127.0.0.0/8, ::1, localhost) is always allowed.
   */
  allowInsecureHttp?: boolean;
  /** Deadline of each discovery request, in ms (default 10 s). */
  timeoutMs?: number;
}

// The spec's server name grammar (appendix): a DNS name, IPv4, or a bracketed IPv6 address, then an optional port.
// DNS labels are non-empty, so "." and ".." can never appear as path segments where a server name is used.
const SERVER_NAME = /^(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?$/;

/** Whether `name` is a server name as the spec's grammar defines it (at most 255 characters, port at most 65535). */
export function isServerName(name: string): boolean {
  const m = SERVER_NAME.exec(name);
  return m !== null && name.length <= 255 && (m[1] === undefined || Number(m[1]) <= 65535);
}

const DISCOVERY_MAX_BYTES = 64 * 1024;

/**
 * Turns what a user typed into a homeserver base URL (no trailing slash).
 *
 * - A URL with a scheme (`https://matrix.example.org`) is checked and normalised, without any request: http(s)
 *   only, no credentials, query or fragment, no `/_matrix/...` or `/.well-known/...` path (a path prefix of a
 *   reverse-proxied homeserver is kept), host lower-cased, default port and trailing slashes dropped.
 * - A bare server name (`example.org`, `example.org:8448`, `localhost:8008`) is resolved with client discovery:
 *   `GET https://<name>/.well-known/matrix/client` gives `m.homeserver.base_url`; without a well-known (404, or
 *   nothing answering) `https://<name>` itself is the candidate; either is then checked with
 *   `GET <base>/_matrix/client/versions`. For a loopback name (127.0.0.0/8, ::1, localhost) discovery uses plain
 *   http: no network is crossed, and a local homeserver (a test's Synapse) rarely speaks TLS.
 *
 * Errors: `HALCYON_INVALID_ARGUMENT` naming the input for anything malformed; `HALCYON_INSECURE_HOMESERVER` for
 * plain http to a host that is not loopback (typed, or from a well-known) unless `allowInsecureHttp`;
 * `HALCYON_BAD_RESPONSE` for a malformed well-known or versions answer; the transport's or server's code
 * (`HALCYON_HTTP`, `HALCYON_TIMEOUT`, `HALCYON_MATRIX`, `HALCYON_REDIRECT`: redirects are not followed) when a
 * request fails. Every discovery error names the server.
 */
export async function resolveHomeserver(input: string, opts: ResolveHomeserverOptions = {}): Promise<string> {
  if (typeof input !== 'string') throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the homeserver must be a string (a URL or a server name), not ${input === null ? 'null' : typeof input}`);
  const typed = input.trim();
  if (typed === '') throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'the homeserver is empty: give its URL (https://matrix.example.org) or server name (example.org)');
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(typed)) return baseUrl(typed, opts, (why) => new HalcyonError('HALCYON_INVALID_ARGUMENT', `the homeserver ${shown(typed)} ${why}`));
  if (!isServerName(typed) || !canParse(`http://${typed}`)) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the homeserver ${shown(typed)} is neither a URL (https://matrix.example.org) nor a server name (example.org, example.org:8448)`);
  }
  return discover(typed, opts);
}

/** Client discovery for a valid server name; see {@link resolveHomeserver}. */
async function discover(name: string, opts: ResolveHomeserverOptions): Promise<string> {
  const scheme = isLoopbackHost(new URL(`http://${name}`).hostname) ? 'http' : 'https';
  const fail = (err: unknown, step: string) => {
    const e = err as HalcyonError;
    return new HalcyonError(e.code ?? 'HALCYON_INTERNAL', `homeserver discovery for ${name}: ${step}: ${e.message}`, { ...(e.status === undefined ? {} : { status: e.status }), ...(e.errcode === undefined ? {} : { errcode: e.errcode }), cause: err });
  };
  const request = { anonymous: true, maxBytes: DISCOVERY_MAX_BYTES, timeoutMs: opts.timeoutMs ?? 10_000, maxRateLimitRetries: 1 };
  let base = `${scheme}://${name}`;
  const http = new MatrixHttp(base);
  try {
    let wellKnown: unknown = null;
    try {
      wellKnown = await http.json<unknown>('GET', '/.well-known/matrix/client', request);
    } catch (err) {
      const e = err as HalcyonError;
      // 404 (or no web server at all) means no well-known: the server name itself is the candidate. Anything
      // else is a broken well-known, which the spec says must not be guessed past.
      if (!(e.status === 404 || e.code === 'HALCYON_HTTP' || e.code === 'HALCYON_TIMEOUT')) throw fail(err, 'GET /.well-known/matrix/client');
    }
    if (wellKnown !== null) {
      const hs = isObject(wellKnown) ? wellKnown['m.homeserver'] : undefined;
      const url = isObject(hs) ? hs.base_url : undefined;
      const bad = (why: string) => new HalcyonError('HALCYON_BAD_RESPONSE', `homeserver discovery for ${name}: /.well-known/matrix/client ${why}`);
      if (typeof url !== 'string') throw bad('has no m.homeserver.base_url string');
      base = baseUrl(url.trim(), opts, (why) => bad(`gives a base_url ${shown(url)} that ${why}`), name);
    }
  } finally {
    await http.close();
  }
  await checkVersions(base, name, request, fail);
  return base;
}

/** `GET <base>/_matrix/client/versions` must answer `{ versions: string[] }`: the base is a Matrix homeserver. */
async function checkVersions(base: string, name: string, request: { anonymous: boolean; maxBytes: number; timeoutMs: number }, fail: (err: unknown, step: string) => HalcyonError): Promise<void> {
  const http = new MatrixHttp(base);
  const step = `GET ${base}/_matrix/client/versions`;
  try {
    let body: unknown;
    try {
      body = await http.json<unknown>('GET', '/_matrix/client/versions', request);
    } catch (err) {
      throw fail(err, step);
    }
    const versions = isObject(body) ? body.versions : undefined;
    if (!Array.isArray(versions) || versions.length === 0 || !versions.every((v) => typeof v === 'string')) {
      throw new HalcyonError('HALCYON_BAD_RESPONSE', `homeserver discovery for ${name}: ${step}: the answer has no versions list (not a Matrix homeserver)`);
    }
  } finally {
    await http.close();
  }
}

/**
 * Checks and normalises a base URL (typed, or from a well-known): `malformed(why)` builds the error for a bad one;
 * plain http to a host that is not loopback is `HALCYON_INSECURE_HOMESERVER` unless allowed.
 */
function baseUrl(raw: string, opts: ResolveHomeserverOptions, malformed: (why: string) => HalcyonError, via?: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw malformed('is not a valid URL');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw malformed(`is not an http(s) URL (${url.protocol})`);
  if (url.host === '') throw malformed('has no host');
  if (url.username || url.password) throw malformed('must not hold a user name or password');
  if (url.search || url.hash || /[?#]/.test(raw)) throw malformed('must not have a query or fragment');
  const path = url.pathname.replace(/\/+$/, '');
  if (/(^|\/)(_matrix|\.well-known)(\/|$)/.test(path)) throw malformed('must be the base URL, without /_matrix/... or /.well-known/...');
  if (url.protocol === 'http:' && !isLoopbackHost(url.hostname) && !opts.allowInsecureHttp) {
    const from = via ? ` (from the well-known of ${via})` : '';
    throw new HalcyonError(
      'HALCYON_INSECURE_HOMESERVER',
      `the homeserver ${url.origin}${from} is plain http on a host that is not this machine: the access token and every message would cross the network unencrypted (use https://, or pass allowInsecureHttp: true)`,
    );
  }
  return url.origin + path;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function canParse(url: string): boolean {
  try {
    new URL(url);
    return true;
  } catch {
    return false;
  }
}

/** The input for a message: quoted, cut to 100 characters, credentials of a URL left out. */
function shown(s: string): string {
  return JSON.stringify(s.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/@?#]*@/, '$1<credentials>@').slice(0, 100));
}
