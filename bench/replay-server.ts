/**
 * Out-of-process Matrix homeserver stub that replays pre-built `/sync` bodies.
 * Besides `/sync` it answers the requests the benchmarked clients make around it, as Synapse answers a fresh account:
 * versions, capabilities, push rules, filters, whoami, password login, joined rooms (none), presence, account data
 * (none), room state (none: rooms are unencrypted), room-key backup (none), the E2EE key endpoints (see `keys`) and
 * sends (an event ID derived from the transaction ID).
 * Importing this module only defines {@link startReplayServer}; when run as the
 * forked child (`--replay-child <configPath>`) it serves HTTP on 127.0.0.1.
 * @module
 */
import { fork } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync, realpathSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Options for {@link startReplayServer}. */
export interface ReplayServerOptions {
  /**
   * `/sync` bodies in order: no `since` → bodies[0], `since=s<k>…` → bodies[k]. Omitted: the bodies come later
   * through {@link ReplayServer.setBodies}, and every `/sync` request is held (whatever its `timeout`) until then.
   */
  bodies?: string[];
  /** Upper bound (ms) on how long an exhausted `/sync` is held before answering empty. */
  longPollMs?: number;
  /**
   * Paced release: body `k` is only served once `k * releaseEveryMs` ms have passed since the first `/sync`
   * request this server received; a request for a body not yet released is held (a long-poll) until then, or
   * answered empty (`next_batch` = `since`) when its `timeout` (capped by `longPollMs`) runs out first.
   * Unset: every body is served at once.
   */
  releaseEveryMs?: number;
  /**
   * With `releaseEveryMs`: bodies before this index are served at once, and the release clock starts at the first
   * `/sync` request for body `releaseFrom` or later (body k is released at (k − releaseFrom) × releaseEveryMs
   * after it). Default 0 (the clock starts at the first `/sync`).
   */
  releaseFrom?: number;
  /**
   * Who `/account/whoami` says the token belongs to, and who every password `/login` logs in (whatever the user
   * named; default `@bot:localhost`, device `BENCH`).
   */
  whoami?: { userId: string; deviceId: string };
  /**
   * Answer the end-to-end-encryption key endpoints: `keys/upload` (recorded, see {@link ReplayServer.keysUploads};
   * answers 50 signed_curve25519 one-time keys), `keys/query` (the answer set with
   * {@link ReplayServer.setKeysQuery}, default no devices), `keys/claim` (no keys), `keys/signatures/upload` and
   * `sendToDevice` (accepted), as any homeserver does. Default true; false answers them 404 (a server without E2EE).
   */
  keys?: boolean;
  /**
   * Absolute path of a module whose default export, a {@link ReplayRoutes}, is asked first about every request in
   * the server's process (e.g. the extra endpoints one client library needs); it returns true when it answered.
   */
  routes?: string;
}

/** Extra endpoints of a replay server (see {@link ReplayServerOptions.routes}); runs in the server's own process. */
export type ReplayRoutes = (req: IncomingMessage, res: ServerResponse, url: URL) => boolean | Promise<boolean>;

/** Timing samples recorded by the replay server. */
export interface ReplayStats {
  /** Number of `/sync` requests received. */
  syncRequests: number;
  /** Arrival time of each `/sync` request, epoch ms (`performance.timeOrigin + performance.now()`). */
  requestTimes: number[];
  /** Completion time of the response to `requestTimes[i]`, same clock; `NaN` while still pending. */
  responseTimes: number[];
  /** Which body the response to `requestTimes[i]` carried; −1 for an empty answer (nothing new) or an error. */
  requestBodies: number[];
  /** Completion time of the first response that carried body k; `NaN` if it was never served. */
  bodyTimes: number[];
}

/** Handle to a running replay server child process. */
export interface ReplayServer {
  /** Base URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** Shuts the child down and removes its temp files. */
  stop(): Promise<void>;
  /** Fetches the recorded `/sync` timings from the child over IPC. */
  stats(): Promise<ReplayStats>;
  /** The child's clock (`performance.timeOrigin + performance.now()`, epoch ms), for estimating the offset between processes. */
  clock(): Promise<number>;
  /**
   * Installs the bodies (of a server started without them, or replacing the list, e.g. extended by more bodies):
   * held `/sync` requests, and long-polls waiting past the old last body, are answered from the new list.
   * Serve times of bodies already served are kept.
   */
  setBodies(bodies: string[]): Promise<void>;
  /** With `keys`: the JSON answer to `keys/query` from now on. */
  setKeysQuery(answer: unknown): Promise<void>;
  /** With `keys`: resolves with the request bodies of the first `count` `keys/upload` calls, once there are that many. */
  keysUploads(count?: number): Promise<unknown[]>;
}

interface ChildConfig {
  files: string[] | null;
  longPollMs?: number;
  releaseEveryMs?: number;
  releaseFrom?: number;
  whoami?: { userId: string; deviceId: string };
  keys?: boolean;
  routes?: string;
}

type ChildMessage =
  | { type: 'listening'; port: number }
  | { type: 'stats'; id: number; stats: ReplayStats }
  | { type: 'clock'; id: number; now: number }
  | { type: 'ack'; id: number }
  | { type: 'keysUpload'; body: unknown };

type ParentMessage =
  | { type: 'stats'; id: number }
  | { type: 'clock'; id: number }
  | { type: 'setBodies'; id: number; bodies: string[] }
  | { type: 'setKeysQuery'; id: number; answer: unknown };

const SELF = fileURLToPath(import.meta.url);
const CHILD_FLAG = '--replay-child';

/** Spawns the replay server in its own Node process and resolves once it is listening. */
export async function startReplayServer(opts: ReplayServerOptions): Promise<ReplayServer> {
  const dir = await mkdtemp(join(tmpdir(), 'halcyon-replay-'));
  const files = opts.bodies
    ? await Promise.all(
        opts.bodies.map(async (body, i) => {
          const file = join(dir, `body-${i}.json`);
          await writeFile(file, body);
          return file;
        }),
      )
    : null;
  const configPath = join(dir, 'config.json');
  const config: ChildConfig = {
    files,
    longPollMs: opts.longPollMs,
    releaseEveryMs: opts.releaseEveryMs,
    releaseFrom: opts.releaseFrom,
    whoami: opts.whoami,
    keys: opts.keys,
    routes: opts.routes,
  };
  await writeFile(configPath, JSON.stringify(config));

  const child = fork(SELF, [CHILD_FLAG, configPath], {
    execPath: process.execPath,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    serialization: 'advanced',
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => {
      child.on('message', (m: ChildMessage) => m.type === 'listening' && resolve(m.port));
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`replay server exited early (code ${code})`)));
    });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  let nextId = 0;
  const pending = new Map<number, (s: ReplayStats) => void>();
  const pendingClock = new Map<number, (now: number) => void>();
  const pendingAck = new Map<number, () => void>();
  const uploads: unknown[] = [];
  const uploadWaiters: Array<{ count: number; resolve: (u: unknown[]) => void }> = [];
  child.on('message', (m: ChildMessage) => {
    if (m.type === 'stats') {
      pending.get(m.id)?.(m.stats);
      pending.delete(m.id);
    } else if (m.type === 'clock') {
      pendingClock.get(m.id)?.(m.now);
      pendingClock.delete(m.id);
    } else if (m.type === 'ack') {
      pendingAck.get(m.id)?.();
      pendingAck.delete(m.id);
    } else if (m.type === 'keysUpload') {
      uploads.push(m.body);
      for (let i = uploadWaiters.length - 1; i >= 0; i--) {
        const w = uploadWaiters[i]!;
        if (uploads.length >= w.count) {
          uploadWaiters.splice(i, 1);
          w.resolve(uploads.slice(0, w.count));
        }
      }
    }
  });
  const call = (msg: ParentMessage & { type: 'setBodies' | 'setKeysQuery' }) =>
    new Promise<void>((resolve, reject) => {
      pendingAck.set(msg.id, resolve);
      child.send(msg, (err) => err && reject(err));
    });

  return {
    url: `http://127.0.0.1:${port}`,
    stats: () =>
      new Promise<ReplayStats>((resolve, reject) => {
        const id = nextId++;
        pending.set(id, resolve);
        child.send({ type: 'stats', id }, (err) => err && reject(err));
      }),
    clock: () =>
      new Promise<number>((resolve, reject) => {
        const id = nextId++;
        pendingClock.set(id, resolve);
        child.send({ type: 'clock', id }, (err) => err && reject(err));
      }),
    setBodies: (bodies) => call({ type: 'setBodies', id: nextId++, bodies }),
    setKeysQuery: (answer) => call({ type: 'setKeysQuery', id: nextId++, answer }),
    keysUploads: (count = 1) =>
      uploads.length >= count ? Promise.resolve(uploads.slice(0, count)) : new Promise((resolve) => uploadWaiters.push({ count, resolve })),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function runChild(configPath: string): Promise<void> {
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as ChildConfig;
  config.keys ??= true;
  const routes: ReplayRoutes | null = config.routes ? ((await import(pathToFileURL(config.routes).href)) as { default: ReplayRoutes }).default : null;
  let bodies: Buffer[] | null = config.files ? config.files.map((f) => readFileSync(f)) : null;
  rmSync(dirname(configPath), { recursive: true, force: true }); // bodies are in memory now
  const json = (s: unknown) => Buffer.from(JSON.stringify(s));
  const FILTER = json({ filter_id: '1' });
  const WHOAMI = json({ user_id: config.whoami?.userId ?? '@bot:localhost', device_id: config.whoami?.deviceId ?? 'BENCH' });
  // Spec versions up to v1.11: the peer libraries check for v1.1+ features (matrix-js-sdk refuses servers without them).
  const VERSIONS = json({ versions: ['r0.6.1', 'v1.1', 'v1.2', 'v1.3', 'v1.4', 'v1.5', 'v1.6', 'v1.7', 'v1.8', 'v1.9', 'v1.10', 'v1.11'], unstable_features: {} });
  const SENT = json({ event_id: '$x' });
  const EMPTY = json({});
  const NOT_FOUND = json({ errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' });
  // What a fresh account on Synapse answers to the start-up requests of the peer libraries.
  const CAPABILITIES = json({ capabilities: { 'm.change_password': { enabled: true }, 'm.room_versions': { default: '10', available: { '10': 'stable' } } } });
  const PUSHRULES = json({ global: { override: [], content: [], room: [], sender: [], underride: [] } });
  const JOINED_ROOMS = json({ joined_rooms: [] });
  const PRESENCE = json({ presence: 'online', last_active_ago: 0, currently_active: true });
  const NO_ACCOUNT_DATA = json({ errcode: 'M_NOT_FOUND', error: 'Account data not found' });
  const NO_STATE = json({ errcode: 'M_NOT_FOUND', error: 'Event not found.' });
  const NO_BACKUP = json({ errcode: 'M_NOT_FOUND', error: 'No current backup version' });
  const LOGIN_FLOWS = json({ flows: [{ type: 'm.login.password' }] });
  let logins = 0;
  const KEY_COUNTS = json({ one_time_key_counts: { signed_curve25519: 50 } });
  const NO_CLAIM = json({ one_time_keys: {}, failures: {} });
  let keysQuery = json({ device_keys: {}, failures: {} });

  const now = () => performance.timeOrigin + performance.now();
  const requestTimes: number[] = [];
  const responseTimes: number[] = [];
  const requestBodies: number[] = [];
  const bodyTimes: number[] = [];
  const releaseFrom = config.releaseFrom ?? 0;
  /** When the release clock started (the first request for body `releaseFrom` or later, once bodies exist). */
  let clockAt: number | null = null;
  /** Requests that came before the bodies (deferred mode). */
  let held: Array<() => void> = [];
  /** Long-polls waiting past the last body (`k` = the body they ask for); `setBodies` wakes those it gives a body. */
  const atEnd = new Set<{ k: number; wake: () => void }>();

  const send = (res: ServerResponse, status: number, body: Buffer) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
  };

  /** Answers /sync request number `i` (bodies are known). */
  const serveSync = (res: ServerResponse, url: URL, i: number) => {
    const all = bodies!;
    const t = now();
    const since = url.searchParams.get('since');
    const k = since === null ? 0 : Number(/^s(\d+)/.exec(since)?.[1] ?? NaN);
    if (Number.isNaN(k)) return send(res, 400, json({ errcode: 'M_INVALID_PARAM', error: 'bad since' }));
    const body = (kk: number) => () => {
      requestBodies[i] = kk;
      res.once('finish', () => {
        if (Number.isNaN(bodyTimes[kk]!)) bodyTimes[kk] = now();
      });
      send(res, 200, all[kk]!);
    };
    let releaseIn = 0;
    if (k < all.length && config.releaseEveryMs && k >= releaseFrom) {
      clockAt ??= t;
      releaseIn = clockAt + (k - releaseFrom) * config.releaseEveryMs - t;
    }
    if (k < all.length && releaseIn <= 0) return body(k)();
    let wait = Number(url.searchParams.get('timeout') ?? 30000);
    if (!Number.isFinite(wait) || wait < 0) wait = 30000;
    if (config.longPollMs !== undefined) wait = Math.min(wait, config.longPollMs);
    // A paced body not yet released is held until its release, if that comes within the poll's wait.
    if (k < all.length && releaseIn <= wait) {
      const timer = setTimeout(body(k), Math.ceil(releaseIn)); // never before the release
      res.once('close', () => clearTimeout(timer));
      return;
    }
    // Nothing (yet) at this position: answer empty when the wait runs out, or serve a body that setBodies adds first.
    const waiter = { k, wake: () => {} };
    const timer = setTimeout(() => {
      atEnd.delete(waiter);
      send(res, 200, json({ next_batch: since }));
    }, wait);
    waiter.wake = () => {
      clearTimeout(timer);
      serveSync(res, url, i);
    };
    atEnd.add(waiter);
    res.once('close', () => {
      clearTimeout(timer);
      atEnd.delete(waiter);
    });
  };

  /** Reads a request's JSON body (the key endpoints). */
  const readJson = (req: IncomingMessage): Promise<unknown> =>
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          resolve(null);
        }
      });
    });

  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    if (routes && (await routes(req, res, url))) return;

    if (config.keys && method === 'POST' && path === '/_matrix/client/v3/keys/upload') {
      void readJson(req).then((body) => {
        process.send!({ type: 'keysUpload', body });
        send(res, 200, KEY_COUNTS);
      });
      return;
    }
    req.resume(); // drain any request body

    if (method === 'GET' && path === '/_matrix/client/v3/sync') {
      const i = requestTimes.push(now()) - 1;
      responseTimes.push(NaN);
      requestBodies.push(-1);
      res.once('finish', () => (responseTimes[i] = now()));
      if (bodies) return serveSync(res, url, i);
      const go = () => serveSync(res, url, i);
      held.push(go);
      res.once('close', () => (held = held.filter((h) => h !== go)));
      return;
    }
    if (method === 'POST' && /^\/_matrix\/client\/v3\/user\/[^/]+\/filter$/.test(path)) return send(res, 200, FILTER);
    if (method === 'GET' && path === '/_matrix/client/v3/account/whoami') return send(res, 200, WHOAMI);
    if (method === 'GET' && path === '/_matrix/client/versions') return send(res, 200, VERSIONS);
    if (method === 'GET' && /^\/_matrix\/client\/v3\/rooms\/[^/]+\/state\/[^/]+/.test(path)) return send(res, 404, NO_STATE);
    if ((method === 'PUT' || method === 'POST') && path.startsWith('/_matrix/client/v3/rooms/')) {
      // A send's event ID follows from its transaction ID, as a real server answers a repeated transaction with the same event.
      const txn = /^\/_matrix\/client\/v3\/rooms\/[^/]+\/(?:send\/[^/]+|redact\/[^/]+)\/([^/]+)$/.exec(path)?.[1];
      return send(res, 200, txn === undefined ? SENT : json({ event_id: `$t${txn.replace(/[^A-Za-z0-9._-]/g, '_')}` }));
    }
    if (method === 'GET' && path === '/_matrix/client/v3/capabilities') return send(res, 200, CAPABILITIES);
    if (method === 'GET' && path.startsWith('/_matrix/client/v3/pushrules')) return send(res, 200, PUSHRULES);
    if (method === 'GET' && path === '/_matrix/client/v3/joined_rooms') return send(res, 200, JOINED_ROOMS);
    if (path.startsWith('/_matrix/client/v3/presence/')) return send(res, 200, method === 'GET' ? PRESENCE : EMPTY);
    if (method === 'GET' && /^\/_matrix\/client\/v3\/user\/[^/]+\/filter\/[^/]+$/.test(path)) return send(res, 200, EMPTY);
    if (/^\/_matrix\/client\/v3\/user\/[^/]+\/(?:rooms\/[^/]+\/)?account_data\//.test(path)) return send(res, method === 'PUT' ? 200 : 404, method === 'PUT' ? EMPTY : NO_ACCOUNT_DATA);
    if (method === 'GET' && path === '/_matrix/client/v3/room_keys/version') return send(res, 404, NO_BACKUP);
    if (path === '/_matrix/client/v3/login') {
      if (method === 'GET') return send(res, 200, LOGIN_FLOWS);
      if (method === 'POST') {
        // The request body was drained above; every password login succeeds, as the account the whoami answer names.
        const userId = config.whoami?.userId ?? '@bot:localhost';
        const deviceId = config.whoami?.deviceId ?? 'BENCH';
        return send(res, 200, json({ user_id: userId, access_token: `bench_${++logins}`, device_id: deviceId, home_server: 'localhost' }));
      }
    }
    if (config.keys) {
      if (method === 'POST' && path === '/_matrix/client/v3/keys/query') return send(res, 200, keysQuery);
      if (method === 'POST' && path === '/_matrix/client/v3/keys/claim') return send(res, 200, NO_CLAIM);
      if (method === 'POST' && path === '/_matrix/client/v3/keys/signatures/upload') return send(res, 200, json({ failures: {} }));
      if (method === 'PUT' && path.startsWith('/_matrix/client/v3/sendToDevice/')) return send(res, 200, EMPTY);
    }
    send(res, 404, NOT_FOUND);
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;
  server.requestTimeout = 0;

  const shutdown = () => {
    server.closeAllConnections();
    server.close();
    process.exit(0);
  };
  process.on('disconnect', shutdown);
  process.on('SIGTERM', shutdown);
  process.on('message', (m: ParentMessage) => {
    if (m.type === 'clock') process.send!({ type: 'clock', id: m.id, now: now() });
    else if (m.type === 'stats') {
      const stats: ReplayStats = { syncRequests: requestTimes.length, requestTimes, responseTimes, requestBodies, bodyTimes };
      process.send!({ type: 'stats', id: m.id, stats });
    } else if (m.type === 'setBodies') {
      bodies = m.bodies.map((b) => Buffer.from(b));
      while (bodyTimes.length < bodies.length) bodyTimes.push(NaN);
      bodyTimes.length = bodies.length;
      const waiting = held;
      held = [];
      for (const go of waiting) go();
      for (const w of [...atEnd]) {
        if (w.k >= bodies.length) continue;
        atEnd.delete(w);
        w.wake();
      }
      process.send!({ type: 'ack', id: m.id });
    } else if (m.type === 'setKeysQuery') {
      keysQuery = json(m.answer);
      process.send!({ type: 'ack', id: m.id });
    }
  });
  if (bodies) for (let k = 0; k < bodies.length; k++) bodyTimes.push(NaN);
  server.listen(0, '127.0.0.1', () => {
    const addr = server.address();
    process.send!({ type: 'listening', port: typeof addr === 'object' && addr ? addr.port : 0 });
  });
}

if (process.argv[2] === CHILD_FLAG && process.argv[1] && realpathSync(process.argv[1]) === realpathSync(SELF)) {
  void runChild(process.argv[3]!);
}
