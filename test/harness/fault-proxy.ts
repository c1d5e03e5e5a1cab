/**
 * A programmable fault-injecting reverse proxy for integration tests, run in the test's own process (node:http).
 *
 * It forwards every request to the upstream homeserver (method, path with query, headers less hop-by-hop ones,
 * body) and streams the answer back, unless a fault rule matches the request. Rules are checked in the order they
 * were added; the first whose matcher fits, whose budget (`times`) is not spent and whose coin (`probability`,
 * from a seeded RNG) comes up applies its fault:
 *
 * - `reset`: destroy the connection before any header, after the (real) headers, or after part of the real body;
 * - `stall`: hold the request without answering until the client gives up (or, with `ms` or `until`, forward it
 *   after `ms` or once `until` settles); with `forward: true` the request reaches the upstream first and only the
 *   answer is held back;
 * - `status`: answer 500/502/503 (or any status) with a Synapse-like JSON or a proxy's HTML body, or with the
 *   given `body` (as JSON); with `forward: true` the upstream handles the request first and its answer is replaced;
 * - `truncate`: answer 200 with a prefix of the upstream's real body (Content-Length of the prefix);
 * - `rateLimit`: answer 429 with `retry_after_ms` in the JSON, with only a `Retry-After` header, or with neither;
 * - `redirect`: answer 302 (or 307...) to another URL (see {@link startRecorder}: a server that records whether
 *   anyone brings it an Authorization header).
 *
 * When the upstream is unreachable (a homeserver restarting), the proxy answers 502 like a real reverse proxy.
 * Every request is recorded (method, path, status answered, fault, whether it carried an Authorization header,
 * times); access tokens, bodies and query strings are never recorded (for /sync: whether `since` was given and
 * the `timeout`).
 */
import { EventEmitter } from 'node:events';
import { Agent, createServer, type IncomingHttpHeaders, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';

/** What a matching request gets instead of (or on top of) the upstream's answer. */
export type Fault =
  | { kind: 'reset'; when: 'before-headers' | 'after-headers' | 'mid-body'; forward?: boolean }
  | { kind: 'stall'; ms?: number; until?: Promise<unknown>; forward?: boolean }
  | { kind: 'status'; status: number; forward?: boolean; html?: boolean; body?: string }
  | { kind: 'truncate'; fraction?: number }
  | { kind: 'rateLimit'; retryAfterMs?: number; retryAfterSeconds?: number }
  | { kind: 'redirect'; location: string; status?: number };

/** Which requests a rule applies to. */
export interface Matcher {
  method?: string;
  /** A substring of the path (without query), or a pattern. */
  path: string | RegExp;
}

/** A fault rule: for the next `times` matching requests (default: every one), each with `probability` (default 1). */
export interface FaultRuleSpec extends Matcher {
  fault: Fault;
  times?: number;
  probability?: number;
  /** A label for records and diagnostics. */
  label?: string;
}

/** A rule as added: how often it fired, and a way to wait for it to be spent. */
export interface FaultRule {
  readonly spec: FaultRuleSpec;
  readonly label: string;
  /** Requests it applied to. */
  hits: number;
  /** Records of those requests. */
  readonly records: RequestRecord[];
  /** Resolves once the rule has fired `times` times and those requests have ended (never for unbounded rules). */
  spent(timeoutMs: number): Promise<void>;
  /** Stops the rule from firing again. */
  remove(): void;
}

/** One request that reached the proxy. */
export interface RequestRecord {
  n: number;
  method: string;
  /** Path without query string. */
  path: string;
  /** For /sync: whether `since` was given, and the `timeout` parameter. */
  syncSince?: boolean;
  syncTimeout?: string | null;
  /** Whether the request carried an Authorization header (its value is never recorded). */
  auth: boolean;
  /** The fault applied, if any (its rule's label). */
  fault: string | null;
  faultKind: Fault['kind'] | null;
  /** Status the client got (null: none, the connection was reset or the client went away first). */
  status: number | null;
  /** Status the upstream answered (null if not forwarded or unreachable). */
  upstreamStatus: number | null;
  /** Date.now() at arrival, and when the exchange ended (response finished, reset done, or client gone). */
  start: number;
  end: number | null;
  /** How it ended. */
  outcome: 'pending' | 'complete' | 'reset' | 'client-closed' | 'upstream-error';
}

/** A running fault proxy. */
export interface FaultProxy {
  /** http://127.0.0.1:<port>: give this to the client as its homeserver. */
  readonly url: string;
  readonly port: number;
  /** Every request so far, in arrival order. */
  readonly records: RequestRecord[];
  /** Adds a rule (checked after those added earlier). */
  inject(spec: FaultRuleSpec): FaultRule;
  /** Removes every rule. */
  clear(): void;
  /** Resolves with the first record (existing or future) matching `pred` once it has ended. */
  waitFor(pred: (r: RequestRecord) => boolean, timeoutMs: number, what: string): Promise<RequestRecord>;
  /** Closes the server and every connection (held stalls included). */
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authenticate', 'proxy-authorization']);

function strip(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k.toLowerCase()) && v !== undefined) out[k] = v;
  return out;
}

/** A small seeded PRNG (mulberry32): uniform in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function matches(m: Matcher, method: string, path: string): boolean {
  if (m.method && m.method.toUpperCase() !== method) return false;
  return typeof m.path === 'string' ? path.includes(m.path) : m.path.test(path);
}

/** Starts a fault proxy in front of `upstream` (e.g. the Synapse base URL). */
export async function startFaultProxy(upstream: string, opts: { seed?: number } = {}): Promise<FaultProxy> {
  const target = new URL(upstream);
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  const random = seededRandom(opts.seed ?? 1);
  const records: RequestRecord[] = [];
  const rules: Array<FaultRule & { active: boolean; ended: number }> = [];
  const events = new EventEmitter();
  events.setMaxListeners(0);
  const timers = new Set<NodeJS.Timeout>();
  let n = 0;

  const pick = (method: string, path: string) => {
    for (const r of rules) {
      if (!r.active || !matches(r.spec, method, path)) continue;
      if (r.spec.times !== undefined && r.hits >= r.spec.times) continue;
      if (r.spec.probability !== undefined && random() >= r.spec.probability) continue;
      r.hits++;
      return r;
    }
    return null;
  };

  /** Forwards the request upstream; resolves with the upstream's response (not yet read) or the error. */
  const forward = (req: IncomingMessage, body: Buffer): Promise<IncomingMessage> =>
    new Promise((resolve, reject) => {
      const headers = strip(req.headers);
      headers.host = target.host;
      if (body.length > 0 || headers['content-length'] !== undefined) headers['content-length'] = String(body.length);
      const up = request({ protocol: target.protocol, hostname: target.hostname, port: target.port, method: req.method, path: req.url, headers, agent }, resolve);
      up.on('error', reject);
      up.end(body);
    });

  const readAll = (s: IncomingMessage): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => resolve(Buffer.concat(chunks)));
      s.on('error', reject);
    });

  const finish = (rec: RequestRecord, outcome: RequestRecord['outcome']) => {
    if (rec.end !== null) return;
    rec.end = Date.now();
    rec.outcome = outcome;
    for (const r of rules) if (r.records.includes(rec)) r.ended++;
    events.emit('ended', rec);
  };

  const answer = (res: ServerResponse, rec: RequestRecord, status: number, headers: Record<string, string>, body: string | Buffer) => {
    rec.status = status;
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    res.writeHead(status, { ...headers, 'content-length': String(buf.length) });
    res.end(buf);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, rec: RequestRecord) => {
    const body = await readAll(req);
    const url = new URL(req.url ?? '/', 'http://proxy.invalid');
    const rule = pick(rec.method, url.pathname);
    const fault = rule?.spec.fault;
    if (rule) {
      rec.fault = rule.label;
      rec.faultKind = fault!.kind;
      rule.records.push(rec);
    }
    const resetNow = () => {
      req.socket.destroy();
      finish(rec, 'reset');
    };
    const upstreamDown = (err: Error) => {
      if (res.headersSent) return resetNow();
      rec.outcome = 'upstream-error';
      answer(res, rec, 502, { 'content-type': 'text/html' }, `<html><body><h1>502 Bad Gateway</h1><!-- ${err.message.replace(/--/g, '')} --></body></html>`);
    };
    /** Forwards and reads the whole real answer; null if the upstream is down (already answered 502). */
    const forwardFully = async (): Promise<{ up: IncomingMessage; data: Buffer } | null> => {
      try {
        const up = await forward(req, body);
        rec.upstreamStatus = up.statusCode ?? null;
        return { up, data: await readAll(up) };
      } catch (err) {
        upstreamDown(err as Error);
        return null;
      }
    };

    if (!fault) {
      let up: IncomingMessage;
      try {
        up = await forward(req, body);
      } catch (err) {
        upstreamDown(err as Error);
        return;
      }
      rec.upstreamStatus = up.statusCode ?? null;
      rec.status = up.statusCode ?? 502;
      res.writeHead(up.statusCode ?? 502, strip(up.headers));
      up.pipe(res);
      up.on('error', () => resetNow());
      return;
    }

    switch (fault.kind) {
      case 'reset': {
        if (fault.when === 'before-headers') {
          if (fault.forward) await forwardFully();
          return resetNow();
        }
        const real = await forwardFully();
        if (!real) return;
        const headers = strip(real.up.headers);
        headers['content-length'] = String(real.data.length);
        rec.status = real.up.statusCode ?? 200;
        res.writeHead(real.up.statusCode ?? 200, headers);
        res.flushHeaders();
        if (fault.when === 'mid-body') res.write(real.data.subarray(0, Math.max(1, Math.floor(real.data.length / 2))));
        // Let the bytes reach the client before the connection drops.
        const t = setTimeout(() => {
          timers.delete(t);
          resetNow();
        }, 20);
        timers.add(t);
        return;
      }
      case 'stall': {
        const held = fault.forward ? await forwardFully() : null;
        if (fault.forward && !held) return;
        if (fault.ms === undefined && fault.until === undefined) return; // held until the client gives up (or the proxy closes)
        const release = async () => {
          if (res.destroyed) return;
          const real = held ?? (await forwardFully());
          if (!real || res.destroyed) return;
          const headers = strip(real.up.headers);
          headers['content-length'] = String(real.data.length);
          rec.status = real.up.statusCode ?? 502;
          res.writeHead(real.up.statusCode ?? 502, headers);
          res.end(real.data);
        };
        if (fault.until) {
          void fault.until.then(release, release);
          return;
        }
        const t = setTimeout(() => {
          timers.delete(t);
          void release();
        }, fault.ms);
        timers.add(t);
        return;
      }
      case 'status': {
        if (fault.forward && !(await forwardFully())) return;
        if (fault.body !== undefined) return answer(res, rec, fault.status, { 'content-type': 'application/json' }, fault.body);
        if (fault.html) return answer(res, rec, fault.status, { 'content-type': 'text/html' }, `<html><body><h1>${fault.status}</h1>fault proxy</body></html>`);
        return answer(res, rec, fault.status, { 'content-type': 'application/json' }, JSON.stringify({ errcode: 'M_UNKNOWN', error: `fault proxy: injected ${fault.status}` }));
      }
      case 'truncate': {
        const real = await forwardFully();
        if (!real) return;
        const cut = Math.max(1, Math.floor(real.data.length * (fault.fraction ?? 0.5)));
        return answer(res, rec, 200, { 'content-type': 'application/json' }, real.data.subarray(0, Math.min(cut, real.data.length - 1)));
      }
      case 'rateLimit': {
        const json: Record<string, unknown> = { errcode: 'M_LIMIT_EXCEEDED', error: 'Too Many Requests' };
        if (fault.retryAfterMs !== undefined) json.retry_after_ms = fault.retryAfterMs;
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (fault.retryAfterSeconds !== undefined) headers['retry-after'] = String(fault.retryAfterSeconds);
        return answer(res, rec, 429, headers, JSON.stringify(json));
      }
      case 'redirect': {
        const location = new URL(url.pathname + url.search, fault.location).toString();
        return answer(res, rec, fault.status ?? 302, { location, 'content-type': 'text/html' }, `<a href="${location}">moved</a>`);
      }
    }
  };

  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy.invalid');
    const rec: RequestRecord = {
      n: n++,
      method: (req.method ?? 'GET').toUpperCase(),
      path: url.pathname,
      auth: req.headers.authorization !== undefined,
      fault: null,
      faultKind: null,
      status: null,
      upstreamStatus: null,
      start: Date.now(),
      end: null,
      outcome: 'pending',
    };
    if (url.pathname.endsWith('/sync')) {
      rec.syncSince = url.searchParams.has('since');
      rec.syncTimeout = url.searchParams.get('timeout');
    }
    records.push(rec);
    res.on('finish', () => finish(rec, rec.outcome === 'upstream-error' ? 'upstream-error' : 'complete'));
    res.on('close', () => {
      if (!res.writableFinished) finish(rec, rec.outcome === 'pending' ? 'client-closed' : rec.outcome);
    });
    handle(req, res, rec).catch(() => {
      req.socket.destroy();
      finish(rec, 'reset');
    });
  });
  // Long polls and keep-alive: never drop an idle pooled connection under the client.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 130_000;
  server.requestTimeout = 0;
  const port = await listen(server);

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    records,
    inject(spec) {
      const rule: FaultRule & { active: boolean; ended: number } = {
        spec,
        label: spec.label ?? `${spec.fault.kind}${'when' in spec.fault ? `:${spec.fault.when}` : ''}${'status' in spec.fault && spec.fault.status !== undefined ? `:${spec.fault.status}` : ''}`,
        hits: 0,
        records: [],
        active: true,
        ended: 0,
        spent(timeoutMs) {
          if (spec.times === undefined) return Promise.reject(new Error(`fault rule ${rule.label} has no budget: it is never spent`));
          return new Promise<void>((resolve, reject) => {
            const check = () => {
              if (rule.hits >= spec.times! && rule.ended >= spec.times!) {
                clearTimeout(timer);
                events.off('ended', check);
                resolve();
              }
            };
            const timer = setTimeout(() => {
              events.off('ended', check);
              reject(new Error(`fault rule ${rule.label}: not spent within ${timeoutMs} ms (${rule.hits}/${spec.times} hits, ${rule.ended} ended)`));
            }, timeoutMs);
            events.on('ended', check);
            check();
          });
        },
        remove() {
          rule.active = false;
        },
      };
      rules.push(rule);
      return rule;
    },
    clear() {
      for (const r of rules) r.active = false;
      rules.length = 0;
    },
    waitFor(pred, timeoutMs, what) {
      return new Promise<RequestRecord>((resolve, reject) => {
        const found = records.find((r) => r.end !== null && pred(r));
        if (found) return resolve(found);
        const timer = setTimeout(() => {
          events.off('ended', on);
          reject(new Error(`fault proxy: timed out after ${timeoutMs} ms waiting for ${what}`));
        }, timeoutMs);
        const on = (r: RequestRecord) => {
          if (!pred(r)) return;
          clearTimeout(timer);
          events.off('ended', on);
          resolve(r);
        };
        events.on('ended', on);
      });
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await shut(server);
      agent.destroy();
    },
  };
}

/** A request the redirect target received. */
export interface RecordedRequest {
  method: string;
  path: string;
  /** Whether it carried an Authorization header, and its value (to compare with the token). */
  authorization: string | undefined;
  body: string;
}

/** A tiny HTTP server standing for "another host": records every request it gets and answers 200 `{}`. */
export async function startRecorder(): Promise<{ url: string; requests: RecordedRequest[]; close(): Promise<void> }> {
  const requests: RecordedRequest[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({ method: req.method ?? 'GET', path: req.url ?? '/', authorization: req.headers.authorization, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, requests, close: () => shut(server) };
}

/** Listens on a free port of 127.0.0.1 and resolves with it. */
async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as { port: number }).port;
}

/** Closes the server, cutting its open connections (held long-polls included). */
async function shut(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}
