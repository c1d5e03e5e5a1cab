/**
 * A logging HTTP forwarding proxy for integration tests, run as a CHILD PROCESS so that it keeps working while
 * the test's main thread is blocked (see test/integration/isolation.test.ts).
 *
 * Parent side: {@link startLoggingProxy} spawns this file with `node --import tsx <this file> --serve <target>`
 * and resolves once the child reports its port over IPC.
 *
 * Child side: forwards every request to the target homeserver; for each request it records the arrival time
 * and the time its response was completely written (both `Date.now()`). `GET /__log` is answered by the proxy
 * itself with the records. On the IPC command `{ sendMessages: {...} }` the child sends m.text messages
 * straight to the homeserver (not through the proxy) with fetch, which lets a test have messages sent while its
 * own thread is busy (start and done signals then go through files, see {@link SendMessagesCommand}). Nothing
 * secret (headers, bodies, access tokens) is recorded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request, type IncomingHttpHeaders } from 'node:http';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

/** One request that passed through the proxy. */
export interface ProxyRecord {
  /** Sequence number in arrival order. */
  n: number;
  method: string;
  /** The path without its query string. */
  path: string;
  /** For /sync: the `timeout`, whether a `since` was given, and the `filter` (an ID, or inline JSON). */
  syncTimeout?: string | null;
  syncHasSince?: boolean;
  syncFilter?: string | null;
  /** Date.now() when the request arrived at the proxy. */
  arrival: number;
  /** Date.now() when the proxy finished writing the response (undefined while pending or if it failed). */
  complete?: number;
  status?: number;
  error?: string;
}

/** A message the child sent on a `sendMessages` command. */
export interface SentRecord {
  index: number;
  body: string;
  eventId?: string;
  error?: string;
  sentAt: number;
  answeredAt: number;
}

/** What `GET /__log` answers. */
export interface ProxyLog {
  requests: ProxyRecord[];
  sent: SentRecord[];
}

/**
 * The `sendMessages` IPC command: `count` messages `${prefix}${i}` into `roomId`, `spacingMs` apart, after
 * `startDelayMs`. A parent whose thread will be blocked talks to the child through files instead of IPC: with
 * `startFile` the child starts only once that file exists; with `doneFile` it creates that file once every
 * message is answered and the proxied client has polled past them (a /sync that arrived after the last answer
 * completed, and another /sync arrived after that).
 */
export interface SendMessagesCommand {
  roomId: string;
  accessToken: string;
  count: number;
  startDelayMs?: number;
  spacingMs?: number;
  prefix?: string;
  startFile?: string;
  doneFile?: string;
}

/** Parent-side handle on a running proxy child. */
export interface LoggingProxy {
  /** http://127.0.0.1:<port> of the proxy: give this to the client as its homeserver. */
  url: string;
  port: number;
  child: ChildProcess;
  /** Fetches the records (over HTTP from the child). */
  log(): Promise<ProxyLog>;
  /**
   * Asks the child to send messages; resolves once the child has acknowledged the command (the sending itself
   * happens later, in the child, on the child's own clock).
   */
  sendMessages(cmd: SendMessagesCommand): Promise<void>;
  /** Resolves with the child's report once it has sent (or failed to send) every message of the last command. */
  sentDone(): Promise<SentRecord[]>;
  /** Kills the child (SIGTERM, then SIGKILL after 5 s). Safe to call twice. */
  stop(): Promise<void>;
}

type ParentToChild = { sendMessages: SendMessagesCommand & { id: string } };
type ChildToParent = { port: number } | { ack: string } | { sentDone: string; sent: SentRecord[] };

const SELF = fileURLToPath(import.meta.url);

/** Spawns the proxy child forwarding to `target` (e.g. the Synapse base URL) and waits for its port. */
export async function startLoggingProxy(target: string, timeoutMs = 30_000): Promise<LoggingProxy> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, '--serve', target], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: process.env,
  });
  const listeners = new Set<(m: ChildToParent) => void>();
  child.on('message', (m) => {
    for (const l of [...listeners]) l(m as ChildToParent);
  });
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));

  const waitFor = <T>(pick: (m: ChildToParent) => T | undefined, what: string, ms: number): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => { listeners.delete(l); reject(new Error(`logging proxy: timed out after ${ms} ms waiting for ${what}`)); }, ms);
      const l = (m: ChildToParent) => {
        const v = pick(m);
        if (v === undefined) return;
        clearTimeout(timer);
        listeners.delete(l);
        resolve(v);
      };
      listeners.add(l);
      void exit.then(() => {
        if (!listeners.has(l)) return;
        clearTimeout(timer);
        listeners.delete(l);
        reject(new Error(`logging proxy: the child exited while waiting for ${what}`));
      });
    });

  const stop = async () => {
    if (exited) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => { if (!exited) child.kill('SIGKILL'); }, 5_000);
    await exit;
    clearTimeout(t);
  };

  let port: number;
  try {
    port = await waitFor((m) => ('port' in m ? m.port : undefined), 'its port', timeoutMs);
  } catch (e) {
    await stop();
    throw e;
  }
  const url = `http://127.0.0.1:${port}`;
  let lastSend: Promise<SentRecord[]> | null = null;
  return {
    url,
    port,
    child,
    async log() {
      const res = await fetch(`${url}/__log`, { signal: AbortSignal.timeout(10_000) });
      if (!res.ok) throw new Error(`logging proxy: GET /__log -> ${res.status}`);
      return (await res.json()) as ProxyLog;
    },
    async sendMessages(cmd) {
      const id = randomBytes(4).toString('hex');
      const ack = waitFor((m) => ('ack' in m && m.ack === id ? true : undefined), 'the sendMessages ack', 10_000);
      // Registered now so a report that arrives while this thread is busy is not missed.
      lastSend = waitFor((m) => ('sentDone' in m && m.sentDone === id ? m.sent : undefined), 'the sendMessages report', 60_000);
      lastSend.catch(() => {}); // observed by sentDone()
      const msg: ParentToChild = { sendMessages: { ...cmd, id } };
      child.send(msg);
      await ack;
    },
    sentDone() {
      if (!lastSend) return Promise.reject(new Error('logging proxy: sentDone() before sendMessages()'));
      return lastSend;
    },
    stop,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Child side.

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authenticate', 'proxy-authorization']);

function strip(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k.toLowerCase()) && v !== undefined) out[k] = v;
  return out;
}

function serve(target: string): void {
  const upstream = new URL(target);
  const agent = new Agent({ keepAlive: true, maxSockets: 32 });
  const requests: ProxyRecord[] = [];
  const sent: SentRecord[] = [];
  let n = 0;

  const server = createServer((req, res) => {
    const arrival = Date.now();
    const url = new URL(req.url ?? '/', 'http://proxy.invalid');
    if (req.method === 'GET' && url.pathname === '/__log') {
      const body = JSON.stringify({ requests, sent } satisfies ProxyLog);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    const rec: ProxyRecord = { n: n++, method: req.method ?? 'GET', path: url.pathname, arrival };
    if (url.pathname.endsWith('/sync')) {
      rec.syncTimeout = url.searchParams.get('timeout');
      rec.syncHasSince = url.searchParams.has('since');
      rec.syncFilter = url.searchParams.get('filter');
    }
    requests.push(rec);
    const fail = (why: string) => {
      rec.error = why;
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errcode: 'M_UNKNOWN', error: `logging proxy: ${why}` }));
      } else res.destroy();
    };
    const headers = strip(req.headers);
    headers.host = upstream.host;
    const up = request(
      { protocol: upstream.protocol, hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent },
      (upRes) => {
        rec.status = upRes.statusCode ?? 0;
        res.writeHead(upRes.statusCode ?? 502, strip(upRes.headers));
        upRes.pipe(res);
        upRes.on('error', (e) => fail(`upstream response: ${e.message}`));
      },
    );
    up.on('error', (e) => fail(`upstream: ${e.message}`));
    req.pipe(up);
    res.on('finish', () => {
      if (rec.error === undefined) rec.complete = Date.now();
    });
    res.on('close', () => {
      if (!res.writableFinished && rec.error === undefined) rec.error = 'client closed the connection early';
      if (!up.destroyed && !res.writableFinished) up.destroy();
    });
  });
  // Long polls and keep-alive: never let the server drop an idle pooled connection under the client.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 130_000;
  server.requestTimeout = 0;

  /** Resolves once `ready()` holds, checking every 10 ms, or after `ms` (then the parent's own bound reports it). */
  const until = async (ready: () => boolean, ms: number) => {
    for (const end = Date.now() + ms; !ready() && Date.now() < end; ) await sleep(10);
  };
  /** A /sync arrived after `t` and completed, and another /sync arrived after that. */
  const polledPast = (t: number) => {
    const syncs = requests.filter((r) => r.path.endsWith('/sync'));
    return syncs.some((a) => a.arrival >= t && a.complete !== undefined && syncs.some((b) => b.arrival >= a.complete!));
  };

  const sendMessages = async (cmd: SendMessagesCommand & { id: string }) => {
    const spacing = cmd.spacingMs ?? 200;
    const prefix = cmd.prefix ?? 'm';
    const mine: SentRecord[] = [];
    if (cmd.startFile) await until(() => existsSync(cmd.startFile!), 60_000);
    await sleep(cmd.startDelayMs ?? 0);
    for (let i = 0; i < cmd.count; i++) {
      if (i > 0) await sleep(spacing);
      const body = `${prefix}${i}`;
      const sentAt = Date.now();
      const rec: SentRecord = { index: i, body, sentAt, answeredAt: 0 };
      try {
        const txn = `lp${Date.now()}.${i}.${randomBytes(4).toString('hex')}`;
        const res = await fetch(`${upstream.origin}/_matrix/client/v3/rooms/${encodeURIComponent(cmd.roomId)}/send/m.room.message/${txn}`, {
          method: 'PUT',
          headers: { authorization: `Bearer ${cmd.accessToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ msgtype: 'm.text', body }),
          signal: AbortSignal.timeout(20_000),
        });
        const data = (await res.json()) as { event_id?: string; errcode?: string };
        if (res.ok && typeof data.event_id === 'string') rec.eventId = data.event_id;
        else rec.error = `${res.status} ${data.errcode ?? ''}`;
      } catch (e) {
        rec.error = (e as Error).message;
      }
      rec.answeredAt = Date.now();
      mine.push(rec);
      sent.push(rec);
    }
    if (cmd.doneFile) {
      const last = Math.max(...mine.map((r) => r.answeredAt));
      await until(() => polledPast(last), 60_000);
      if (polledPast(last)) writeFileSync(cmd.doneFile, '');
    }
    process.send?.({ sentDone: cmd.id, sent: mine } satisfies ChildToParent);
  };

  process.on('message', (m: ParentToChild) => {
    if (m && typeof m === 'object' && 'sendMessages' in m) {
      process.send?.({ ack: m.sendMessages.id } satisfies ChildToParent);
      void sendMessages(m.sendMessages);
    }
  });
  // The parent went away: do not outlive it.
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));

  server.listen(0, '127.0.0.1', () => {
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('logging proxy: no TCP address');
    process.send?.({ port: addr.port } satisfies ChildToParent);
  });
}

if (process.argv[1] === SELF && process.argv[2] === '--serve') {
  const target = process.argv[3];
  if (!target) throw new Error('usage: logging-proxy.ts --serve <target URL>');
  if (!process.send) throw new Error('logging-proxy.ts --serve must run with an IPC channel');
  serve(target);
}
